"""Throw-away certificates for TLS tests, made with the `openssl` command line tool: a CA,
a server certificate for localhost/127.0.0.1 and a client certificate, both signed by it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path, name: str = "test") -> Pki:
    """A fresh CA and two certificates under `directory` (skips the test without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is needed to make test certificates")
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "rsa:2048", "-nodes")
    _openssl(
        "req",
        "-x509",
        *key,
        "-days",
        "2",
        "-subj",
        f"/CN={name}-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, subject, ext in (
        ("server", "/CN=localhost", ("-extfile", "san.cnf")),
        ("client", f"/CN={name}-client", ()),
    ):
        _openssl(
            "req", *key, "-subj", subject, "-keyout", f"{who}.key", "-out", f"{who}.csr", cwd=d
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            *ext,
            "-out",
            f"{who}.pem",
            cwd=d,
        )
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
