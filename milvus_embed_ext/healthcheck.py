"""A gRPC health probe for the sidecar: ``milvus-embed health`` or ``python -m milvus_embed_ext.healthcheck``.

Container HEALTHCHECKs and exec probes run this every few seconds, so it imports only grpc and the
settings (not torch): the module form starts in a fraction of a second. Exit 0 when the server answers
SERVING for the asked service, 1 otherwise, with one line saying why.

Kubernetes can probe gRPC natively (``grpc:`` probes) without this, except when the sidecar serves TLS:
native probes speak plaintext only, so TLS deployments use an exec probe running this command.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import Settings, load_settings
from .errors import InvalidArgument, MilvusEmbedError

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


@dataclass(frozen=True)
class ProbeResult:
    serving: bool
    status: str  # SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN, or the gRPC error code name
    detail: str = ""


def probe_address(listen: str) -> str:
    """Where to reach a server bound to ``listen``: a wildcard bind is reached on loopback."""
    if listen.startswith("unix:"):
        return listen
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"listen address {listen!r} must be host:port (MEE_LISTEN), e.g. 0.0.0.0:50051")
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1" if host in {"0.0.0.0", ""} else "[::1]"
    return f"{host}:{port}"


def check(
    address: str,
    *,
    service: str = "",
    timeout_s: float = 3.0,
    tls_ca: str | None = None,
    tls_server_name: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    use_tls: bool = False,
) -> ProbeResult:
    """One grpc.health.v1 Check call. Never raises for network trouble: that is a NOT serving result."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options: list[tuple[str, object]] = []
    if use_tls or tls_ca:
        root = _read(tls_ca) if tls_ca else None
        cert = _read(client_cert) if client_cert else None
        key = _read(client_key) if client_key else None
        creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert)
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        name = code.name if code is not None else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.NOT_FOUND:
            return ProbeResult(False, "SERVICE_UNKNOWN", f"the server does not know service {service!r}")
        return ProbeResult(False, name, details or "")
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return ProbeResult(status == "SERVING", status)


def _read(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise InvalidArgument(f"TLS file {p} does not exist")
    return p.read_bytes()


def check_from_settings(settings: Settings, args: argparse.Namespace) -> ProbeResult:
    """Probe the sidecar these settings describe (its ``listen`` address and TLS), flags taking precedence."""
    address = args.address or probe_address(settings.listen)
    use_tls = bool(settings.tls_cert) and not args.plaintext
    # With TLS on and no CA given, trust the server's own certificate: right for a self-signed one,
    # and for a chain file that ends in its CA.
    tls_ca = args.tls_ca or (settings.tls_cert if use_tls else None)
    client_cert = args.tls_client_cert
    client_key = args.tls_client_key
    if use_tls and settings.tls_client_ca and not client_cert:
        # Mutual TLS: present the server's own pair; accepted when it is signed by tls_client_ca.
        client_cert, client_key = settings.tls_cert, settings.tls_key
    return check(
        address,
        service=args.service,
        timeout_s=args.timeout,
        tls_ca=tls_ca if use_tls or args.tls_ca else None,
        tls_server_name=args.tls_server_name,
        client_cert=client_cert if use_tls else None,
        client_key=client_key if use_tls else None,
        use_tls=use_tls or bool(args.tls_ca),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="host:port to probe (default: the MEE_LISTEN address, wildcard -> loopback)")
    parser.add_argument("--service", default="", help="health service name; '' (default) means the whole sidecar")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    parser.add_argument("--tls-ca", help="CA bundle to verify the server (default with MEE_TLS_CERT: that cert)")
    parser.add_argument("--tls-server-name", help="name expected in the server certificate (when probing an IP)")
    parser.add_argument("--tls-client-cert", help="client certificate for mutual TLS")
    parser.add_argument("--tls-client-key", help="client key for mutual TLS")
    parser.add_argument("--plaintext", action="store_true", help="probe without TLS even if MEE_TLS_CERT is set")
    parser.add_argument("--config", help="TOML settings file (MEE_CONFIG)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing, only set the exit code")


def run(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None))
    result = check_from_settings(settings, args)
    if not args.quiet:
        target = args.address or probe_address(settings.listen)
        line = f"{target} service={args.service or '(all)'}: {result.status}"
        print(line + (f" ({result.detail})" if result.detail else ""), file=sys.stdout if result.serving else sys.stderr)
    return 0 if result.serving else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m milvus_embed_ext.healthcheck", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MilvusEmbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1  # Docker HEALTHCHECK knows only 0 (healthy) and 1 (unhealthy); 2 is reserved


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
