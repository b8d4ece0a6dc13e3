from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Output(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_UNSPECIFIED: _ClassVar[Output]
    OUTPUT_DENSE: _ClassVar[Output]
    OUTPUT_SPARSE: _ClassVar[Output]
    OUTPUT_COLBERT: _ClassVar[Output]
OUTPUT_UNSPECIFIED: Output
OUTPUT_DENSE: Output
OUTPUT_SPARSE: Output
OUTPUT_COLBERT: Output

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "outputs", "truncate_dims", "dtype", "max_length")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_DIMS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[Output]
    truncate_dims: _containers.RepeatedScalarFieldContainer[int]
    dtype: _common_pb2.DType
    max_length: int
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[_Union[Output, str]]] = ..., truncate_dims: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[_common_pb2.DType, str]] = ..., max_length: _Optional[int] = ...) -> None: ...

class TruncatedDense(_message.Message):
    __slots__ = ("dim", "vectors")
    DIM_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    dim: int
    vectors: _common_pb2.Matrix
    def __init__(self, dim: _Optional[int] = ..., vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("dense", "sparse", "colbert", "truncated", "token_counts", "timings", "model", "model_fingerprint")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    dense: _common_pb2.Matrix
    sparse: _containers.RepeatedCompositeFieldContainer[_common_pb2.SparseVector]
    colbert: _containers.RepeatedCompositeFieldContainer[_common_pb2.Matrix]
    truncated: _containers.RepeatedCompositeFieldContainer[TruncatedDense]
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    timings: _common_pb2.Timings
    model: str
    model_fingerprint: str
    def __init__(self, dense: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., sparse: _Optional[_Iterable[_Union[_common_pb2.SparseVector, _Mapping]]] = ..., colbert: _Optional[_Iterable[_Union[_common_pb2.Matrix, _Mapping]]] = ..., truncated: _Optional[_Iterable[_Union[TruncatedDense, _Mapping]]] = ..., token_counts: _Optional[_Iterable[int]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., model: _Optional[str] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("query", "passages", "normalize")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    query: str
    passages: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    def __init__(self, query: _Optional[str] = ..., passages: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("scores", "token_counts", "timings", "model", "model_fingerprint")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    token_counts: _containers.RepeatedScalarFieldContainer[int]
    timings: _common_pb2.Timings
    model: str
    model_fingerprint: str
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., token_counts: _Optional[_Iterable[int]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., model: _Optional[str] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...
