"""Server processes this project starts for its tests, benchmarks and local cluster: a port to
give one, and ending one."""

from __future__ import annotations

import socket
import subprocess


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
