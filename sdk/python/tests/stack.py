"""A real local Sluice stack for the integration tests, as deploy/dev/up starts one.

A nisshi broker (SQLite storage) and ``sluice-gateway --standalone`` (gateway and worker, the
embedded database and vector store) on free loopback ports, on mTLS with a development CA,
the gateway's certificate and a tenant's client certificate made by ``sluice-admin``; all of
it in one temporary directory (with a ``sluice.toml`` that shortens the Kafka session, so that
a killed worker's partitions move on in seconds). Every wait is bounded; ``close`` stops both
processes.

Where things are: ``SLUICE_CACHE`` (default ``~/.cache/sluice``) has the broker
(``nisshi/bin/nisshi``); ``SLUICE_BIN_DIR`` (default ``$CARGO_TARGET_DIR/debug``, itself by
default ``$SLUICE_CACHE/target``) has ``sluice-gateway`` and ``sluice-admin``;
``SLUICE_MODEL_DIR`` (default ``$SLUICE_CACHE/model``) the embedding model.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tools:
    nisshi: Path
    gateway: Path
    admin: Path
    model_dir: Path


def find_tools() -> Tools | str:
    """The installed tools, or why they cannot be used."""
    cache = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache/sluice"))
    target = Path(os.environ.get("CARGO_TARGET_DIR", cache / "target"))
    bin_dir = Path(os.environ.get("SLUICE_BIN_DIR", target / "debug"))
    tools = Tools(
        nisshi=cache / "nisshi/bin/nisshi",
        gateway=bin_dir / "sluice-gateway",
        admin=bin_dir / "sluice-admin",
        model_dir=Path(os.environ.get("SLUICE_MODEL_DIR", cache / "model")),
    )
    for path in (tools.nisshi, tools.gateway, tools.admin):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (deploy/dev/up or cargo build installs it)"
    if not (tools.model_dir / "model.safetensors").exists():
        return f"no model in {tools.model_dir} (deploy/dev/lib.sh install_model)"
    return tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class LocalStack:
    """Broker + Sluice standalone on mTLS, in ``root`` (a fresh temporary directory)."""

    def __init__(self, tools: Tools, root: Path, tenant: str = "demo") -> None:
        self.tools = tools
        self.root = root
        self.tenant = tenant
        self.tls = root / "tls"
        self.data = root / "data"
        self.kafka_port = free_port()
        self.grpc_port = free_port()
        self.health_port = free_port()
        self.broker: subprocess.Popen[bytes] | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _env(self) -> dict[str, str]:
        # Only what this stack sets: no SLUICE_* configuration of the caller's leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_") and k != "RUST_LOG"}
        env["SLUICE_MODEL_DIR"] = str(self.tools.model_dir)
        env["RUST_LOG"] = "info"
        return env

    def admin(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.tools.admin), "--data-dir", str(self.data), "--actor", "sdk/python tests", *args],
            cwd=self.root,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sluice-admin {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def start(self) -> None:
        # What deploy/dev/up gives on the command line, plus what the tests of killing a
        # process need: a killed worker holds its partitions until its session times out.
        (self.root / "sluice.toml").write_text(
            '[kafka.properties]\n"session.timeout.ms" = "6000"\n"heartbeat.interval.ms" = "500"\n'
        )
        # deploy/dev/up's steps: CA, server certificate, tenant, client certificate.
        self.admin("cert", "init-ca", "--out", str(self.tls))
        self.admin("cert", "server", "--ca-dir", str(self.tls), "--out", str(self.tls), "--name", "localhost", "--name", "127.0.0.1")
        self.admin("tenant", "create", self.tenant, "--name", "SDK test tenant")
        self.admin("cert", "client", self.tenant, "--ca-dir", str(self.tls), "--out", str(self.tls))
        self.start_broker()
        self.start_gateway()

    def start_broker(self) -> None:
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        log = open(self.root / "broker.log", "ab")
        # nisshi resolves sqlite:// paths against its working directory.
        self.broker = subprocess.Popen(
            [str(self.tools.nisshi), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "sqlite://broker.db", "--group-initial-rebalance-delay", "100ms"],
            cwd=self.root, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while not _port_open(self.kafka_port):
            if self.broker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start:\n{_tail(self.root / 'broker.log')}")
            time.sleep(0.1)

    def start_gateway(self, timeout: float = 180) -> None:
        env = self._env()
        env["SLUICE_TLS__CERT"] = str(self.tls / "server.pem")
        env["SLUICE_TLS__KEY"] = str(self.tls / "server-key.pem")
        env["SLUICE_TLS__CLIENT_CA"] = str(self.tls / "ca.pem")
        self.gateway_starts += 1
        log = open(self.root / "sluice.log", "ab")
        self.gateway = subprocess.Popen(
            [str(self.tools.gateway), "--standalone", "--config", str(self.root / "sluice.toml"),
             "--listen", self.target, "--health-listen", f"127.0.0.1:{self.health_port}",
             "--bootstrap-servers", f"127.0.0.1:{self.kafka_port}", "--data-dir", str(self.data)],
            cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.gateway.poll() is not None:
                raise RuntimeError(f"sluice-gateway exited ({self.gateway.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sluice-gateway not healthy within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop_gateway(self, timeout: float = 30) -> None:
        """SIGTERM (graceful: in-flight calls finish, streams end UNAVAILABLE), then SIGKILL."""
        _stop(self.gateway, timeout)
        self.gateway = None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.root / "sluice.log", lines)

    def close(self) -> None:
        _stop(self.gateway, 30)  # first, so it finishes its transactions while the broker is up
        _stop(self.broker, 10)
        self.gateway = self.broker = None


def _stop(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
