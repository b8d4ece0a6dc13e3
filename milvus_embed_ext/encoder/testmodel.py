"""Offline BGE-M3-layout checkpoints for tests and benchmarks.

BGE-M3 weights cannot be downloaded everywhere (CI, air-gapped hosts), so tests run on a checkpoint
built here with BGE-M3's exact on-disk layout: an XLM-RoBERTa model directory (``config.json``,
``model.safetensors``, a fast tokenizer) plus ``colbert_linear.pt`` and ``sparse_linear.pt``.
FlagEmbedding's ``BGEM3FlagModel`` and :class:`~milvus_embed_ext.encoder.M3Encoder` both load it.

A naively initialised random model is degenerate (every text gets the same dense vector and all
sparse weights are zero), which would make parity tests pass vacuously. The ``tiny`` model is
initialised so that attention is content-dependent and the CLS vector is dominated by the text's
tokens: unrelated texts get clearly different vectors and ordinary text has non-empty sparse weights.
The ``full`` model has BGE-M3's exact shapes (and so its compute cost) for benchmarks.

``kind="reranker"`` builds bge-reranker-v2-m3's layout instead: an ``XLMRobertaForSequenceClassification``
directory with one label (``roberta.*`` body plus ``classifier.dense`` / ``classifier.out_proj``), the same
tokenizer and no BGE-M3 heads. Its body is initialised like the encoder's, so different (query, passage)
pairs get clearly different logits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import InvalidArgument, ModelLoadError

log = logging.getLogger(__name__)

# Bump whenever the produced checkpoint changes: ensure_test_model rebuilds stale caches.
BUILDER_VERSION = 6
STAMP_FILE = ".milvus-embed-test-model.json"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, exactly like XLM-R / BGE-M3
MASK_TOKEN = "<mask>"


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    config_vocab: int | None  # None: the tokenizer's own size
    tokenizer_vocab: int
    max_positions: int = 8194


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden=64, layers=2, heads=4, intermediate=256, config_vocab=None, tokenizer_vocab=3000),
    "full": ModelSize(hidden=1024, layers=24, heads=16, intermediate=4096, config_vocab=250002,
                      tokenizer_vocab=8000),
    # BGE-M3's widths (hidden 1024, 250002-row vocabulary) with 2 layers: every stored vector has the real
    # model's size while a corpus of 10k-100k documents encodes in minutes (search and storage benchmarks).
    "wide": ModelSize(hidden=1024, layers=2, heads=16, intermediate=4096, config_vocab=250002,
                      tokenizer_vocab=8000),
}


KINDS = ("m3", "reranker")


def _corpus_lines() -> list[str]:
    """The shipped multilingual training text (Latin, Cyrillic, Arabic, CJK, Indic, emoji, code)."""
    text = resources.files("milvus_embed_ext").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # Word-level recombinations give the unigram trainer more statistics than 60 lines alone.
    words = [w for line in lines for w in line.split()]
    extra = [" ".join(words[i::k][:40]) for k in (3, 5, 7, 11) for i in range(k)]
    return lines + extra


def _train_tokenizer(vocab_size: int):
    """A SentencePiece-style unigram tokenizer with XLM-R's special-token layout and post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS],
        unk_token="<unk>",
        shrinking_factor=0.75,
        max_piece_length=12,
        n_sub_iterations=2,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    # The trainer is not reproducible: parallel reductions jitter scores in the last bits, and the
    # characters it must keep get scores min - k * 1e-4 in hash-set order. Coarse scores (the lowest
    # band merged) sorted by piece make the vocabulary, and so the checkpoint, identical on every build.
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    head, rest = vocab[: len(SPECIAL_TOKENS)], vocab[len(SPECIAL_TOKENS):]
    floor = round(min(score for _, score in rest), 2)
    rest = sorted(((piece, round(score, 2) if score > floor + 0.05 else floor)
                   for piece, score in rest), key=lambda ps: (-ps[1], ps[0]))
    tok.model = models.Unigram([(p, s) for p, s in head] + rest, unk_id=SPECIAL_TOKENS.index("<unk>"),
                               byte_fallback=False)
    tok.add_special_tokens([MASK_TOKEN])
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:  # pragma: no cover - guards the trainer's contract
            raise RuntimeError(f"tokenizer trainer put {name} at {tok.token_to_id(name)}, expected {i}")
    # XLM-R's own post-processor (as in BGE-M3's tokenizer.json): <s> A </s> and <s> A </s></s> B </s>.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return tok


