"""What multi-stage builds need beside the step executor: another stage's root filesystem (or
an image's), mounted for ``COPY --from`` to read as it reads a build context.

The root is an overlay of the stage's lower dirs (its layers over its base image's snapshots,
the same stack a RUN step gets) with a throwaway upper dir: reading it sees whiteouts and
opaque directories as the stage's containers do, and nothing written there reaches the stage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import anyio

from tugwire import fsutil

from .. import mounts


@contextlib.asynccontextmanager
async def mounted_rootfs(lowers: list[str], work: str) -> AsyncIterator[str]:
    """Mount the stack ``lowers`` (top first; empty for ``scratch``) under ``work`` (a fresh
    path of the build's work dir) and give the root's path; unmounted and removed on the way
    out, however the body ends."""
    root = os.path.join(work, "root")
    upper = os.path.join(work, "upper")
    overlay_work = os.path.join(work, "work")
    empty = os.path.join(work, "empty")
    for path in (work, root, upper, overlay_work, empty):
        os.mkdir(path, 0o700 if path in (work, overlay_work) else 0o755)
    try:
        await anyio.to_thread.run_sync(mounts.mount_overlay, lowers or [empty], upper, overlay_work, root)
        try:
            yield root
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(mounts.unmount, root)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(fsutil.remove_tree, work)
