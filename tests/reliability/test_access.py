"""Who may talk to tugd: root, and the members of its ``--group``; checked with the peer's
credentials (SO_PEERCRED, SO_PEERGROUPS) as well as the socket's mode. A shim's socket is root's
only. Tested with a real unprivileged user, created for the test and removed after."""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ..conftest import TUG, needs_root, needs_runc
from ..helpers import start

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]

# Run as the test user: connect, ask system.info, print what happened as one JSON line.
CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_errno": exc.errno}))
    sys.exit(0)
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"system.info"}\n')
data = b""
while b"\n" not in data:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
line, _, rest = data.partition(b"\n")
eof = False
if line:
    s.settimeout(2)
    try:
        eof = s.recv(1) == b""
    except TimeoutError:
        eof = False  # still open: served
    except OSError:
        eof = True
print(json.dumps({"reply": json.loads(line) if line else None, "closed_after": eof}))
"""


class User:
    def __init__(self, name: str) -> None:
        self.name = name
        self.uid = pwd.getpwnam(name).pw_uid
        self.gid = pwd.getpwnam(name).pw_gid

    def run(
        self, *argv: str, gid: int | None = None, groups: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` as this user, with its groups from the group database (as a login), or
        with none (``groups=False``)."""
        return subprocess.run(
            [
                "setpriv",
                f"--reuid={self.uid}",
                f"--regid={self.gid if gid is None else gid}",
                "--init-groups" if groups else "--clear-groups",
                *argv,
            ],
            capture_output=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/"},
            check=False,
        )

    def ask(self, sock: str, gid: int | None = None, groups: bool = True) -> dict[str, Any]:
        res = self.run(sys.executable, "-c", CLIENT, sock, gid=gid, groups=groups)
        assert res.returncode == 0, res.stderr
        answer: dict[str, Any] = json.loads(res.stdout)
        return answer


