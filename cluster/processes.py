"""Server processes this project starts for its tests, benchmarks and local cluster: a port to
give one, starting one until it is ready, and ending one."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class ServerNotReady(RuntimeError):
    """A server exited, or did not answer, before it was ready; the message carries its log."""


def free_port() -> int:
    """A loopback port free now (the OS picks it; a server started soon after can bind it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout_s`."""
    process.terminate()
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
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts `command` with its output in `log_path`, waits until `is_ready()`, and stops the
    process on exit. Raises ServerNotReady when it exits first or `timeout_s` passes."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
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
        stop_process(process)
