"""A TLS-only redis-server for tests: a self-signed CA and a certificate for 127.0.0.1,
made with the ``openssl`` command (or the ``cryptography`` package when that is what is
there), and the server started with ``--port 0 --tls-port P``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.redis_servers import RedisServer, free_port, path_redis_server


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path

    def query(self) -> str:
        return f"ssl_ca_certs={self.ca}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"


def make_certs(folder: Path) -> Certs:
    """A CA and a certificate for 127.0.0.1 / localhost signed by it (server and client)."""
    certs = Certs(folder / "ca.crt", folder / "redis.crt", folder / "redis.key")
    if shutil.which("openssl"):
        _openssl(folder, certs)
    else:
        try:
            _cryptography(certs)
        except ImportError:
            pytest.skip("neither the openssl command nor the cryptography package is here")
    return certs


def _openssl(folder: Path, certs: Certs) -> None:
    ca_key = folder / "ca.key"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(certs.ca), "-days", "2", "-subj", "/CN=mcluster test CA")  # fmt: skip
    csr = folder / "redis.csr"
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(certs.key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(certs.cert), "-days", "2", "-extfile", str(ext))  # fmt: skip


def _cryptography(certs: Certs) -> None:  # pragma: no cover - only without openssl
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder().subject_name(name("mcluster test CA"))
        .issuer_name(name("mcluster test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def start_tls_redis(certs: Certs, admin_password: str) -> RedisServer:
    """redis-server listening on TLS only, with a password on the default user; skips
    the test when this redis-server was built without TLS."""
    binary = path_redis_server()
    if binary is None:
        pytest.skip("no redis-server on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-tls-"))
    port = free_port()
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.cert), "--tls-key-file", str(certs.key),
         "--tls-ca-cert-file", str(certs.ca), "--requirepass", admin_password,
         "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = RedisServer(binary, port, proc, workdir)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")
            shutil.rmtree(workdir, ignore_errors=True)
            if "tls" in out.lower():
                pytest.skip(f"redis-server lacks TLS support: {out.strip()[-200:]}")
            raise RuntimeError(f"redis-server with TLS did not start: {out}")
        try:
            if admin_client(server, certs, admin_password).ping():
                return server
        except redis.ConnectionError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("redis-server with TLS did not answer within 15 s")


def admin_client(server: RedisServer, certs: Certs, password: str) -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        password=password,
        ssl=True,
        ssl_ca_certs=str(certs.ca),
        ssl_certfile=str(certs.cert),
        ssl_keyfile=str(certs.key),
        socket_connect_timeout=2,
        socket_timeout=5,
    )