@pytest.fixture
def user() -> Iterator[User]:
    name = f"tugt{secrets.token_hex(3)}"
    subprocess.run(
        [
            "useradd",
            "--no-create-home",
            "--no-user-group",
            "--gid",
            "nogroup",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    try:
        yield User(name)
    finally:
        subprocess.run(["userdel", name], check=False)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


@pytest.fixture
def group() -> Iterator[str]:
    name = f"tugg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)
    with pytest.raises(KeyError):
        grp.getgrnam(name)


def reachable(d: Any) -> None:
    """The test's temp dir (mkdtemp: 0700) made traversable, as /run is: tugd's own modes decide."""
    os.chmod(d.base, 0o711)


def mode(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_sockets_and_their_dirs_are_root_only(make_daemon: Any) -> None:
    d = make_daemon(extra=["--group", ""])
    assert mode(d.socket) == (0o660, 0, 0)
    assert mode(d.state) == (0o700, 0, 0)
    assert mode(d.root) == (0o700, 0, 0)
    cid = start(d, ["sleep", "1000"])
    shim_dir = os.path.join(d.state, "shims", cid)
    shim_sock = os.path.join(shim_dir, "shim.sock")
    sock_mode, uid, _ = mode(shim_sock)
    assert uid == 0 and sock_mode & 0o077 == 0, oct(sock_mode)  # a shim's socket: root's alone
    assert mode(shim_dir)[0] & 0o077 == 0
    d.call("container.delete", {"id": cid, "force": True})


def test_a_user_is_refused_by_mode_and_by_credentials(make_daemon: Any, user: User) -> None:
    d = make_daemon(extra=["--group", ""])
    reachable(d)
    # The mode first: the state dir cannot even be entered.
    assert user.ask(d.socket) == {"connect_errno": 13}  # EACCES
    # Open the modes by mistake: the credentials still say no, with a clear error, and close.
    os.chmod(d.state, 0o755)
    os.chmod(d.socket, 0o666)
    answer = user.ask(d.socket)
    assert answer["reply"]["error"]["data"]["kind"] == "permission_denied"
    assert f"you are uid {user.uid}" in answer["reply"]["error"]["message"]
    assert answer["closed_after"] is True
    # The CLI says so too, and exits non-zero.
    res = user.run(TUG, "--socket", d.socket, "ps")
    assert res.returncode != 0
    assert b"permission denied" in res.stderr.lower(), res.stderr
    # Root still gets in; nothing changed.
    assert d.call("container.list", {"all": True}) == []
    assert "refused a connection from uid" in d.read_log()


def test_the_tugboat_group_is_let_in(make_daemon: Any, user: User, group: str) -> None:
    gid = grp.getgrnam(group).gr_gid
    d = make_daemon(extra=["--group", group])
    reachable(d)
    assert mode(d.socket) == (0o660, 0, gid)
    assert mode(d.state) == (0o710, 0, gid)  # members may traverse, not list
    # Not a member: the dir's mode refuses; with the dir opened by mistake, the credentials do.
    assert user.ask(d.socket) == {"connect_errno": 13}
    os.chmod(d.state, 0o711)
    os.chmod(d.socket, 0o666)
    assert user.ask(d.socket)["reply"]["error"]["data"]["kind"] == "permission_denied"
    os.chmod(d.state, 0o710)
    os.chmod(d.socket, 0o660)
    # A member (a supplementary group, from the group database at login): let in.
    subprocess.run(["gpasswd", "--add", user.name, group], check=True, capture_output=True)
    answer = user.ask(d.socket)
    assert "result" in answer["reply"], answer
    assert answer["closed_after"] is False
    res = user.run(TUG, "--socket", d.socket, "ps", "-a")
    assert res.returncode == 0, res.stderr
    # A member's process that dropped the group is refused: what the peer holds counts
    # (SO_PEERGROUPS), not what /etc/group lists (with the modes open, the check alone decides).
    os.chmod(d.state, 0o711)
    os.chmod(d.socket, 0o666)
    assert user.ask(d.socket, groups=False)["reply"]["error"]["data"]["kind"] == "permission_denied"
    os.chmod(d.state, 0o710)
    os.chmod(d.socket, 0o660)
    # The group as the primary one (no supplementary groups): let in as well.
    subprocess.run(["gpasswd", "--delete", user.name, group], check=True, capture_output=True)
    assert "result" in user.ask(d.socket, gid=gid)["reply"]
    # Out of the group again: refused (the mode lets the primary-group-less user no further).
    assert user.ask(d.socket) == {"connect_errno": 13}


def test_refused_peers_do_not_disturb_tugd(make_daemon: Any, user: User) -> None:
    """Many refused connections in a row: each gets its error, tugd keeps serving root."""
    d = make_daemon(extra=["--group", ""])
    reachable(d)
    os.chmod(d.state, 0o755)
    os.chmod(d.socket, 0o666)
    loop = (
        "import json, socket, sys\n"
        "kinds = []\n"
        "for _ in range(200):\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(20)\n"
        "    s.connect(sys.argv[1])\n"
        "    with contextlib.suppress(OSError):\n"
        '        s.sendall(b\'{"jsonrpc":"2.0","id":1,"method":"system.info"}\\n\')\n'
        "    data = b''\n"
        "    while True:\n"
        "        chunk = s.recv(65536)\n"
        "        if not chunk: break\n"
        "        data += chunk\n"
        "    kinds.append(json.loads(data)['error']['data']['kind'])\n"
        "    s.close()\n"
        "print(json.dumps(sorted(set(kinds))))\n"
    )
    res = user.run(sys.executable, "-c", "import contextlib\n" + loop, d.socket)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == ["permission_denied"]
    assert d.call("container.list", {"all": True}) == []


def test_a_group_named_on_the_command_line_must_exist(tmp_path: Any) -> None:
    from ..conftest import TUGD

    res = subprocess.run(
        [TUGD, "--root", str(tmp_path / "r"), "--state", str(tmp_path / "s"), "--group", "no-such-group-x"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert b"--group no-such-group-x: no such group" in res.stderr
    assert not (tmp_path / "s").exists()  # nothing made
