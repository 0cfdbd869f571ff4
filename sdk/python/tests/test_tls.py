"""Credentials from PEM files and from a directory as `sluice-admin cert client` writes it.
(The files here are stand-ins: reading and choosing them is what is tested; the integration
test connects with real ones.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice_client import Client, TlsCredentials


def write(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(f"PEM of {name}".encode())


def test_from_a_ca_directory_with_the_tenants_certificate(tmp_path: Path) -> None:
    # deploy/dev/up issues the client certificate into the CA directory itself.
    write(tmp_path, "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "demo.pem", "demo-key.pem")
    credentials = TlsCredentials.from_directory(tmp_path, "demo")
    assert credentials.certificate_chain == b"PEM of demo.pem"
    assert credentials.private_key == b"PEM of demo-key.pem"
    assert credentials.root_certificates == b"PEM of ca.pem"
    # The tenant is the only client pair there: server.pem is not one.
    assert TlsCredentials.from_directory(tmp_path) == credentials
    assert "PEM of demo-key" not in repr(credentials)


def test_from_an_out_directory_without_the_ca(tmp_path: Path) -> None:
    # `sluice-admin cert client acme --out ./acme-certs` writes only acme.pem and acme-key.pem.
    write(tmp_path / "acme-certs", "acme.pem", "acme-key.pem")
    write(tmp_path / "ca", "ca.pem")
    assert TlsCredentials.from_directory(tmp_path / "acme-certs").root_certificates is None  # system CAs
    given = TlsCredentials.from_directory(tmp_path / "acme-certs", ca=tmp_path / "ca/ca.pem")
    assert given.root_certificates == b"PEM of ca.pem"


def test_several_tenants_need_a_name(tmp_path: Path) -> None:
    write(tmp_path, "a.pem", "a-key.pem", "b.pem", "b-key.pem")
    with pytest.raises(ValueError, match="2 client certificates \\(a, b\\); name the tenant"):
        TlsCredentials.from_directory(tmp_path)
    assert TlsCredentials.from_directory(tmp_path, "b").certificate_chain == b"PEM of b.pem"


def test_missing_files_say_what_writes_them(tmp_path: Path) -> None:
    write(tmp_path, "ca.pem")
    with pytest.raises(FileNotFoundError, match="sluice-admin cert client acme --out"):
        TlsCredentials.from_directory(tmp_path, "acme")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        TlsCredentials.from_directory(tmp_path / "nope", "acme")
    with pytest.raises(FileNotFoundError, match="the client key"):
        TlsCredentials.from_files(tmp_path / "ca.pem", tmp_path / "key.pem")


def test_from_files(tmp_path: Path) -> None:
    write(tmp_path, "c.pem", "k.pem", "ca.pem")
    credentials = TlsCredentials.from_files(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem")
    assert (credentials.certificate_chain, credentials.private_key, credentials.root_certificates) == (
        b"PEM of c.pem", b"PEM of k.pem", b"PEM of ca.pem",
    )  # fmt: skip


def test_a_client_needs_credentials_unless_it_names_a_dev_tenant() -> None:
    with pytest.raises(ValueError, match="mTLS"):
        Client("127.0.0.1:1")
