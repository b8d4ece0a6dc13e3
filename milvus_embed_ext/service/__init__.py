"""The gRPC sidecar: grpc.aio server, micro-batcher, handlers, error mapping, auth, metrics."""
