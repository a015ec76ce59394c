"""Failpoints: named points in tugd's code where a test can make tugd die (``kill -9``) or fail.

Armed once, at start, from the ``TUGD_FAILPOINTS`` environment variable (then removed from the
environment, so that nothing tugd starts inherits it)::

    TUGD_FAILPOINTS="container.create.after_db=kill;container.start.after_launch=2*kill"

Each entry is ``NAME=[COUNT*]ACTION``: ``kill`` sends SIGKILL to tugd itself (a crash at that very
point: no ``finally``, no flush); ``error`` raises :class:`tugwire.errors.Internal`; ``stop``
sends SIGSTOP to tugd itself (frozen at that very point until the test sends SIGCONT: the time
to kill a client, tug-cri, whose call tugd is in the middle of); ``COUNT*``
lets the first COUNT-1 passes through and acts on the COUNT-th. The names are listed in
:data:`POINTS`; an unknown name or action stops tugd at start (a test that arms a point that does
not exist must not silently pass).

Disarmed (the normal case), :func:`failpoint` costs one dict lookup on an empty dict.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from tugwire.errors import Internal

log = logging.getLogger("tugboat.failpoints")

ENV = "TUGD_FAILPOINTS"

# Every point placed in the code, with where it is (docs/reliability.md lists what each proves).
POINTS = {
    "container.create.after_bundle": "the bundle (config.json, dirs) written, nothing in the store",
    "container.create.after_db": "the container recorded, before its create event",
    "container.start.after_mount": "the overlay mounted and the shim dir made, no shim yet",
    "container.start.after_network": "the network namespace wired (veths, addresses), no shim yet",
    "network.setup.after_netns": "the namespace made, its veths not yet (in the wiring thread)",
    "container.start.after_launch": "the shim runs the container, the store still says created",
    "container.stop.after_signal": "the stop signal sent, the exit not yet recorded",
    "container.exit.before_record": "the shim reported an exit that is not in the store yet",
    "pod.create.after_namespaces": "the pod's namespaces pinned (and its infra started), no network yet",
    "pod.create.after_network": "the pod's namespaces pinned and wired, its record still creating",
    "pod.cni.add.after_plugin": "a plugin of the pod's CNI chain added, the chain's result not cached",
    "pod.stop.after_unmount": "the pod's network released, namespaces unmounted, still recorded ready",
    "pod.remove.after_dir": "the pod's directory removed, its record not yet",
    "container.exit.after_record": "the exit recorded, the task not yet released (shim, mount)",
    "container.delete.after_release": "the row still there (its task released at exit, unless auto-removed)",
    "container.delete.after_db": "the row deleted; task (auto-remove), mount, addresses, bundle still there",
    "container.remove.after_release": "a removal's deferred half: task, mount gone; addresses, bundle not",
    "image.ingest.after_fetch": "a pull or load has every blob, layers maybe mid-unpack, nothing recorded",
    "image.ingest.after_unpack": "the snapshots unpacked, the image not recorded",
}
ACTIONS = ("kill", "error", "stop")


@dataclass
class _Armed:
    count: int  # passes left, this one included, before it acts
    action: str


_armed: dict[str, _Armed] = {}


class FailpointError(Exception):
    """A malformed ``TUGD_FAILPOINTS``."""


def parse(spec: str) -> dict[str, tuple[int, str]]:
    """``NAME=[COUNT*]ACTION;...`` -> {name: (count, action)}; raises FailpointError."""
    out: dict[str, tuple[int, str]] = {}
    for item in spec.replace(",", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, rest = item.partition("=")
        name, rest = name.strip(), rest.strip()
        if not sep or name not in POINTS:
            raise FailpointError(f"unknown failpoint {name!r} (known: {', '.join(sorted(POINTS))})")
        count_text, star, action = rest.rpartition("*")
        if not star:
            count_text, action = "1", rest
        if action not in ACTIONS:
            raise FailpointError(f"unknown failpoint action {action!r} for {name} (want kill, error or stop)")
        if not count_text.isdigit() or int(count_text) < 1:
            raise FailpointError(f"bad failpoint count {count_text!r} for {name}")
        out[name] = (int(count_text), action)
    return out


def arm_from_environment() -> None:
    """Read and remove ``TUGD_FAILPOINTS``; called once by tugd's entry point."""
    spec = os.environ.pop(ENV, "")
    _armed.clear()
    for name, (count, action) in parse(spec).items():
        _armed[name] = _Armed(count, action)
        log.warning("failpoint armed: %s=%d*%s", name, count, action)


def failpoint(name: str) -> None:
    """Act here if ``name`` is armed (see the module's docstring); else nothing."""
    entry = _armed.get(name)
    if entry is None:
        return
    entry.count -= 1
    if entry.count > 0:
        return
    del _armed[name]
    if entry.action == "kill":
        log.warning("failpoint %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
    if entry.action == "stop":
        log.warning("failpoint %s: SIGSTOP", name)
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    raise Internal(f"failpoint {name}")
