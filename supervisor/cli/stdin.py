"""The one stdin pump of ``tug attach``, ``tug run -i`` and ``tug exec -i``: our stdin to a
container's or an exec's, from a thread of its own, and our window size to its terminal.

The thread reads stdin and sends it as stdin frames on the container's raw log stream once
:attr:`StdinPump.raw` is set (``tug attach``, ``run -i``; resizes as control frames, the end of
stdin as an empty stdin frame), else as ``<prefix>stdin`` notifications (``container.exec.stdin``),
so that the main thread keeps reading output while stdin blocks (a full
pipe both ways would deadlock). Writes to the connection from the two threads go through one lock.
Typing the detach keys (on a terminal) wakes the main thread through a pipe, which it also hands
to ``signal.set_wakeup_fd`` for SIGWINCH. Blocking, no async imports, like the rest of the CLI.
"""

from __future__ import annotations

import base64
import json
import os
import threading

from tugwire import errors, frames

from .tty import DetachScanner, window_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tugwire.syncclient import Client, RawStream

STDIN_CHUNK = 48 * 1024  # bytes of stdin per notification (64 KiB once in base64)


class StdinPump:
    """Our stdin to one container (``prefix`` ``container.``, target ``{"id": ...}``) or one exec
    (``container.exec.``, ``{"exec_id": ...}``), and resizes of its terminal.

    ``close_on_eof``: at the end of our stdin, close the other side's (``<prefix>close_stdin``).
    The target may be given at :meth:`start` when it is not known before (an exec's id).
    """

    def __init__(
        self,
        client: Client,
        prefix: str,
        *,
        target: dict[str, Any] | None = None,
        detach_keys: bytes | None = None,
        close_on_eof: bool = True,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.target = target
        self.close_on_eof = close_on_eof
        self.scanner = DetachScanner(detach_keys) if detach_keys else None
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.detached = False
        self.raw: RawStream | None = None  # the container's raw stream, when input goes there

    def __repr__(self) -> str:
        return f"<StdinPump {self.prefix} {self.target} detached={self.detached}>"

    def close(self) -> None:
        """Close the wakeup pipe (the thread, a daemon, may still be blocked reading stdin)."""
        os.close(self.wake_r)
        os.close(self.wake_w)

    def notify(self, what: str, params: dict[str, Any]) -> None:
        """Send the notification ``<prefix><what>`` for the target (under the lock)."""
        with self.lock:
            if self.raw is None:
                self.client.notify(self.prefix + what, {**(self.target or {}), **params})
            elif what == "resize":
                size = {"resize": [params["rows"], params["cols"]]}
                self.raw.send(frames.CONTROL, json.dumps(size).encode())
            else:
                self.raw.send(frames.STDIN, params.get("bytes", b""))

    def start(self, fd: int | None, target: dict[str, Any] | None = None) -> None:
        """Start sending ``fd`` (if not None) to the target's stdin, in a daemon thread."""
        if target is not None:
            self.target = target
        if fd is not None:
            threading.Thread(target=self._feed, args=(fd,), daemon=True).start()

    def woken(self) -> bytes:
        """What woke the main thread (signal numbers, ``d`` for the detach keys), drained."""
        try:
            return os.read(self.wake_r, 256)
        except BlockingIOError:
            return b""

    def resize(self, fd: int) -> None:
        """Send the window size of the terminal ``fd``, once the target is known."""
        if self.target is not None:
            rows, cols = window_size(fd)
            self.notify("resize", {"rows": rows, "cols": cols})

    def _feed(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, STDIN_CHUNK)
                if not data:
                    break
                detach = False
                if self.scanner is not None:
                    data, detach = self.scanner.feed(data)
                if data and self.raw is not None:
                    self.notify("stdin", {"bytes": data})
                elif data:
                    self.notify("stdin", {"data": base64.b64encode(data).decode()})
                if detach:
                    self.detached = True
                    os.write(self.wake_w, b"d")
                    return
            if self.close_on_eof:
                self.notify("close_stdin", {})
        except (OSError, errors.TugError):
            pass  # the container, the exec or the connection has ended: the main thread reports it
