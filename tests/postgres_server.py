"""A real, throwaway PostgreSQL server on 127.0.0.1 for store tests: `postgres_server()`.

conftest.py turns it into the session fixture `postgres_url`. Missing binaries fail the tests
rather than skipping them, so CI cannot pass without exercising PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from cluster.processes import free_port

INSTALL_HINT = "make services"
START_TIMEOUT_S = 30
# Debian's postgresql package keeps its binaries off PATH, one folder per major version.
INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"


def _bin_dir() -> Path:
    """The newest installed version's binaries."""
    initdbs = [Path(path) for path in glob.glob(INITDB_GLOB)]
    if not initdbs:
        pytest.fail(
            f"no PostgreSQL server binaries ({INITDB_GLOB}); install them with `{INSTALL_HINT}`",
            pytrace=False,
        )
    return max(initdbs, key=lambda path: int(path.parents[1].name)).parent


def _accepts_connections(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@contextmanager
def postgres_server() -> Iterator[str]:
    """Runs a throwaway PostgreSQL server (trust auth, no fsync) and yields the URL of its
    `postgres` database; stops it and deletes its files on exit."""
    bin_dir = _bin_dir()
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="capserve-postgres-"))
    # initdb refuses to run as root, so root runs the server as Debian's `postgres` user.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data_dir = workdir / "data"
    log_path = workdir / "postgres.log"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data_dir)]
    try:
        if as_user:
            shutil.chown(workdir, "postgres", "postgres")
        initdb = subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres"]
            + ["--auth=trust", "--no-sync", "--no-locale", "--encoding=UTF8"],
            check=False,
            capture_output=True,
            text=True,
        )
        if initdb.returncode != 0:
            pytest.fail(f"initdb failed:\n{initdb.stdout}{initdb.stderr}", pytrace=False)
        # Durability is of no use to a server deleted after the tests; speed is.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        started_at = time.monotonic()
        start = subprocess.run(
            [*pg_ctl, "-l", str(log_path), "-o", options, "-w", "-t", str(START_TIMEOUT_S)]
            + ["start"],
            check=False,
            capture_output=True,
            text=True,
        )
        try:
            if start.returncode != 0 or not _accepts_connections(url):
                log = log_path.read_text(errors="replace") if log_path.exists() else ""
                pytest.fail(
                    f"PostgreSQL on port {port} did not accept connections within "
                    f"{time.monotonic() - started_at:.0f} s (pg_ctl exit status "
                    f"{start.returncode}: {start.stderr.strip()}); its log:\n{log}",
                    pytrace=False,
                )
            yield url
        finally:
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, capture_output=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
