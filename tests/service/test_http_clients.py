"""Real clients against a real ``milvus-embed serve`` process with HTTP on: the openai client, huggingface_hub's
InferenceClient, pymilvus-model's OpenAI and TEI functions. Every vector equals gRPC Embed's for the same texts."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

from tests._sidecar import free_port, running_sidecar

KEY = "k-clients-1"
TEXTS = ["hybrid search with BGE-M3", "Milvus 2.6 embeds at insert time", "une phrase en français"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port = free_port()
    with running_sidecar(tiny_model_dir, tmp_path_factory.mktemp("http-clients"), keys=(KEY,),
                         http_listen=f"127.0.0.1:{port}") as srv:
        srv.http = f"http://127.0.0.1:{port}"
        yield srv


@pytest.fixture(scope="module")
def ref(server):
    """gRPC Embed of TEXTS (one request, so the HTTP requests below form the same batch)."""
    with server.client() as c:
        return c.embed(TEXTS, dense=True, sparse=True, truncate_dims=[16])


def test_openai_client(server, ref):
    import openai

    client = openai.OpenAI(base_url=server.http + "/v1", api_key=KEY, max_retries=0, timeout=30)
    default = client.embeddings.create(model="bge-m3", input=TEXTS)  # the client asks for base64 and decodes it
    np.testing.assert_array_equal(np.asarray([d.embedding for d in default.data], np.float32), ref.dense)
    assert default.usage.prompt_tokens == int(ref.token_counts.sum()) and default.model
    floats = client.embeddings.create(model="bge-m3", input=TEXTS, encoding_format="float")
    np.testing.assert_array_equal(np.asarray([d.embedding for d in floats.data], np.float32), ref.dense)
    short = client.embeddings.create(model="bge-m3", input=TEXTS, dimensions=16, encoding_format="float")
    np.testing.assert_array_equal(np.asarray([d.embedding for d in short.data], np.float32), ref.truncated[16])
    assert [m.id for m in client.models.list()] == [default.model]
    with pytest.raises(openai.BadRequestError, match="should be positive"):
        client.embeddings.create(model="bge-m3", input=TEXTS, dimensions=0)
    with pytest.raises(openai.BadRequestError, match="larger than the model's dimension"):
        client.embeddings.create(model="bge-m3", input=TEXTS, dimensions=100_000)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.http + "/v1", api_key="not-the-key", max_retries=0).embeddings.create(
            model="bge-m3", input="x")


def test_huggingface_inference_client(server, ref):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    # feature_extraction posts to the URL it is given: the /embed route, or a base URL's POST / (TEI's default task)
    for client in (InferenceClient(model=server.http + "/embed", token=KEY), InferenceClient(base_url=server.http,
                                                                                              token=KEY)):
        got = np.vstack([client.feature_extraction(t) for t in TEXTS])
        with server.client() as c:
            singles = np.vstack([c.embed([t], sparse=False).dense for t in TEXTS])
        np.testing.assert_array_equal(got, singles)
        truncated = client.feature_extraction("long " * 600, truncate=True, truncation_direction="Left")
        assert truncated.shape == (1, ref.dense.shape[1])
        with pytest.raises(HfHubHTTPError) as err:
            client.feature_extraction("long " * 600, truncate=False)
        assert err.value.response.status_code == 413
    base = InferenceClient(server.http, token=KEY, provider="hf-inference")
    assert base.health_check()
    assert base.get_endpoint_info()["max_input_length"] == 512


def test_pymilvus_model_functions(server, ref):
    from pymilvus.model.dense import OpenAIEmbeddingFunction
    from pymilvus.model.dense.tei import TEIEmbeddingFunction
    from pymilvus.model.reranker.tei import TEIRerankFunction

    fn = OpenAIEmbeddingFunction(model_name="bge-m3", api_key=KEY, base_url=server.http + "/v1")
    np.testing.assert_array_equal(np.asarray(fn.encode_documents(TEXTS), np.float32), ref.dense)
    short = OpenAIEmbeddingFunction(model_name="bge-m3", api_key=KEY, base_url=server.http + "/v1", dimensions=16)
    assert short.dim == 16
    np.testing.assert_array_equal(np.asarray(short.encode_queries(TEXTS), np.float32), ref.truncated[16])

    # pymilvus-model's TEI functions send no key of their own: a requests.Session header carries it
    tei = TEIEmbeddingFunction(api_url=server.http)
    tei._session.headers["Authorization"] = f"Bearer {KEY}"
    np.testing.assert_array_equal(np.asarray(tei(TEXTS), np.float32), ref.dense)
    rerank = TEIRerankFunction(api_url=server.http)
    rerank._session.headers["Authorization"] = f"Bearer {KEY}"
    with pytest.raises(RuntimeError, match="MEE_RERANKER_MODEL"):
        rerank("query", ["a", "b"])


def test_one_process_shares_metrics_and_json_logs(server):
    req = urllib.request.Request(server.http + "/embed", data=json.dumps({"inputs": ["logged"]}).encode(),
                                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(server.metrics, timeout=10) as resp:
        text = resp.read().decode()
    assert 'mee_requests_total{code="OK",rpc="http:/embed"}' in text
    assert 'mee_requests_total{code="OK",rpc="Embed"}' in text  # the gRPC calls of the same process
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    http_lines = [x for x in lines if x.get("msg") == "http"]
    assert http_lines and {"rpc", "code", "status", "ms", "peer"} <= set(http_lines[-1])
    assert any(x.get("msg") == "http listening" for x in lines)
    assert KEY not in server.log()
