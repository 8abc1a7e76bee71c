"""Real processes for tests: redis-server and relay servers on free loopback ports.

Faults are real: `kill()` sends SIGKILL, `restart()` starts the same server on the same
port again. Every wait is bounded and says what it waited for when it gives up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL: every process a test or bench started."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _two_free_ports() -> tuple[int, int]:
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    return first, second


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
        return True
    return False


class RedisProcess:
    """A redis-server on a free port, optionally with an append-only file."""

    def __init__(
        self,
        workdir: Path,
        *,
        aof: bool = False,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        cli_auth: tuple[str, str] | None = None,
        cli_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make system-deps`")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        self.aof = aof
        self.extra_args = list(extra_args)
        """More redis-server options (`--aclfile`, `--maxmemory`, ...), appended as given."""
        self.cli_auth = cli_auth
        """(user, password) for `cli()` when the default user is off."""
        self.cli_args = list(cli_args)
        """More redis-cli options for `cli()` (`--tls --cacert ...` for a TLS-only server)."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisProcess:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.workdir),
            "--save", "",
            "--dbfilename", f"dump-{self.port}.rdb",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfilename", f"aof-{self.port}.aof",
            "--appenddirname", f"aof-{self.port}",
            "--appendfsync", "always",
            "--logfile", str(self.log),
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: _port_open(self.port), 10, f"redis-server on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> RedisProcess:
        self.kill()
        return self.start()

    def cli(self, *args: str) -> str:
        env = dict(os.environ)
        auth: list[str] = []
        if self.cli_auth is not None:
            auth = ["--user", self.cli_auth[0]]
            env["REDISCLI_AUTH"] = self.cli_auth[1]  # not on the command line (ps)
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *self.cli_args, *auth, *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
        )
        return out.stdout.strip()


class RelayProcess:
    """A `relay serve` process (a real uvicorn server) on a free port."""

    def __init__(self, workdir: Path, env: dict[str, str], node_id: str) -> None:
        self.port, self.admin_port = _two_free_ports()
        self.node_id = node_id
        self.env = {
            **os.environ,
            "RELAY_HOST": LOOPBACK,
            "RELAY_PORT": str(self.port),
            "RELAY_ADMIN_PORT": str(self.admin_port),
            "RELAY_NODE_ID": node_id,
            "RELAY_LOG_LEVEL": "info",
            "RELAY_PROBE_INTERVAL": "0.5",
            "RELAY_PROBE_TIMEOUT": "1.5",
            "RELAY_REDIS_TIMEOUT": "1.0",
            "RELAY_UNSUBSCRIBE_DELAY": "0.2",
            "RELAY_DRAIN_SECONDS": "1",
            **env,
        }
        self.log = workdir / f"relay-{node_id}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def admin(self) -> str:
        """Base URL of the admin port (/metrics, /api/v1); the player port when it is 0."""
        port = int(self.env.get("RELAY_ADMIN_PORT", "0")) or self.port
        return f"http://{LOOPBACK}:{port}"

    def start(self, *, ready: bool = True) -> RelayProcess:
        # A port free_port() saw free can be taken before the relay binds it (other tests
        # on this machine, outgoing connections): then start again on fresh ports.
        for attempt in range(3):
            try:
                return self._start(ready)
            except RuntimeError:
                if attempt == 2 or "address already in use" not in self.tail(80):
                    raise
                self._pick_ports()
        raise AssertionError("unreachable")

    def _pick_ports(self) -> None:
        self.port, self.admin_port = _two_free_ports()
        self.env["RELAY_PORT"] = str(self.port)
        if self.env.get("RELAY_ADMIN_PORT") != "0":
            self.env["RELAY_ADMIN_PORT"] = str(self.admin_port)

    def _start(self, ready: bool) -> RelayProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        path = "/readyz" if ready else "/healthz"
        try:
            wait_until(lambda: self.status(path) == 200, 15, f"relay {self.node_id} {path}")
        except TimeoutError:
            self.kill()  # not left running: its Popen would fail a later test (ResourceWarning)
            raise TimeoutError(f"relay {self.node_id} did not start; log:\n{self.tail()}") from None
        return self

    def status(self, path: str = "/readyz") -> int | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"relay {self.node_id} exited {self.proc.returncode}:\n{self.tail()}"
            )
        try:
            return httpx.get(self.http + path, timeout=1.0).status_code
        except httpx.HTTPError:
            return None

    def metrics(self) -> str:
        return httpx.get(self.admin + "/metrics", timeout=2.0).text

    def tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `relay <args>` with this server's settings (as `kubectl exec` would)."""
        return subprocess.run(
            [sys.executable, "-m", "relay.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)  # the drain window of the test settings fits


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gamecluster-test-") as path:
        yield Path(path)
