"""The client's terminal for ``-t``: raw mode, its window size, and the detach keys.

Blocking and synchronous like the rest of the CLI. The detach keys are handled here, on the
client (as docker does): the bytes of the sequence are held back while they match it, forwarded
if the sequence breaks off, and the whole sequence detaches.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager

from tugwire import errors

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_CTRL = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """``ctrl-p,ctrl-q`` (docker's syntax: ``ctrl-<a-z @ [ \\ ] ^ _>`` or one character, comma
    separated) as the bytes a terminal sends for them."""
    out = bytearray()
    for key in spec.split(","):
        low = key.lower()
        if low.startswith("ctrl-") and len(key) == 6:
            c = low[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
                continue
            if c in _CTRL:
                out.append(_CTRL[c])
                continue
        elif len(key) == 1 and key.isascii():
            out.append(ord(key))
            continue
        raise errors.InvalidArgument(f"invalid detach keys {spec!r}: bad key {key!r}")
    if not out:
        raise errors.InvalidArgument("invalid detach keys: empty")
    return bytes(out)


class DetachScanner:
    """Finds the detach sequence in the input stream."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self._held = 0  # how many bytes of the sequence have been seen, held back

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(the bytes to forward, whether the sequence is complete: detach)."""
        out = bytearray()
        for b in data:
            if b == self.keys[self._held]:
                self._held += 1
                if self._held == len(self.keys):
                    self._held = 0
                    return bytes(out), True
                continue
            if self._held:
                out += self.keys[: self._held]  # the sequence broke off: what was held goes on
                self._held = 0
                if b == self.keys[0]:
                    self._held = 1
                    continue
            out.append(b)
        return bytes(out), False


def window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal ``fd``; 24x80 when it is none."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 24, 80
    return (rows or 24), (cols or 80)


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal ``fd`` in raw mode for the block (if it is a terminal), restored after."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: what was typed ahead goes to the container
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