def _tokenizer_files(out: Path, tok, model_max_length: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    specials = {
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
        "pad_token": "<pad>", "cls_token": "<s>", "mask_token": MASK_TOKEN,
    }
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": True,
        **specials,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")


def _xlmr_config(size: ModelSize, vocab: int, kind: str = "m3") -> dict:
    extra: dict = {}
    if kind == "reranker":  # bge-reranker-v2-m3's config.json: one output logit
        extra = {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    return {
        **extra,
        "architectures": ["XLMRobertaForSequenceClassification" if kind == "reranker" else "XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": size.hidden,
        "initializer_range": 0.02,
        "intermediate_size": size.intermediate,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": size.max_positions,
        "num_attention_heads": size.heads,
        "num_hidden_layers": size.layers,
        "output_past": True,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 1,
        "use_cache": True,
        "vocab_size": vocab,
    }


def _init_tensor(name: str, shape: tuple[int, ...], size: ModelSize, gen):
    """Weights chosen so the random model is not degenerate (see module docstring)."""
    import torch

    h = size.hidden
    if name.endswith("LayerNorm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias") or "token_type_embeddings" in name:
        return torch.zeros(shape)
    if name.startswith("classifier."):  # reranker head: tanh(dense(cls)) -> out_proj, logits of order 1
        return torch.randn(shape, generator=gen) * ((1.0 if "dense" in name else 2.0) / math.sqrt(shape[-1]))
    if "word_embeddings" in name:
        return torch.randn(shape, generator=gen)
    if "position_embeddings" in name:
        return torch.randn(shape, generator=gen) * 0.1
    if name.endswith(("attention.self.query.weight", "attention.self.key.weight")):
        std = 2.0 / math.sqrt(h)  # peaked, content-dependent attention
    elif name.endswith("attention.output.dense.weight"):
        std = 2.0 / math.sqrt(h)  # attention output outweighs the constant CLS residual
    else:
        std = 1.0 / math.sqrt(shape[-1])
    return torch.randn(shape, generator=gen) * std


def build_test_model(out_dir: str | os.PathLike[str], size: str = "tiny", seed: int = 0, kind: str = "m3",
                     progress: Callable[[str, int, int | None], None] | None = None) -> Path:
    """Write a BGE-M3-layout checkpoint (``kind="reranker"``: bge-reranker-v2-m3's) to ``out_dir`` (created;
    must be empty or absent).

    ``progress(task, steps_done, steps)``: the full size takes minutes; steps are the tokenizer, each weight
    tensor, writing the safetensors file and the two heads.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

    if kind not in KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if size not in SIZES:
        raise InvalidArgument(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a non-negative integer, got {seed!r}")
    spec = SIZES[size]
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InvalidArgument(f"{out} is not empty; choose a new directory or remove it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    tok = _train_tokenizer(spec.tokenizer_vocab)
    vocab = spec.config_vocab or tok.get_vocab_size()
    _tokenizer_files(out, tok, model_max_length=spec.max_positions - 2)
    config = _xlmr_config(spec, vocab, kind)
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    # Names and shapes come from transformers itself (on the meta device: no memory, no slow init).
    with torch.device("meta"):
        arch = XLMRobertaForSequenceClassification if kind == "reranker" else XLMRobertaModel
        skeleton = arch(XLMRobertaConfig(**config))
    gen = torch.Generator().manual_seed(seed)
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
    steps, task = len(shapes) + 3, f"build {size} test model"
    report = progress or (lambda task, done, total: None)
    report(task, 1, steps)  # the tokenizer is trained
    state = {}
    for i, (name, shape) in enumerate(shapes.items(), start=2):
        state[name] = _init_tensor(name, shape, spec, gen).contiguous()
        report(task, i, steps)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    report(task, steps - 1, steps)
    if kind == "reranker":
        report(task, steps, steps)
        return _finish(out, started, size, seed, kind)

    h = spec.hidden
    colbert = {"weight": torch.randn((h, h), generator=gen) / math.sqrt(h), "bias": torch.zeros(h)}
    # A positive bias keeps about half the tokens' relu(weight) > 0, so ordinary text has lexical weights.
    sparse = {"weight": torch.randn((1, h), generator=gen) / math.sqrt(h), "bias": torch.full((1,), 1.0)}
    torch.save(colbert, out / "colbert_linear.pt")
    torch.save(sparse, out / "sparse_linear.pt")
    report(task, steps, steps)
    return _finish(out, started, size, seed, kind)


def _finish(out: Path, started: float, size: str, seed: int, kind: str) -> Path:
    stamp = {"builder_version": BUILDER_VERSION, "size": size, "seed": seed,
             "build_seconds": round(time.perf_counter() - started, 2)}
    if kind != "m3":
        stamp["kind"] = kind
    (out / STAMP_FILE).write_text(json.dumps(stamp), encoding="utf-8")
    log.info("built %s %s test model in %s (%.1fs)", size, kind, out, stamp["build_seconds"])
    return out


def _stamp_matches(path: Path, size: str, seed: int, kind: str = "m3") -> bool:
    try:
        stamp = json.loads((path / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (stamp.get("builder_version") == BUILDER_VERSION and stamp.get("size") == size
            and stamp.get("seed") == seed and stamp.get("kind", "m3") == kind)


def ensure_test_model(out_dir: str | os.PathLike[str], size: str = "tiny", seed: int = 0, kind: str = "m3") -> Path:
    """Build the checkpoint once and reuse it while the builder version, size and seed match.

    Safe when several processes call it at once: each builds into a private temporary directory and
    renames it into place; a loser of the race discards its copy and uses the winner's.
    """
    out = Path(out_dir)
    if _stamp_matches(out, size, seed, kind):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        build_test_model(tmp / "model", size=size, seed=seed, kind=kind)
        if _stamp_matches(out, size, seed, kind):  # someone else finished first
            return out
        if out.exists():  # stale: move it aside first so the swap is a single rename
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.stale-", dir=out.parent))
            with contextlib.suppress(OSError):
                os.rename(out, trash / "old")
        try:
            os.rename(tmp / "model", out)
        except OSError as exc:
            if not _stamp_matches(out, size, seed, kind):
                raise ModelLoadError(f"could not place the test model at {out}: {exc}") from exc
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for stale in out.parent.glob(f".{out.name}.stale-*"):
            shutil.rmtree(stale, ignore_errors=True)
