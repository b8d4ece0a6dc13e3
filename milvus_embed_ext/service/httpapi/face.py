"""uvicorn inside the gRPC server's event loop: one process, one batcher, one set of settings.

uvicorn's ``Server.serve`` would install its own SIGTERM/SIGINT handlers; the sidecar owns the signals, so this
binds the socket itself (a busy port fails start-up with a clear message, port 0 works for tests), then drives
uvicorn's ``startup`` / ``main_loop`` / ``shutdown`` steps from ``Sidecar.start`` and ``Sidecar.stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any

from ...errors import InvalidArgument
from ..handlers import Runtime
from ..metrics import parse_host_port
from .app import Host, build_app
from .core import HttpCore, Reranker

log = logging.getLogger("milvus_embed_ext.service")


class _BatchedReranker:
    """The runtime's reranker as gRPC Rerank uses it: ``Runtime.rerank`` checks the limits and goes through the
    reranker's own batcher (its queue and thread), never blocking the event loop with a forward pass."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def rerank(self, query: str, passages: Sequence[str], normalize: bool) -> Awaitable[list[float]]:
        return self.rt.rerank(query, list(passages), normalize)  # a coroutine: HttpCore awaits it


def _reranker_of(rt: Runtime) -> Reranker | None:
    """The service's reranker once it has loaded (None: no reranker configured, TEI's 424)."""
    return _BatchedReranker(rt) if rt.reranker is not None else None


def bind(listen: str) -> socket.socket:
    host, port = parse_host_port(listen, "http_listen (MEE_HTTP_LISTEN)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: uvicorn writes headers and body separately, and with Nagle on, the body
        # waits for the client's delayed ACK (~40 ms per response on Linux loopback)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {listen} for HTTP ({exc.strerror}); is the port in use? set "
                              "--http-listen / MEE_HTTP_LISTEN, or an empty value to turn HTTP off") from None
    sock.setblocking(False)
    return sock


class HttpFace:
    """The HTTP server of one :class:`~milvus_embed_ext.service.server.Sidecar`."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.core = HttpCore(host.rt, reranker=lambda: _reranker_of(host.rt))
        self.app, self.guard = build_app(host, self.core)
        self.port = 0
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._main: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port. Health answers 503 until the model is loaded."""
        import uvicorn

        s = self.host.settings
        sock = bind(s.http_listen)
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", ws="none", proxy_headers=False,
            server_header=False, timeout_graceful_shutdown=max(math.ceil(s.shutdown_grace_s), 1),
            ssl_certfile=s.tls_cert or None, ssl_keyfile=s.tls_key or None,
            ssl_ca_certs=s.tls_client_ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca else ssl.CERT_NONE,
        )
        try:
            config.load()
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise InvalidArgument(f"cannot serve HTTPS with tls_cert/tls_key/tls_client_ca ({exc}); check the PEM "
                                  "files and their permissions") from None
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server, self._sock = server, sock
        self._main = asyncio.create_task(server.main_loop(), name="mee-http")
        self.port = int(sock.getsockname()[1])
        log.info("http listening", extra={"http_listen": s.http_listen, "port": self.port, "tls": bool(s.tls_cert),
                                          "mtls": bool(s.tls_client_ca), "auth": bool(s.api_keys)})
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for ``grace`` seconds, then cancel what is left."""
        self.guard.stopping = True
        server = self._server
        if server is None:
            return
        self._server = None
        server.config.timeout_graceful_shutdown = max(grace, 0.1)
        server.should_exit = True
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        with contextlib.suppress(Exception):
            await server.shutdown(sockets=[self._sock] if self._sock is not None else None)


__all__ = ["HttpFace", "bind"]
