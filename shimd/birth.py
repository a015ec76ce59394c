"""How a shim is born: the one place that turns a config into a detached, running shim.

Two doors lead here. ``tug-shim start`` (a cold interpreter per container) and the *template*
(``tug-shim template``): a small process that has imported the shim's code once, called
``gc.freeze()``, and forks a new shim per request, so that a shim starts in about a millisecond
and shares the template's pages copy-on-write instead of paying ~20 MB of private imports.
Either way the shim is double-forked into its own session, is nobody's child but init's (or the
nearest subreaper's), and owns its socket: the template can die and the shims live on.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import signal
import socket
import sys
from typing import Any

from tugwire.shimapi import PID_FILE, SHIM_LOG

PR_SET_PDEATHSIG = 1
MADV_MERGEABLE = 12
MAX_CONFIG = 1 << 16


def default_signals() -> None:
    """The signal dispositions a shim starts with: the defaults. Set in the process that calls
    :func:`birth` (the template, or ``tug-shim start``), once, and inherited: Python's
    ``signal.signal`` runs enum conversions that would cost every shim their pages."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)


def birth(config: dict[str, Any], notify_fd: int, keep_fds: tuple[int, ...] = ()) -> int:
    """Fork a detached shim running ``config``; returns at once in the caller with the pid of the
    intermediate child (already exited or about to, reap it). The shim writes one JSON line to
    ``notify_fd`` when the container is running, or when it failed. Call :func:`default_signals`
    first, once."""
    pid = os.fork()
    if pid:
        return pid
    # Intermediate child: a new session, then fork again so the shim is not a session leader
    # and is re-parented away from whoever asked for it.
    try:
        os.setsid()
        shim = os.fork()
        if shim:
            # At once, before the shim has run a line: a tugd that dies now and starts again
            # finds a live shim in the directory and waits for it, never a second one beside it.
            _write_pid(str(config.get("dir", "")), shim)
            os._exit(0)
        _become_shim(config, notify_fd, keep_fds)
    except BaseException:  # never let a forked child return into the caller's code
        os._exit(70)
    os._exit(0)


