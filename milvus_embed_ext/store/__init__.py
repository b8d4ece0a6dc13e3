"""Milvus storage: collection layouts, the connection (Lite or server), documents and ColBERT codecs."""

from .capabilities import Capabilities, capabilities_for, parse_version
from .client import MilvusStore, redact_uri
from .codecs import CODECS
from .documents import CheckedDocuments, Document, DocumentStore, StoredVectors, in_expr, literal
from .layout import CollectionLayout, TruncatedField
from .projection import PcaProjection, fit_pca, prefix_project

__all__ = [
    "CODECS",
    "Capabilities",
    "CheckedDocuments",
    "CollectionLayout",
    "Document",
    "DocumentStore",
    "MilvusStore",
    "PcaProjection",
    "StoredVectors",
    "TruncatedField",
    "capabilities_for",
    "fit_pca",
    "in_expr",
    "literal",
    "parse_version",
    "prefix_project",
    "redact_uri",
]
