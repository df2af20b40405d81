"""The processes a load test starts, and what they use: a name for each from its Ray or vLLM
process title, the role it plays on the request path, and its CPU time over a measured window
(the soak samples their memory by the same roles).

Only descendants of a given process (this one by default) are looked at: Ray's GCS and raylet
start from `ray.init`, the workers from the raylet, vLLM's engine cores from the replicas, and
`vllm serve` from the benchmark. Other sessions' Ray processes on the same machine are not
descendants, so they are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

REPLICA_PREFIX = "ray::ServeReplica:"
VLLM_PREFIX = "VLLM::"
RAY_SYSTEM = "Ray system"
TOTAL = "total"
# Ray's daemons and the Python scripts it starts beside them (named by `process_name`).
RAY_SYSTEM_NAMES = frozenset(
    {"gcs_server", "raylet", "monitor.py", "dashboard.py", "log_monitor.py"}
)
ROLES = {
    "ray::ServeController": "Serve controller",
    "ray::ProxyActor": "Serve proxy",
    # With RAY_SERVE_ENABLE_HA_PROXY=1 this actor runs the `haproxy` binary, which takes the
    # HTTP traffic; the ProxyActor stays as the head node's fallback.
    "ray::HAProxyManager": "HAProxy manager",
    "haproxy": "HAProxy",
    "python -m vllm.entrypoints.openai.api_server": "vllm serve API server",
}
# Started beside vLLM's engine core by the `spawn` start method; named by its truncated `-c` code.
RESOURCE_TRACKER = "python -c from multiprocessing.resource_tracker"


def process_name(process: psutil.Process) -> str:
    """What the process is: its Ray or vLLM process title (`ray::ServeReplica:capserve:Ingress`,
    `VLLM::EngineCore`), the script or module a Python process runs, or the executable's name."""
    command = process.cmdline()
    title = command[0] if command else ""
    if title.startswith(("ray::", VLLM_PREFIX)):
        # Ray appends the method running now (`ray::ServeController.listen_for_change`).
        return title.split(".")[0]
    if "python" not in Path(title).name:
        return process.name()
    for flag in ("-m", "-c"):
        if flag in command[1:-1]:
            return f"python {flag} {command[command.index(flag) + 1][:40]}"
    scripts = [argument for argument in command[1:] if not argument.startswith("-")]
    return Path(scripts[0]).name if scripts else process.name()


def descendants(root: psutil.Process | None = None) -> list[psutil.Process]:
    """Every process `root` (this one by default) started, directly or not."""
    return (root or psutil.Process()).children(recursive=True)


def role(name: str, owner: str | None) -> str:
    """The row a process's CPU time is reported under. A Serve replica is `<app>:<deployment>`;
    a vLLM process keeps its own title, with the replica it serves (`owner`) when there is one,
    since two apps' engines can run side by side; Ray's own daemons and idle workers are one row."""
    if name.startswith(REPLICA_PREFIX):
        return name.removeprefix(REPLICA_PREFIX)
    if name.startswith(VLLM_PREFIX):
        return f"{name} ({owner})" if owner else name
    if name in ROLES:
        return ROLES[name]
    if name.startswith(RESOURCE_TRACKER):
        return "multiprocessing resource tracker"
    if name in RAY_SYSTEM_NAMES or name.startswith("ray::"):
        return RAY_SYSTEM
    return name


def replica_owner(pid: int, names: Mapping[int, str], parents: Mapping[int, int]) -> str | None:
    """The Serve replica (`<app>:<deployment>`) that `pid` descends from, if any."""
    ancestor = parents.get(pid)
    while ancestor is not None and ancestor in names:
        if names[ancestor].startswith(REPLICA_PREFIX):
            return names[ancestor].removeprefix(REPLICA_PREFIX)
        ancestor = parents.get(ancestor)
    return None


def roles(names: Mapping[int, str], parents: Mapping[int, int]) -> dict[int, str]:
    """`role` of every process in `names` (pid -> `process_name`), `parents` being pid -> ppid."""
    return {pid: role(name, replica_owner(pid, names, parents)) for pid, name in names.items()}


# A process of a run by (pid, create time), so a pid reused by a later process is not taken for it.
ProcessKey = tuple[int, float]


@dataclass(frozen=True)
class RoledProcess:
    process: psutil.Process
    name: str
    role: str


def processes_by_role(
    root: psutil.Process | None = None, root_role: str | None = None
) -> dict[ProcessKey, RoledProcess]:
    """Every live descendant of `root` (this process by default) with its `role`; `root` itself
    too, under `root_role`, when one is given (the load generator is left out)."""
    root = root or psutil.Process()
    processes = descendants(root) + ([root] if root_role else [])
    names: dict[int, str] = {}
    parents: dict[int, int] = {}
    found: dict[int, tuple[psutil.Process, float]] = {}  # pid -> (process, create time)
    for process in processes:
        try:
            with process.oneshot():
                names[process.pid] = (
                    root_role if root_role and process == root else process_name(process)
                )
                parents[process.pid] = process.ppid()
                found[process.pid] = (process, process.create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            names.pop(process.pid, None)
    return {
        (pid, found[pid][1]): RoledProcess(found[pid][0], names[pid], process_role)
        for pid, process_role in roles(names, parents).items()
    }


@dataclass(frozen=True)
class CpuSample:
    role: str
    cpu_s: float  # user + system, of the process itself (its children are sampled on their own)


CpuSnapshot = dict[ProcessKey, CpuSample]


def cpu_snapshot(root: psutil.Process | None = None, root_role: str | None = None) -> CpuSnapshot:
    """The CPU time so far of every process `processes_by_role` finds."""
    snapshot: CpuSnapshot = {}
    for key, found in processes_by_role(root, root_role).items():
        try:
            times = found.process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        snapshot[key] = CpuSample(found.role, times.user + times.system)
    return snapshot


def cpu_ms_by_role(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU milliseconds each role spent between two snapshots. A process that started in between
    counts from zero; one that ended in between is missing from `after`, and its time with it."""
    spent: defaultdict[str, float] = defaultdict(float)
    for key, sample in after.items():
        start = before[key].cpu_s if key in before else 0.0
        spent[sample.role] += (sample.cpu_s - start) * 1000
    return dict(spent)


def per_unit(cpu_ms: Mapping[str, float], units: int) -> dict[str, float]:
    """CPU milliseconds per request (or per text) by role, plus the sum of all under TOTAL;
    empty when nothing was counted."""
    if units <= 0 or not cpu_ms:
        return {}
    per_role = {name: round(ms / units, 2) for name, ms in cpu_ms.items()}
    return per_role | {TOTAL: round(sum(cpu_ms.values()) / units, 2)}
