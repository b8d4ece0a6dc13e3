"""milvus-embed: a gRPC sidecar that puts every BGE-M3 representation into Milvus and fuses hybrid search."""

__version__ = "0.1.0"
