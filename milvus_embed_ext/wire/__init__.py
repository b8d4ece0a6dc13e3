"""The wire format, shared by the client and the service: generated gRPC stubs (``_generated``, made by
``make proto``), numpy <-> message codecs and enum names (``codec``), status codes <-> domain errors
(``status``) and TLS material (``tls``). It imports nothing of the service.
"""
