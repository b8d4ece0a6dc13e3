"""Dev-only tools, apart from the runtime: ``protogen`` (generated gRPC code), ``docsgen``
(docs/configuration.md from the settings) and ``synthetic`` (the benchmark and test corpus).

Nothing the service, the client or the CLI runs imports this package.
"""
