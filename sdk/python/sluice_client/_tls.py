"""The client's mTLS identity: its certificate says which tenant it acts for."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

StrPath = str | os.PathLike[str]


def _read(path: StrPath, what: str, hint: str = "") -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {os.fspath(path)} does not exist{hint}") from None


@dataclass(frozen=True)
class TlsCredentials:
    """A client certificate and key (PEM), and the CA that signed the gateway's certificate.

    ``root_certificates`` None trusts the system's CAs (a gateway with a public certificate);
    a development CA must be given.
    """

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes | None = None

    @classmethod
    def from_files(cls, cert: StrPath, key: StrPath, ca: StrPath | None = None) -> TlsCredentials:
        """From PEM files: the client certificate, its private key, and optionally the CA."""
        return cls(
            certificate_chain=_read(cert, "the client certificate"),
            private_key=_read(key, "the client key"),
            root_certificates=None if ca is None else _read(ca, "the CA certificate"),
        )

    @classmethod
    def from_directory(
        cls, directory: StrPath, tenant: str | None = None, ca: StrPath | None = None
    ) -> TlsCredentials:
        """From a directory as ``sluice-admin cert client TENANT --out DIR`` writes it.

        That is ``TENANT.pem`` and ``TENANT-key.pem``; the CA is ``ca`` when given, else the
        directory's ``ca.pem`` when there is one (as in a CA directory, where
        ``deploy/dev/up`` issues the demo tenant's certificate), else the system's CAs.
        Without ``tenant``, the directory must hold exactly one such pair.
        """
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a directory")
        if tenant is None:
            tenant = _only_tenant(root)
        hint = f" (sluice-admin cert client {tenant} --out {root} writes it)"
        ca_path = Path(ca) if ca is not None else root / "ca.pem"
        return cls(
            certificate_chain=_read(root / f"{tenant}.pem", "the client certificate", hint),
            private_key=_read(root / f"{tenant}-key.pem", "the client key", hint),
            root_certificates=_read(ca_path, "the CA certificate") if ca is not None or ca_path.exists() else None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def _only_tenant(root: Path) -> str:
    """The tenant whose certificate and key are the only pair in ``root``."""
    tenants = sorted(
        p.name[: -len("-key.pem")]
        for p in root.glob("*-key.pem")
        if (root / (p.name[: -len("-key.pem")] + ".pem")).exists() and p.name not in ("ca-key.pem", "server-key.pem")
    )
    if len(tenants) != 1:
        found = ", ".join(tenants) or "none"
        raise ValueError(f"{root} holds {len(tenants)} client certificates ({found}); name the tenant")
    return tenants[0]
