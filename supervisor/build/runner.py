"""A RUN step's container: the same task lifecycle as any container (:class:`supervisor.task.Task`:
bundle, mount, shim config, launch, wait, kill, release), on an overlay whose upper dir the builder
owns, with the shim's ``task.logs`` streamed to the client.

The container is never recorded in the store (``tug ps`` does not show it): it lives exactly as
long as :func:`run_step`, which always removes it -- shim, runc state, mount, bundle -- on success,
failure and cancellation alike. Its bundle is ``containers/<id>/`` and its shim dir
``shims/<id>/``, like any container's, so that a tugd that dies in the middle of a build finds
them at its next start as a bundle and a shim that nothing owns, and removes them
(``Containers.recover``, :meth:`Task.remove_orphan`).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from tugwire import crilog, fsutil, shimapi
from tugwire.errors import Unavailable
from tugwire.shimapi import LogsParams

from .. import shims, spec
from ..config import Config
from ..records import ContainerSettings
from ..task import Task

log = logging.getLogger("tugboat.build")

CLEANUP_GRACE = 30.0

Output = Callable[[str, bytes], Awaitable[None]]


async def run_step(
    cfg: Config,
    launcher: shims.ShimLauncher,
    *,
    args: list[str],
    env: list[str],
    workdir: str,
    user: str,
    lower: list[str],
    upper: str,
    work: str,
    on_output: Output,
    label: str = "",
    network: str = "none",
) -> int:
    """Run ``args`` in a container whose root is ``lower`` (top first) under ``upper``; stream
    its output to ``on_output(stream, data)``; return its exit status (128+N if killed by signal
    N). ``upper`` keeps the step's changes; everything else is gone when this returns."""
    task = Task(cfg, secrets.token_hex(32))
    config = task.shim_config(
        name=f"build-{task.id[:12]}",
        image=label,
        log_max_size=shimapi.DEFAULT_LOG_MAX_SIZE,
        log_max_files=shimapi.DEFAULT_LOG_MAX_FILES,
    )
    settings = ContainerSettings(image=label, entrypoint=[], cmd=args, workdir=workdir, user=user)
    oci = spec.build(task.id, settings, {"Env": env}, task.rootfs, lower, _network(network, lower))
    launched = False
    task.write_bundle(oci, own_upper=False)
    try:
        await task.mount(lower, upper, work)
        # The same birth as any container's: a shim that died or went silent is cleaned up after.
        await task.launch(launcher, config)
        launched = True
        await _stream_output(task.shim, on_output)
        record = await task.wait()
        if record is None:
            raise Unavailable(f"the shim of RUN step {task.id[:12]} went away without recording its exit")
        return record.exit_code
    finally:
        with anyio.move_on_after(CLEANUP_GRACE, shield=True):
            if launched:
                await task.kill()
            await task.release(CLEANUP_GRACE)
        fsutil.remove_tree(task.shim_dir)
        task.remove_bundle()


def _network(mode: str, lower: list[str]) -> dict[str, Any] | None:
    """``none``: a network namespace of its own with only loopback (runc makes it). ``host``:
    the host's, with the host's ``/etc/resolv.conf`` and ``/etc/hosts`` mounted read-only over
    the image's own (only where the image has the file: a mount point runc had to create would
    end up in the step's layer)."""
    if mode != "host":
        return None
    binds = []
    for name in ("resolv.conf", "hosts"):
        host_file = os.path.join("/etc", name)
        in_image = next(
            (os.path.join(d, "etc", name) for d in lower if os.path.lexists(os.path.join(d, "etc", name))),
            None,
        )
        if (
            in_image
            and os.path.isfile(in_image)
            and not os.path.islink(in_image)
            and os.path.isfile(host_file)
        ):
            binds.append(
                {"destination": host_file, "type": "bind", "source": host_file, "options": ["rbind", "ro"]}
            )
    return {"netns": "", "mounts": binds}


async def _stream_output(shim: shims.ShimClient, on_output: Output) -> None:
    """Follow the container's log through its shim until it has exited and every byte is sent;
    CRI records turned back into the bytes the container wrote."""
    decoder = crilog.LogDecoder()
    async with shim.logs(LogsParams(follow=True)) as stream:
        async for chunk in stream:
            for fd, data in decoder.feed(base64.b64decode(chunk)):
                await on_output("stdout" if fd == 1 else "stderr", data)
        await stream.result()
