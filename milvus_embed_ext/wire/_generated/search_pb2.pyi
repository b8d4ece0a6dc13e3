from . import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Representation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPRESENTATION_UNSPECIFIED: _ClassVar[Representation]
    REPRESENTATION_DENSE: _ClassVar[Representation]
    REPRESENTATION_SPARSE: _ClassVar[Representation]
    REPRESENTATION_COLBERT: _ClassVar[Representation]
    REPRESENTATION_DENSE_TRUNCATED: _ClassVar[Representation]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_M3: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
    FUSION_METHOD_WEIGHTED: _ClassVar[FusionMethod]
    FUSION_METHOD_DBSF: _ClassVar[FusionMethod]

class Normalization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NORMALIZATION_UNSPECIFIED: _ClassVar[Normalization]
    NORMALIZATION_MINMAX: _ClassVar[Normalization]
    NORMALIZATION_ARCTAN: _ClassVar[Normalization]
    NORMALIZATION_ARCTAN_POS: _ClassVar[Normalization]

class CrossEncoderOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CROSS_ENCODER_ORDER_UNSPECIFIED: _ClassVar[CrossEncoderOrder]
    CROSS_ENCODER_ORDER_RERANKER: _ClassVar[CrossEncoderOrder]
    CROSS_ENCODER_ORDER_FUSED: _ClassVar[CrossEncoderOrder]
REPRESENTATION_UNSPECIFIED: Representation
REPRESENTATION_DENSE: Representation
REPRESENTATION_SPARSE: Representation
REPRESENTATION_COLBERT: Representation
REPRESENTATION_DENSE_TRUNCATED: Representation
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_M3: FusionMethod
FUSION_METHOD_RRF: FusionMethod
FUSION_METHOD_WEIGHTED: FusionMethod
FUSION_METHOD_DBSF: FusionMethod
NORMALIZATION_UNSPECIFIED: Normalization
NORMALIZATION_MINMAX: Normalization
NORMALIZATION_ARCTAN: Normalization
NORMALIZATION_ARCTAN_POS: Normalization
CROSS_ENCODER_ORDER_UNSPECIFIED: CrossEncoderOrder
CROSS_ENCODER_ORDER_RERANKER: CrossEncoderOrder
CROSS_ENCODER_ORDER_FUSED: CrossEncoderOrder

class Weights(_message.Message):
    __slots__ = ("dense", "sparse", "colbert")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    COLBERT_FIELD_NUMBER: _ClassVar[int]
    dense: float
    sparse: float
    colbert: float
    def __init__(self, dense: _Optional[float] = ..., sparse: _Optional[float] = ..., colbert: _Optional[float] = ...) -> None: ...

class SearchPlan(_message.Message):
    __slots__ = ("candidates", "candidate_k", "truncate_dim", "rerank", "allow_partial", "rescore")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_K_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_DIM_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedScalarFieldContainer[Representation]
    candidate_k: int
    truncate_dim: int
    rerank: _containers.RepeatedScalarFieldContainer[Representation]
    allow_partial: bool
    rescore: _containers.RepeatedScalarFieldContainer[Representation]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Representation, str]]] = ..., candidate_k: _Optional[int] = ..., truncate_dim: _Optional[int] = ..., rerank: _Optional[_Iterable[_Union[Representation, str]]] = ..., allow_partial: _Optional[bool] = ..., rescore: _Optional[_Iterable[_Union[Representation, str]]] = ...) -> None: ...

class CrossEncoderOptions(_message.Message):
    __slots__ = ("enabled", "top_n", "order", "weight")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    top_n: int
    order: CrossEncoderOrder
    weight: float
    def __init__(self, enabled: _Optional[bool] = ..., top_n: _Optional[int] = ..., order: _Optional[_Union[CrossEncoderOrder, str]] = ..., weight: _Optional[float] = ...) -> None: ...

class FusionOptions(_message.Message):
    __slots__ = ("method", "weights", "rrf_k", "normalization")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    weights: Weights
    rrf_k: int
    normalization: Normalization
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ..., rrf_k: _Optional[int] = ..., normalization: _Optional[_Union[Normalization, str]] = ...) -> None: ...

class HybridSearchRequest(_message.Message):
    __slots__ = ("query", "collection", "plan", "fusion", "filter", "top_k", "offset", "output_fields", "cross_encoder")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CROSS_ENCODER_FIELD_NUMBER: _ClassVar[int]
    query: str
    collection: str
    plan: SearchPlan
    fusion: FusionOptions
    filter: str
    top_k: int
    offset: int
    output_fields: _containers.RepeatedScalarFieldContainer[str]
    cross_encoder: CrossEncoderOptions
    def __init__(self, query: _Optional[str] = ..., collection: _Optional[str] = ..., plan: _Optional[_Union[SearchPlan, _Mapping]] = ..., fusion: _Optional[_Union[FusionOptions, _Mapping]] = ..., filter: _Optional[str] = ..., top_k: _Optional[int] = ..., offset: _Optional[int] = ..., output_fields: _Optional[_Iterable[str]] = ..., cross_encoder: _Optional[_Union[CrossEncoderOptions, _Mapping]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "scores", "text", "metadata_json")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    scores: _containers.ScalarMap[str, float]
    text: str
    metadata_json: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class HybridSearchResponse(_message.Message):
    __slots__ = ("hits", "query_tokens", "timings", "candidates", "degraded", "colbert_read")
    HITS_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    COLBERT_READ_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    query_tokens: int
    timings: _common_pb2.Timings
    candidates: int
    degraded: _containers.RepeatedScalarFieldContainer[str]
    colbert_read: int
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., query_tokens: _Optional[int] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., candidates: _Optional[int] = ..., degraded: _Optional[_Iterable[str]] = ..., colbert_read: _Optional[int] = ...) -> None: ...
