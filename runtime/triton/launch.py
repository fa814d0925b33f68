"""Start and stop a tritonserver process on a model repository, on loopback ports.

    env = ensure_environment()
    with TritonServer(env, "out/eve-tiny/triton") as server:
        server.http_url, server.grpc_url    # "127.0.0.1:PORT", as tritonclient takes them

The server runs in a session of its own with its python-backend stubs; `stop` ends them all (the stubs
too, should the server have been killed before it could end them) and deletes the log the server
wrote to the temporary folder (a log given by the caller stays).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import AerieError
from .environment import TritonEnvironment


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TritonServer:
    def __init__(self, env: TritonEnvironment, repository: str | Path, host: str = "127.0.0.1", http_port: int = 0,
                 grpc_port: int = 0, metrics_port: int = 0, log_path: str | Path | None = None):
        self.env, self.repository, self.host = env, Path(repository).resolve(), host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            str(self.env.tritonserver), f"--model-repository={self.repository}",
            f"--backend-directory={self.env.backend_dir}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true", "--strict-readiness=true", "--allow-gpu-metrics=false", "--exit-timeout-secs=10",
        ]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 300.0) -> "TritonServer":
        """Start the server and wait until every model is loaded; AerieError with the log's end if it fails."""
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env.process_env(), start_new_session=True)
        end = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise AerieError(f"tritonserver exited with code {self.process.returncode} while loading "
                                 f"{self.repository}:\n{self.log_tail()}")
            if time.monotonic() > end:
                self.stop()
                raise AerieError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait for the models to unload, then SIGKILL if it has not ended; then SIGKILL whatever is
        left of its session (stubs). Returns the server's exit code."""
        try:
            if self.process is None:
                return None
            if self.process.returncode is None and not self.exited(0):
                self.process.terminate()
                if not self.exited(timeout):
                    self.process.kill()
                    self.exited(10)
            if self.process.returncode is None:  # exited, not reaped: its id still names its process group
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return self.process.wait(10)
        finally:
            if self.own_log:
                self.log_path.unlink(missing_ok=True)

    def exited(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the server to exit without reaping it (os.WNOWAIT), so that its process
        group id can't be reused before the stubs in it are killed."""
        end = time.monotonic() + timeout
        while os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)
        return True

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
