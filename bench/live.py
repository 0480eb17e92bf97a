"""The one launcher of a real `d2f serve` for benchmarks, the soak and the tests: a subprocess on a free
loopback port, ready once /health answers 200."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """capture: keep the server's output to report it if start-up fails (tests); off, the server writes
    to this process's stdout/stderr, which suits long runs that nobody reads a pipe of."""

    def __init__(self, *args: str, env: dict | None = None, ready_timeout: float = 120, capture: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "d2f", "serve", "--port", str(self.port), "--log-level", "warning", *args]
        out = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) if capture else {}
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, **out)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                told = f": {self.proc.stdout.read()}" if capture else ""
                raise RuntimeError(f"server exited {self.proc.returncode}{told}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def drain(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code once the server has drained and stopped."""
        self.signal()
        return self.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
