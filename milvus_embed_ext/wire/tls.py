"""TLS material for both ends: reading PEM files with a clear error, and the client's channel credentials."""

from __future__ import annotations

from pathlib import Path

import grpc

from ..errors import InvalidArgument


def read_pem(path: str, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {p}: {exc.strerror}; check the path and its permissions") from None


def channel_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials:
    """Client TLS credentials: ``ca`` to verify the server (system roots when None), cert/key for mTLS."""
    if bool(cert) != bool(key):
        raise InvalidArgument("client TLS needs both a certificate and a key (mutual TLS), or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "TLS CA file") if ca else None,
        private_key=read_pem(key, "client TLS key") if key else None,
        certificate_chain=read_pem(cert, "client TLS certificate") if cert else None,
    )


__all__ = ["channel_credentials", "read_pem"]
