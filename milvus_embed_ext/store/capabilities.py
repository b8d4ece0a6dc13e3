"""What the connected Milvus can do.

Servers are *probed* at connect time (:func:`probe_capabilities`): a scratch collection is created with
the features the sidecar may use and read back, because version strings lie in both directions —
Milvus Lite 3.2.2 runs as a gRPC server, answers ``milvus_lite-3.2.2`` (which parses as "3.2.2", newer
than every 2.6 server) and still drops Array-of-Struct fields silently, refuses FLOAT16 vectors and
answers UNIMPLEMENTED to ``add_collection_field``. The embedded Milvus Lite 2.5 (C++ core, reached over a
unix socket) is not probed: its set is fixed and was measured (:func:`capabilities_for` with ``lite=True``):
UNIMPLEMENTED to GetVersion, aliases and add_collection_field; FLAT / IVF_FLAT / sparse inverted only.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT")
SERVER_INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")
PROBE_PREFIX = "mee_probe_"
PROBE_DESCRIPTION = "milvus-embed capability probe"


@dataclass(frozen=True)
class Capabilities:
    server_version: str
    lite: bool
    aliases: bool
    add_field: bool
    native_multivector: bool
    float16_vectors: bool
    probed: bool = False
    """True when the flags come from probing the server, False when they come from a version table."""
    descriptions: bool = True
    """The server keeps collection descriptions (where the layout lives); Milvus Lite 3.2.2 drops them, and
    the store then keeps the description in a collection property instead (client.DescriptionShim)."""

    @property
    def index_types(self) -> tuple[str, ...]:
        return LITE_INDEX_TYPES if self.lite else SERVER_INDEX_TYPES

    @property
    def default_index_type(self) -> str:
        return "FLAT" if self.lite else "HNSW"


def parse_version(version: str) -> tuple[int, int, int] | None:
    """``v2.6.4``, ``2.6.4-rc1``, ``v2.5.10-gpu`` -> (2, 6, 4); None when there is no x.y[.z]."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def capabilities_for(version: str, *, lite: bool) -> Capabilities:
    """Capabilities from a version string: the embedded Lite's measured set, or a server's *assumed* set
    (used only where probing is impossible, e.g. the probe itself was refused). Unknown versions and
    anything that is not a Milvus 2.x version get the conservative set."""
    if lite:
        # Milvus Lite 2.5.x: aliases and add-field are UNIMPLEMENTED, FLOAT16_VECTOR works (measured).
        return Capabilities(server_version=f"milvus-lite {version}".strip(), lite=True, aliases=False,
                            add_field=False, native_multivector=False, float16_vectors=True)
    v = parse_version(version)
    if v is None or v[0] != 2 or "lite" in (version or "").lower():
        return Capabilities(server_version=version or "unknown", lite=False, aliases=True,
                            add_field=False, native_multivector=False, float16_vectors=False)
    return Capabilities(
        server_version=version,
        lite=False,
        aliases=v >= (2, 0, 0),
        add_field=v >= (2, 6, 0),
        native_multivector=v >= (2, 6, 4),
        float16_vectors=v >= (2, 4, 0),
    )


_probe_cache: dict[tuple[str, str], Capabilities] = {}
_probe_lock = threading.Lock()


def probe_capabilities(client: Any, version: str, *, cache_key: str = "",
                       on_refused: Callable[[str, BaseException], None] | None = None) -> Capabilities:
    """Ask the server what it does, with scratch collections (``mee_probe_<random>``, dropped afterwards).

    - native multi-vector: an ARRAY<STRUCT{vector FLOAT_VECTOR}> field is created and must come back
      from ``describe_collection`` (Milvus Lite 3.2.2 accepts it and drops it);
    - add_field: ``add_collection_field`` of a nullable INT64 on the scratch collection;
    - aliases: ``list_aliases`` of the scratch collection;
    - float16 vectors: a second scratch collection with a FLOAT16_VECTOR field;
    - descriptions: the scratch collection's schema description must come back.

    A server that refuses the scratch collection itself (no privilege to create collections) gets the
    version table's set, and a warning says so. Results are cached per ``cache_key`` (the URI) and
    version within the process, so migrations and tests that reconnect do not probe again.
    """
    key = (cache_key, version)
    with _probe_lock:
        if cache_key and key in _probe_cache:
            return _probe_cache[key]
    from pymilvus import DataType

    def refused(what: str, exc: BaseException) -> None:
        log.debug("capability probe: %s refused by %s: %s", what, version, exc)
        if on_refused is not None:
            on_refused(what, exc)

    name = f"{PROBE_PREFIX}{secrets.token_hex(6)}"
    made: list[str] = []
    try:
        native = True
        try:
            _create_scratch(client, name, struct=True)
            made.append(name)
        except Exception as exc:  # noqa: BLE001 - servers before 2.6.4 refuse the struct type
            refused("array-of-struct field", exc)
            native = False
            try:
                _create_scratch(client, name, struct=False)
                made.append(name)
            except Exception as exc2:  # noqa: BLE001
                log.warning("cannot probe the capabilities of Milvus %s (creating a scratch collection failed: "
                            "%s); assuming the features of its version", version, exc2)
                return capabilities_for(version, lite=False)
        if native:
            described = client.describe_collection(name)
            structs = {s.get("name") for s in described.get("struct_array_fields", described.get("struct_fields", []))}
            fields = {f.get("name") for f in described.get("fields", [])}
            native = "colbert" in structs or "colbert" in fields
            if not native:
                refused("array-of-struct field (silently dropped at create time)", RuntimeError("dropped"))
        descriptions = client.describe_collection(name).get("description") == PROBE_DESCRIPTION
        if not descriptions:
            refused("collection description (silently dropped at create time)", RuntimeError("dropped"))
        aliases = True
        try:
            client.list_aliases(name)
        except Exception as exc:  # noqa: BLE001
            refused("aliases", exc)
            aliases = False
        add_field = True
        try:
            client.add_collection_field(name, "probe_added", DataType.INT64, nullable=True)
        except Exception as exc:  # noqa: BLE001
            refused("add_collection_field", exc)
            add_field = False
        f16_name = f"{name}_f16"
        f16 = True
        try:
            _create_scratch(client, f16_name, struct=False, dtype=DataType.FLOAT16_VECTOR)
            made.append(f16_name)
        except Exception as exc:  # noqa: BLE001
            refused("FLOAT16_VECTOR field", exc)
            f16 = False
    finally:
        for n in made:
            try:
                client.drop_collection(n)
            except Exception:  # noqa: BLE001 - best effort; the name says what it is
                log.warning("could not drop the capability-probe collection %s; drop it by hand", n)
    caps = Capabilities(server_version=version, lite=False, aliases=aliases, add_field=add_field,
                        native_multivector=native, float16_vectors=f16, probed=True, descriptions=descriptions)
    log.info("Milvus %s capabilities (probed): aliases=%s add_field=%s native_multivector=%s float16_vectors=%s "
             "descriptions=%s", version, aliases, add_field, native, f16, descriptions)
    with _probe_lock:
        if cache_key:
            _probe_cache[key] = caps
    return caps


def _create_scratch(client: Any, name: str, *, struct: bool, dtype: Any = None) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=PROBE_DESCRIPTION)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=16)
    schema.add_field("v", dtype or DataType.FLOAT_VECTOR, dim=2)
    if struct:
        sub = client.create_struct_field_schema()
        sub.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
        schema.add_field("colbert", DataType.ARRAY, element_type=DataType.STRUCT, struct_schema=sub, max_capacity=4)
    client.create_collection(name, schema=schema)
