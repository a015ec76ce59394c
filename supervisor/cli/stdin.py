"""The one stdin pump of ``tug attach``, ``tug run -i`` and ``tug exec -i``: our stdin to a
container's or an exec's, from a thread of its own, and our window size to its terminal.

The thread reads stdin and sends it as stdin frames on the raw stream of the container's log or
of the exec (:attr:`StdinPump.raw`, docs/api.md "Raw streams"; resizes as control frames, the
end of stdin as an empty stdin frame), so that the main thread keeps reading output while stdin
blocks (a full pipe both ways would deadlock). Writes to the connection from the two threads go
through one lock. Typing the detach keys (on a terminal) wakes the main thread through a pipe,
which it also hands to ``signal.set_wakeup_fd`` for SIGWINCH. Blocking, no async imports, like
the rest of the CLI.
"""

from __future__ import annotations

import json
import os
import threading

from tugwire import errors, frames

from .tty import DetachScanner, window_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from tugwire.syncclient import RawStream

STDIN_CHUNK = 64 * 1024  # bytes of stdin per frame


class StdinPump:
    """Our stdin to the raw stream :attr:`raw` (set once it is open), and resizes of its
    terminal. ``close_on_eof``: at the end of our stdin, close the other side's (an empty stdin
    frame)."""

    def __init__(self, *, detach_keys: bytes | None = None, close_on_eof: bool = True) -> None:
        self.close_on_eof = close_on_eof
        self.scanner = DetachScanner(detach_keys) if detach_keys else None
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.detached = False
        self.raw: RawStream | None = None  # the stream our input goes to

    def __repr__(self) -> str:
        return f"<StdinPump raw={self.raw is not None} detached={self.detached}>"

    def close(self) -> None:
        """Close the wakeup pipe (the thread, a daemon, may still be blocked reading stdin)."""
        os.close(self.wake_r)
        os.close(self.wake_w)

    def send(self, kind: int, data: bytes) -> None:
        """One frame on the raw stream (under the lock)."""
        with self.lock:
            if self.raw is not None:
                self.raw.send(kind, data)

    def start(self, fd: int | None) -> None:
        """Start sending ``fd`` (if not None) to the other side's stdin, in a daemon thread."""
        if fd is not None:
            threading.Thread(target=self._feed, args=(fd,), daemon=True).start()

    def woken(self) -> bytes:
        """What woke the main thread (signal numbers, ``d`` for the detach keys), drained."""
        try:
            return os.read(self.wake_r, 256)
        except BlockingIOError:
            return b""

    def resize(self, fd: int) -> None:
        """Send the window size of the terminal ``fd``."""
        rows, cols = window_size(fd)
        self.send(frames.CONTROL, json.dumps({"resize": [rows, cols]}).encode())

    def _feed(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, STDIN_CHUNK)
                if not data:
                    break
                detach = False
                if self.scanner is not None:
                    data, detach = self.scanner.feed(data)
                if data:
                    self.send(frames.STDIN, data)
                if detach:
                    self.detached = True
                    os.write(self.wake_w, b"d")
                    return
            if self.close_on_eof:
                self.send(frames.STDIN, b"")
        except (OSError, errors.TugError):
            pass  # the container, the exec or the connection has ended: the main thread reports it