def _write_pid(directory: str, pid: int) -> None:
    if not os.path.isabs(directory):
        return
    tmp = os.path.join(directory, f".shim.pid.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(directory, PID_FILE))
    except OSError:
        pass  # the shim writes it again itself


def set_title(*args: str) -> None:
    """Rewrite this process's command line, what ``ps`` and ``/proc/PID/cmdline`` show, to
    ``args``: in place, in the memory of the original argv (its bounds from ``/proc/self/stat``),
    truncated if it does not fit and padded with NULs. A forked shim would otherwise show its
    template's command line. Costs a read of ``/proc/self/stat`` and a memmove (75 µs measured
    on a loaded 2-core host)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    title = b"\0".join(a.encode() for a in args)[: size - 1]
    ctypes.memmove(start, title + b"\0" * (size - len(title)), size)


def _become_shim(config: dict[str, Any], notify_fd: int, keep_fds: tuple[int, ...]) -> None:
    set_title("tug-shim", str(config.get("id", "")))
    os.chdir("/")
    os.umask(0o022)
    directory = str(config.get("dir", "/"))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        logfd = os.open(os.path.join(directory, SHIM_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        logfd = null
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    keep = {0, 1, 2, notify_fd, *keep_fds}
    for fd in (null, logfd):
        if fd not in keep:
            os.close(fd)
    os.set_inheritable(notify_fd, False)
    _close_other_fds(keep)
    code = run_shim(config, notify_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _close_other_fds(keep: set[int]) -> None:
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)


LOG_FORMAT = "%(asctime)s shim[%(process)d] %(levelname)s %(message)s"


def setup_logging() -> None:
    """The shim's log lines go to its stderr (``shim.log``). Set up once, in the template before
    it forks (or by a cold ``tug-shim start``): a handler, a formatter and their locks made in
    every shim would cost each one the pages of every logging function they run."""
    import logging

    if not logging.root.handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def run_shim(config: dict[str, Any], notify_fd: int | None) -> int:
    import logging

    import anyio

    from tugwire.errors import TugError
    from tugwire.shimapi import ShimConfig

    from .server import serve

    setup_logging()
    try:
        cfg = ShimConfig.from_json(config)
    except TugError as exc:
        if notify_fd is not None:
            os.write(notify_fd, json.dumps({"error": exc.to_json()}).encode() + b"\n")
        return 2
    try:
        anyio.run(serve, cfg, notify_fd, backend=cfg.backend)
    except Exception:
        logging.getLogger("tugboat.shim").exception("shim failed")
        return 1
    return 0


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    from .server import prctl

    prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def mark_mergeable() -> int:
    """Offer the template's private writable memory to the kernel's same-page merging (KSM,
    ``madvise(MADV_MERGEABLE)``); the number of mappings marked.

    A shim copies about a thousand of the template's pages (4-5 MiB) by writing to them, mostly
    reference counts that go back to where they were; 20 shims hold about 3,400 distinct page
    contents among their 23,000 copies (``bench/shim_smaps.py``, docs/design.md). When the host
    runs ``ksmd`` (``echo 1 > /sys/kernel/mm/ksm/run``, the host's choice; off by default), it
    merges those copies back into one page each. Without ``ksmd`` this costs nothing. The mark
    is per mapping: the shims inherit it by fork, while ``runc`` and the containers, each a new
    program (exec), never have it, so a container's memory is never merged with anyone's."""
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    marked = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            perms = fields[1]
            name = fields[5] if len(fields) > 5 else ""
            if perms[1] != "w" or perms[3] != "p" or name in ("[vvar]", "[vdso]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if madvise(start, end - start, MADV_MERGEABLE) == 0:
                marked += 1
    return marked


def template_main(sock_path: str, parent_pid: int, backend: str = "asyncio") -> int:
    """Serve shim births on ``sock_path``: one JSON config line in, one shim out.

    The template dies with the tugd that started it (PDEATHSIG), holds no state, and is never the
    parent of a shim (each is double-forked), so killing it loses nothing.
    """
    # Pre-import everything a shim needs, including anyio's backend, which anyio would otherwise
    # import lazily in every child (DESIGN.md measured 3.6 MB vs 8.4 MB PSS per shim for that).
    import importlib

    import anyio

    from . import server

    setup_logging()  # before warm_up: asyncio's logger then caches its level in the template
    importlib.import_module(f"anyio._backends._{backend}")
    anyio.run(server.warm_up, backend=backend)
    default_signals()
    set_pdeathsig()
    if os.getppid() != parent_pid:
        return 0  # the parent died before we could ask to die with it
    srv = server.bind_unix(sock_path)
    gc.collect()
    mark_mergeable()
    gc.freeze()  # every object so far lives in the permanent generation: no CoW from GC passes
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(os.open(os.devnull, os.O_RDWR), 1)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:
                config = _read_config(conn)
            except (OSError, ValueError) as exc:
                with contextlib.suppress(OSError):
                    conn.sendall(
                        json.dumps(
                            {
                                "error": {
                                    "code": -32602,
                                    "message": str(exc),
                                    "data": {"kind": "invalid_params"},
                                }
                            }
                        ).encode()
                        + b"\n"
                    )
                continue
            pid = birth(config, conn.fileno(), keep_fds=())
            # The child closes our listening socket when it closes every other fd.
        os.waitpid(pid, 0)


def _read_config(conn: socket.socket) -> dict[str, Any]:
    conn.settimeout(5)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("no config")
        buf += chunk
        if len(buf) > MAX_CONFIG:
            raise ValueError("config too long")
    conn.settimeout(None)
    obj = json.loads(buf)
    if not isinstance(obj, dict):
        raise ValueError("config must be an object")
    return obj
