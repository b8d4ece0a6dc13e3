"""Test certificates from the openssl CLI, for the TLS tests of the service and of the reliability suite.

Each CA signs the certificates named for it; every certificate is valid for localhost and 127.0.0.1. A test
that needs them is skipped where openssl is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SIGNED_BY_CA = {"server": "ca", "client": "ca"}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, signed: dict[str, str] | None = None) -> Path:
    """``<ca>.pem/.key`` per CA and ``<name>.pem/.key`` per certificate in ``directory`` (``signed``: name ->
    the CA that signs it; by default a server and a client certificate from one CA, ``ca``)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    signed = SIGNED_BY_CA if signed is None else signed
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for ca in dict.fromkeys(signed.values()):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", cwd=directory)
    for name, ca in signed.items():
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=directory)
    return directory
