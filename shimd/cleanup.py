"""``tug-shim delete``: clean up after a shim that is gone (containerd's ``shim delete``).

Kills whatever is left of the container, removes the runtime's state, and reports the exit record
if the shim had written one, else none: an exit code is never guessed.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio

from tugwire.errors import TugError
from tugwire.shimapi import PID_FILE, RUNC_LOG, ExitRecord

from .process import pid_alive
from .reaper import Reaper
from .runc import Runc, classify


def delete(directory: str, cid: str, runtime: str, runtime_root: str) -> dict[str, Any]:
    return anyio.run(_delete, directory, cid, runtime, runtime_root)


async def _delete(directory: str, cid: str, runtime: str, runtime_root: str) -> dict[str, Any]:
    shim_pid = _read_int(os.path.join(directory, PID_FILE))
    if shim_pid and pid_alive(shim_pid) and _is_shim(shim_pid):
        # A live but unresponsive shim: it would fight us for the container. Stop it first.
        os.kill(shim_pid, signal.SIGKILL)
    reaper = Reaper()
    errors: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(reaper.run)
        runc = Runc(reaper, runtime, runtime_root, os.path.join(directory, RUNC_LOG), timeout=30)
        try:
            await runc.kill(cid, int(signal.SIGKILL), all_processes=True)
        except TugError:
            pass  # already stopped, or never created
        try:
            await runc.delete(cid, force=True)
        except TugError as exc:
            err = classify(exc)
            if err.kind != "not_found":
                errors.append(err.message)
        tg.cancel_scope.cancel()
    record = ExitRecord.read(directory)
    return {"exit": record.to_json() if record else None, "errors": errors}


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_shim(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"shim" in f.read()
    except OSError:
        return False
