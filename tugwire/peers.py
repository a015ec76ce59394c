"""Who may use a Unix socket of Tugboat's: root, and the members of one group, checked with the
peer's own credentials (``SO_PEERCRED`` and ``SO_PEERGROUPS``, what the peer process really holds)
as well as the socket's mode. Shared by every front door (tugd's JSON-RPC socket, the Docker API).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import pwd
import socket
import struct
from dataclasses import dataclass

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not in Python's socket


@dataclass(frozen=True)
class Peer:
    """The credentials of the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Peer:
    """``SO_PEERCRED`` of a connected Unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid, uid, gid)


def peer_groups(sock: socket.socket) -> list[int] | None:
    """The peer's supplementary groups as they were when it connected (SO_PEERGROUPS), or None
    where the kernel cannot tell."""
    size = 256 * 4
    for _ in range(4):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                size *= 8
                continue
            return None
        return list(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return None


def is_allowed(sock: socket.socket, gid: int | None) -> tuple[bool, Peer]:
    """Whether the peer of ``sock`` is root or a member of group ``gid`` (None: root only)."""
    peer = peer_credentials(sock)
    if peer.uid == 0:
        return True, peer
    if gid is not None:
        if peer.gid == gid:
            return True, peer
        groups = peer_groups(sock)
        if groups is not None:
            return gid in groups, peer
        with contextlib.suppress(OSError, KeyError):  # an old kernel: the group database instead
            if pwd.getpwuid(peer.uid).pw_name in grp.getgrgid(gid).gr_mem:
                return True, peer
    return False, peer


def who_may(gid: int | None) -> str:
    """``root`` or ``root and the members of group NAME``, for refusal messages."""
    if gid is None:
        return "root"
    try:
        return f"root and the members of group {grp.getgrgid(gid).gr_name}"
    except KeyError:
        return f"root and the members of group {gid}"


def group_id(name: str) -> int | None:
    """The id of group ``name``, None if there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None
