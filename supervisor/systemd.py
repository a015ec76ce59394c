"""systemd integration without libsystemd: sd_notify, the watchdog, socket activation.

The protocols are small and stable (see sd_notify(3), sd_watchdog_enabled(3), sd_listen_fds(3)):

* ``NOTIFY_SOCKET`` names a datagram socket (a path, or ``@name`` in the abstract namespace) to
  which we send ``READY=1``, ``STATUS=...``, ``STOPPING=1`` and ``WATCHDOG=1``.
* ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, if set, must be ours) asks for ``WATCHDOG=1`` at least
  that often; we send it at half the interval from a task on the event loop, so a loop that is
  stuck stops the pings and systemd restarts tugd (the containers keep running).
* ``LISTEN_PID`` (ours), ``LISTEN_FDS`` (n) and ``LISTEN_FDNAMES`` (``a:b:...``) pass listening
  sockets as fds 3 .. 3+n-1.

All of these are read once at start and removed from the environment (as sd_notify's
``unset_environment`` does): the shim template, the shims and runc must not inherit them. runc
in particular treats ``NOTIFY_SOCKET`` as a request to proxy the container's own notifications.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Callable, MutableMapping

import anyio

log = logging.getLogger("tugboat.systemd")

LISTEN_FDS_START = 3
# The names under which the API socket may be passed: the socket unit's FileDescriptorName=
# (``tugd.sock`` in systemd/tugd.socket), or systemd's default, the socket unit's own name.
API_FD_NAMES = ("tugd.sock", "tugd.socket", "api")


class Notifier:
    """Sends sd_notify messages to the socket systemd (or a test) gave us; a no-op without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self.stopping = False

    def __repr__(self) -> str:
        return f"<Notifier {self.address!r} watchdog_usec={self.watchdog_usec}>"

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC``/``WATCHDOG_PID``, and remove them."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec_text = env.pop("WATCHDOG_USEC", None)
        pid_text = env.pop("WATCHDOG_PID", None)
        usec: int | None = None
        if usec_text:
            try:
                usec = int(usec_text)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not a number", usec_text)
            if pid_text and pid_text != str(os.getpid()):
                usec = None  # meant for another process (our parent, say)
            if usec is not None and usec <= 0:
                usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one datagram; returns whether it went. Never raises: systemd being away must
        not take tugd down."""
        if self.address is None:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify %r to %s failed: %s", message, self.address, exc)
            return False
        return True

    def status(self, text: str) -> None:
        """``STATUS=`` with one line of text."""
        self.notify("STATUS=" + " ".join(text.split()))

    def stopping_now(self) -> None:
        """``STOPPING=1``, once."""
        if not self.stopping:
            self.stopping = True
            self.notify("STOPPING=1")

    async def run_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` until cancelled (returns at once
        when no watchdog was asked for)."""
        if self.watchdog_usec is None or self.address is None:
            return
        interval = self.watchdog_usec / 2_000_000
        log.info("systemd watchdog: pinging every %.3f s", interval)
        while True:
            self.notify("WATCHDOG=1")
            await anyio.sleep(interval)

    async def run_status(
        self, summary: Callable[[], str], changed: Callable[[], anyio.Event], sent: str = ""
    ) -> None:
        """Keep ``STATUS=`` up to date: after each change (``changed()`` returns an event set on
        the next one), send ``summary()`` if it differs from the last one sent (``sent``)."""
        if self.address is None:
            return
        last = sent
        while True:
            text = summary()
            if text != last:
                self.status(text)
                last = text
            await changed().wait()
            await anyio.sleep(0.05)  # coalesce a burst of changes into one message


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[int, str]]:
    """The sockets systemd passed us, as ``(fd, name)``, and remove ``LISTEN_*`` from the
    environment. Empty unless ``LISTEN_PID`` is our pid. Each fd is made close-on-exec, so that
    no child (template, shim, runc) holds our listening socket open."""
    env = os.environ if environ is None else environ
    pid_text = env.pop("LISTEN_PID", None)
    count_text = env.pop("LISTEN_FDS", None)
    names_text = env.pop("LISTEN_FDNAMES", None)
    if not pid_text or not count_text:
        return []
    try:
        if int(pid_text) != os.getpid():
            return []
        count = int(count_text)
    except ValueError:
        log.warning("ignoring LISTEN_PID=%r LISTEN_FDS=%r: not numbers", pid_text, count_text)
        return []
    names = names_text.split(":") if names_text else []
    out = []
    for i in range(max(count, 0)):
        fd = LISTEN_FDS_START + i
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        out.append((fd, names[i] if i < len(names) else "unknown"))
    return out


class ActivationError(Exception):
    """The sockets passed by systemd are not usable as tugd's API socket."""


def api_socket(fds: list[tuple[int, str]]) -> socket.socket | None:
    """The listening Unix stream socket to serve the API on, among the passed ones: the one
    named in ``API_FD_NAMES``, else the only one. None if nothing was passed."""
    if not fds:
        return None
    named = [fd for fd, name in fds if name in API_FD_NAMES]
    if named:
        fd = named[0]
    elif len(fds) == 1:
        fd = fds[0][0]
    else:
        raise ActivationError(
            f"systemd passed {len(fds)} sockets ({', '.join(n for _, n in fds)}) and none is named "
            f"{' or '.join(API_FD_NAMES)} (FileDescriptorName= in the socket unit)"
        )
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise ActivationError(f"fd {fd} passed by systemd is not a socket")
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ActivationError(f"fd {fd} passed by systemd is not a Unix stream socket (ListenStream=/path)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ActivationError(f"fd {fd} passed by systemd is not listening")
    return sock
