"""A real redis-server on 127.0.0.1 for cache tests: `redis_server()` and the `redis_url` fixture.

Test modules take the fixture with `redis_url = redis_server.redis_url`, or a conftest with
`pytest_plugins = ["tests.redis_server"]`. A missing redis-server fails the tests rather than
skipping them, so CI cannot pass without exercising Redis.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from cluster.processes import ServerNotReady, free_port, running_server

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
        ready = running_server(
            command,
            log_path,
            lambda: _answers_ping(port),
            f"redis-server on port {port}",
            START_TIMEOUT_S,
            poll_s=0.05,
        )
        try:
            with ready:
                yield f"redis://127.0.0.1:{port}/0"
        except ServerNotReady as error:
            pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session; tests use their own key prefixes."""
    with redis_server() as url:
        yield url
