import sys
from pathlib import Path

import pytest

from cluster.processes import ServerNotReady, running_server


def test_a_server_that_exits_before_ready_is_named_with_its_log(tmp_path: Path):
    command = [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"]
    with (
        pytest.raises(ServerNotReady, match=r"(?s)toy server was not ready.*status 3.*bad flag"),
        running_server(command, tmp_path / "log", lambda: False, "toy server", timeout_s=30),
    ):
        pass


def test_a_ready_server_runs_inside_and_is_stopped_after(tmp_path: Path):
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    with running_server(command, tmp_path / "log", lambda: True, "sleeper", timeout_s=5) as process:
        assert process.poll() is None
    assert process.poll() is not None
