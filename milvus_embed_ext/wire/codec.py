"""Packing numpy arrays and sparse dicts into the wire messages, and back; the names of the wire enums.
Shared by server and client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidArgument
from ..limits import FUSIONS, NORMALIZATIONS
from ._generated import common_pb2, embedder_pb2, search_pb2

_NP_DTYPES: dict[int, np.dtype[Any]] = {
    common_pb2.DTYPE_UNSPECIFIED: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.DTYPE_FLOAT16: np.dtype("<f2"),
}


def _enum(enum: Any, prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: enum.Value(prefix + name.upper()) for name in names}


# name -> proto enum value; the names are those of milvus_embed_ext.limits (the planner's vocabulary)
FUSION_ENUM = _enum(search_pb2.FusionMethod, "FUSION_METHOD_", FUSIONS)
NORMALIZATION_ENUM = _enum(search_pb2.Normalization, "NORMALIZATION_", NORMALIZATIONS)
REPRESENTATION_ENUM = _enum(search_pb2.Representation, "REPRESENTATION_",
                            ("dense", "sparse", "colbert", "dense_truncated"))
OUTPUT_ENUM = _enum(embedder_pb2.Output, "OUTPUT_", ("dense", "sparse", "colbert"))
# and back
FUSION_NAME = {v: k for k, v in FUSION_ENUM.items()}
NORMALIZATION_NAME = {v: k for k, v in NORMALIZATION_ENUM.items()}
REPRESENTATION_NAME = {v: k for k, v in REPRESENTATION_ENUM.items()}


def check_dtype(dtype: int, field: str = "dtype") -> int:
    if dtype not in _NP_DTYPES:
        raise InvalidArgument(f"{field}={dtype} is not a known DType; use DTYPE_FLOAT32 (1) or DTYPE_FLOAT16 (2)")
    return dtype


def pack_matrix(array: np.ndarray, dtype: int = common_pb2.DTYPE_FLOAT32) -> common_pb2.Matrix:
    """A float array as a packed Matrix (float32 or float16, little-endian, row-major)."""
    np_dtype = _NP_DTYPES[check_dtype(dtype)]
    arr = np.ascontiguousarray(np.asarray(array), dtype=np_dtype)
    wire_dtype = common_pb2.DType.Name(dtype or common_pb2.DTYPE_FLOAT32)
    return common_pb2.Matrix(shape=list(arr.shape), dtype=wire_dtype, data=arr.tobytes())


def unpack_matrix(matrix: common_pb2.Matrix, *, as_float32: bool = True) -> np.ndarray:
    """The array of a Matrix (a copy, writable). float16 payloads are widened unless ``as_float32=False``."""
    np_dtype = _NP_DTYPES[check_dtype(matrix.dtype, "matrix.dtype")]
    shape = tuple(int(s) for s in matrix.shape)
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(matrix.data) != expected:
        raise InvalidArgument(f"matrix data has {len(matrix.data)} bytes, shape {list(shape)} needs {expected}")
    arr = np.frombuffer(matrix.data, dtype=np_dtype).reshape(shape)
    return arr.astype(np.float32) if as_float32 else arr.copy()


def pack_sparse(weights: Mapping[int, float]) -> common_pb2.SparseVector:
    ids = sorted(weights)
    return common_pb2.SparseVector(ids=ids, weights=[float(weights[i]) for i in ids])


def unpack_sparse(vec: common_pb2.SparseVector) -> dict[int, float]:
    if len(vec.ids) != len(vec.weights):
        raise InvalidArgument(f"sparse vector has {len(vec.ids)} ids but {len(vec.weights)} weights")
    return {int(i): float(w) for i, w in zip(vec.ids, vec.weights, strict=True)}
