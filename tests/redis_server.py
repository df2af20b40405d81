"""A real redis-server on 127.0.0.1 for cache tests: `redis_server()` and the `redis_url` fixture.

Test modules take the fixture with `redis_url = redis_server.redis_url`, or a conftest with
`pytest_plugins = ["tests.redis_server"]`. A missing redis-server fails the tests rather than
skipping them, so CI cannot pass without exercising Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from cluster.processes import free_port, stop_process

INSTALL_HINT = "apt-get install -y redis-server"
START_TIMEOUT_S = 10.0


def _answers_ping(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextmanager
def redis_server() -> Iterator[str]:
    """Runs a throwaway redis-server (no persistence) and yields its URL; stops it on exit."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(f"redis-server is not on PATH; install it with `{INSTALL_HINT}`", pytrace=False)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="capserve-redis-") as workdir:
        log_path = Path(workdir) / "redis.log"
        # No persistence and no files outside the temporary folder: a throwaway server.
        options = {
            "--port": str(port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--dir": workdir,
        }
        command = [executable, *(part for option in options.items() for part in option)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers_ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"redis-server on port {port} did not answer PING within "
                        f"{START_TIMEOUT_S:.0f} s (exit status {process.poll()}); its log:\n"
                        f"{log_path.read_text(errors='replace')}",
                        pytrace=False,
                    )
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(process)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session; tests use their own key prefixes."""
    with redis_server() as url:
        yield url
