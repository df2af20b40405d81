"""Server processes this project starts for its tests, benchmarks and local cluster: a port to
give one, starting one until it is ready, and ending one."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class ServerNotReady(RuntimeError):
    """A server exited, or did not answer, before it was ready; the message carries its log."""


def free_port() -> int:
    """A loopback port free now (the OS picks it; a server started soon after can bind it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(
    process: subprocess.Popen[bytes], timeout_s: float = 10, stop_signal: int = signal.SIGTERM
) -> None:
    """`stop_signal`, and SIGKILL if it has not exited within `timeout_s`."""
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_server(
    command: list[str],
    log_path: Path,
    is_ready: Callable[[], bool],
    what: str,
    timeout_s: float,
    poll_s: float = 0.1,
    env: Mapping[str, str] | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout_s: float = 10,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts `command` (in `env`, else this process's environment) with its output in
    `log_path`, waits until `is_ready()`, and on exit sends it `stop_signal`, SIGKILL after
    `stop_timeout_s`. Raises ServerNotReady when it exits first or `timeout_s` passes."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while not is_ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerNotReady(
                    f"{what} was not ready within {timeout_s:.0f} s "
                    f"(exit status {process.poll()}); its log:\n"
                    f"{log_path.read_text(errors='replace')}"
                )
            time.sleep(poll_s)
        yield process
    finally:
        stop_process(process, stop_timeout_s, stop_signal)
