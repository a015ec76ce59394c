"""Fixtures of the reliability suite (issue 8): a runc that misbehaves on request, failpoints, and
the checks that nothing leaked (processes, mounts, runc state, shim dirs, bundles).

``TUG_RELIABILITY_SCALE`` (a float, default 1) multiplies the counts and durations of the long
tests: 1 keeps the suite within its CI budget; the figures of the issue need about 10 to 20 (see
docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from ..conftest import Daemon, _mounts_under, _pids_mentioning
from ..waiting import WaitTimeout, wait_gone, wait_until

__all__ = ["wait_gone", "wait_until"]  # the suite's one wait helper, for the tests here

HERE = os.path.dirname(os.path.abspath(__file__))
WRAPPER = os.path.join(HERE, "runc-wrapper")


def scale() -> float:
    try:
        value = float(os.environ.get("TUG_RELIABILITY_SCALE", "1"))
    except ValueError:
        value = 1.0
    return max(value, 0.1)


def scaled(n: float, minimum: int = 1) -> int:
    return max(int(n * scale()), minimum)


class RuncFaults:
    """A copy of ``runc-wrapper`` in a temp dir of the test, and its rules (see the script)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.path = os.path.join(base, "runc")
        shutil.copy(WRAPPER, self.path)
        os.chmod(self.path, 0o755)
        self.dir = os.path.join(base, "faults")
        os.mkdir(self.dir)

    def set(self, verb: str, rule: str, *, once: bool = False) -> None:
        name = f"{verb}.once" if once else verb
        tmp = os.path.join(self.dir, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(rule + "\n")
        os.rename(tmp, os.path.join(self.dir, name))

    def clear(self) -> None:
        for name in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, name))

    def calls(self) -> list[str]:
        try:
            with open(os.path.join(self.base, "calls.log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


@pytest.fixture
def runc_faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuncFaults]:
    base = str(tmp_path_factory.mktemp("runcw"))
    faults = RuncFaults(base)
    yield faults
    faults.clear()  # the cleanup of the daemon (after this) must run the real runc


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def crashed(d: Daemon, timeout: float = 30.0) -> None:
    """Wait for a tugd killed by its failpoint (SIGKILL) and forget it."""
    assert d.proc is not None
    code = d.proc.wait(timeout=timeout)
    assert code == -signal.SIGKILL, f"tugd exited {code}, not by its failpoint:\n{d.read_log()[-3000:]}"
    d.proc = None


def leaks(d: Daemon, *, live: set[str] | None = None) -> list[str]:
    """What is on the host for this tugd beyond its containers in ``live`` (ids of containers
    that run): shims, container processes, mounts, runc state, shim dirs, stray bundles. tugd
    and its template are not leaks."""
    live = live or set()
    found: list[str] = []
    own = {d.proc.pid} if d.proc is not None else set()
    for cid in live:
        own.update(container_pids(cid))
        try:
            with open(os.path.join(d.state, "shims", cid, "shim.pid")) as f:
                own.add(int(f.read().strip()))
        except (OSError, ValueError):
            pass
    for pid in _pids_mentioning(d.base):
        if pid in own:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if not cmd.strip():
            continue  # gone between the listing and the read (a zombie has no command line)
        if ppid in own and " template " in cmd and d.proc is not None and ppid == d.proc.pid:
            continue  # tugd's template (the shims it forks name themselves: tug-shim ID)
        found.append(f"process {pid}: {cmd[:160]}")
    found += [f"mount {m}" for m in _mounts_under(d.base) if not any(cid in m for cid in live)]
    found += [f"runc state {e}" for e in _listdir(os.path.join(d.state, "runc")) if e not in live]
    found += [f"shim dir {e}" for e in _listdir(os.path.join(d.state, "shims")) if e not in live]
    return found


def container_pids(cid: str) -> list[int]:
    """The pids in the container's cgroup (what really runs there), empty if it has none."""
    for path in (f"/sys/fs/cgroup/pids/tugboat/{cid}", f"/sys/fs/cgroup/tugboat/{cid}"):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                return sorted(int(x) for x in f.read().split())
        except OSError:
            continue
    return []


def bundles(d: Daemon) -> list[str]:
    return sorted(e for e in _listdir(os.path.join(d.root, "containers")) if not e.startswith("."))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def runc_list(d: Daemon) -> list[str]:
    out = subprocess.run(
        ["runc", "--root", os.path.join(d.state, "runc"), "list", "-q"], capture_output=True, check=False
    )
    return out.stdout.decode().split()


def settled_leaks(d: Daemon, *, live: set[str] | None = None, timeout: float = 20.0) -> list[str]:
    """:func:`leaks` once the asynchronous release of exited containers (shim delete, unmount) has
    had up to ``timeout`` seconds to finish: [] as soon as nothing is left, else what is."""
    with contextlib.suppress(WaitTimeout):  # what is left after ``timeout`` is the answer
        wait_until(lambda: not leaks(d, live=live), timeout, "the release of exited containers")
    return leaks(d, live=live)
