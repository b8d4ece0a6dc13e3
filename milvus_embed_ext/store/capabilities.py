"""What the connected Milvus can do, decided once at connect time from its version.

Milvus Lite 2.5 (the embedded C++ core) answers UNIMPLEMENTED to GetVersion, aliases and
add_collection_field, and indexes with FLAT / IVF_FLAT / sparse inverted only. Servers gained
add_collection_field in 2.6.0 and native multi-vector fields (array of structs, MAX_SIM metrics)
in 2.6.4; float16 vectors exist since 2.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT")
SERVER_INDEX_TYPES = ("FLAT", "IVF_FLAT", "HNSW")


@dataclass(frozen=True)
class Capabilities:
    server_version: str
    lite: bool
    aliases: bool
    add_field: bool
    native_multivector: bool
    float16_vectors: bool

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
    """Capabilities from a version string. Unknown server versions get the conservative set."""
    if lite:
        # Milvus Lite 2.5.x: aliases and add-field are UNIMPLEMENTED, FLOAT16_VECTOR works (measured).
        return Capabilities(server_version=f"milvus-lite {version}".strip(), lite=True, aliases=False,
                            add_field=False, native_multivector=False, float16_vectors=True)
    v = parse_version(version)
    if v is None:
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
