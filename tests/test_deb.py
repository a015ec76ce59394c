"""The Debian package (issue 17), installed for real: ``scripts/build-deb.sh`` builds it (twice:
the second with a higher version), ``debootstrap`` makes a fresh Debian 12 root in a temporary
directory, and ``apt-get install ./tugboat_*.deb`` installs it there. tugd and a busybox container
then run from the installed files, a second package is installed over the first while the
container runs, tugd is restarted from the new files (what ``systemctl restart tugd`` does with
``KillMode=process``), and the container, its exit status and its log are checked to have come
through. Then ``apt-get remove`` keeps ``/var/lib/tugboat`` and ``apt-get purge`` removes it and the
group.

Everything in the root runs in namespaces of its own: a holder process (``unshare --mount --net
--pid --fork``) owns a mount namespace with the root's ``/proc``, ``/sys`` (with the cgroup
mounts runc needs) and ``/dev`` and the root as its ``/`` (pivot_root), a network namespace
with only loopback, and a PID namespace; every command runs there with ``nsenter``. The package's
dependencies are in the root already (scripts/debootstrap-cache.sh includes them), so apt needs no
network. At the end the holder is killed, which kills every process of its PID namespace (tugd,
shims, containers) and drops its mounts with the mount namespace; the containers' cgroups are
removed and the root is deleted. Nothing is installed on the host.

Caches (outside the repo, in ``$TUGBOAT_TEST_TOOLS``, default /var/cache/tugboat-test-tools): the
debootstrap tarball (made once: ~25 s of downloads), a tar of the root debootstrap made from it
(once: ~1 min), and the packages, by version and a hash of their sources (a build takes 40 to 70 s,
pip's own cache holding the wheels).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.deb, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("TUGBOAT_TEST_TOOLS", "/var/cache/tugboat-test-tools"))
SECOND_VERSION_SUFFIX = "+test2"
COMMANDS = ("tug", "tugd", "tug-shim", "tug-docker-api", "tug-cri")


def _run(args: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure the assertion shows its output."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc  # type: ignore[no-any-return]


def _base_version() -> str:
    return _run(["dpkg-parsechangelog", "-S", "Version"], cwd=str(REPO)).stdout.strip()


def _build(version: str | None, out: Path) -> Path:
    """The package of this tree (from the cache when its sources and version were built before)."""
    args = ["bash", str(REPO / "scripts/build-deb.sh"), "--out", str(out), "--cache", str(CACHE / "deb")]
    if version is not None:
        args += ["--version", version]
    path = Path(_run(args, timeout=900).stdout.strip().splitlines()[-1])
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package at debian/changelog's version, and the same at a higher one."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    out = tmp_path_factory.mktemp("debs")
    base = _base_version()
    first = _build(None, out)
    second = _build(base + SECOND_VERSION_SUFFIX, out)
    assert first.name == f"tugboat_{base}_amd64.deb"
    assert second.name == f"tugboat_{base}{SECOND_VERSION_SUFFIX}_amd64.deb"
    _run(["dpkg", "--compare-versions", base + SECOND_VERSION_SUFFIX, "gt", base])
    return first, second


def test_lintian_passes_without_errors(debs: tuple[Path, Path]) -> None:
    proc = subprocess.run(
        ["lintian", "--fail-on", "error", str(debs[0])], capture_output=True, text=True, timeout=600
    )
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert proc.returncode == 0 and not errors, proc.stdout + proc.stderr


def test_package_contents_and_depends(debs: tuple[Path, Path]) -> None:
    listing = _run(["dpkg-deb", "-c", str(debs[0])]).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for name in COMMANDS:
        assert f"/usr/bin/{name}" in paths
        assert f"/opt/tugboat/.venv/bin/{name}" in paths
    for unit in (
        "tugd.service",
        "tugd.socket",
        "tug-cri.service",
        "tug-docker-api.service",
        "tug-docker-api.socket",
    ):
        assert f"/lib/systemd/system/{unit}" in paths
    assert "/usr/lib/tmpfiles.d/tugboat.conf" in paths
    assert "/usr/share/bash-completion/completions/tug" in paths
    assert not [p for p in paths if p.endswith(".pyc")], "byte-code is made in postinst, not shipped"
    depends = _run(["dpkg-deb", "-f", str(debs[0]), "Depends"]).stdout
    for dep in ("python3 (>= 3.11)", "runc", "nftables", "iproute2", "tini"):
        assert dep in depends


@dataclass
class Root:
    """A Debian 12 root and the holder process whose namespaces it runs in."""

    path: Path
    holder: subprocess.Popen[bytes] | None = None
    init_pid: int = 0  # the holder's child: PID 1 of the namespace
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)
    container_ids: set[str] = field(default_factory=set)

    def enter(self) -> list[str]:
        # -r -w: the holder's root and working directory (the root, "/" of its mount namespace)
        return ["nsenter", "-t", str(self.init_pid), "-m", "-n", "-p", "-r", "-w", "--"]

    def sh(self, script: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the root (in its namespaces)."""
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND": "noninteractive",
            "LANG": "C.UTF-8",
        }
        proc = subprocess.run(
            [*self.enter(), "/bin/sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check:
            assert proc.returncode == 0, (
                f"{script!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}{self.tugd_logs()}"
            )
        return proc

    def tugd_logs(self) -> str:
        """The end of each tugd's log, for failure messages."""
        out = ""
        for log in sorted((self.path / "tmp").glob("tugd-*.log")):
            out += f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        return out

    def start_tugd(self, log: str) -> subprocess.Popen[bytes]:
        """tugd from the installed files, as the unit runs it (but with no network of its own)."""
        out = open(self.path / log.lstrip("/"), "ab")  # noqa: SIM115 (the child holds it)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [*self.enter(), "/usr/bin/tugd", "--default-network", "none"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        out.close()
        self.background.append(proc)
        sock = self.path / "run/tugboat/tugd.sock"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"tugd exited with {proc.returncode}:\n{(self.path / log.lstrip('/')).read_text()}"
                )
            if sock.exists() and self.sh("tug info >/dev/null 2>&1", check=False).returncode == 0:
                return proc
            assert time.monotonic() < deadline, (self.path / log.lstrip("/")).read_text()
            time.sleep(0.1)


# PID 1 of the root's namespaces: makes the root the root of its mount namespace (pivot_root, not a
# chroot: runc pivot_roots from "/" and makes it rslave, and `runc exec` enters a container's mount
# namespace at that namespace's root, which under a chroot would be the host's), mounts /proc
# (of the new PID namespace), /sys (with /sys/fs/cgroup) and /dev, brings loopback up, and waits.
HOLDER = """set -e
mount --bind "$ROOT" "$ROOT"
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
ip link set lo up
cd "$ROOT"
pivot_root . mnt
cd /
umount -l /mnt
touch /run/holder.ready
exec sleep infinity
"""


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _make_root(path: Path) -> None:
    """A fresh root in ``path``: debootstrap from the cached tarball the first time (~1 min), and
    a tar of that untouched result, cached beside it, every later time (seconds)."""
    tarball = Path(_run(["bash", str(REPO / "scripts/debootstrap-cache.sh")], timeout=1200).stdout.strip())
    made = tarball.with_name(tarball.name.removesuffix(".tgz") + "-root.tar")
    if made.is_file():
        _run(["tar", "-C", str(path), "--numeric-owner", "-xpf", str(made)])
        return
    include = _run(["bash", "-c", f"grep -m1 '^INCLUDE=' {REPO}/scripts/debootstrap-cache.sh | cut -d= -f2"])
    # In a mount namespace of its own: the mounts debootstrap makes in the root die with it.
    _run(
        [
            "unshare",
            "--mount",
            "--fork",
            "debootstrap",
            "--variant=minbase",
            f"--include={include.stdout.strip()}",
            f"--unpack-tarball={tarball}",
            "bookworm",
            str(path),
        ],
        timeout=900,
    )
    tmp = made.with_name(f".{made.name}.{os.getpid()}")
    try:
        _run(["tar", "-C", str(path), "--numeric-owner", "-cpf", str(tmp), "."])
        os.replace(tmp, made)
    finally:
        tmp.unlink(missing_ok=True)


@pytest.fixture
def root(busybox_tar: str) -> Iterator[Root]:
    """A fresh Debian 12 root with /proc, /sys, /dev mounted in namespaces of its own, and the
    busybox image's tar in /tmp."""
    path = Path(tempfile.mkdtemp(prefix="tugboat-deb-", dir="/var/tmp"))
    r = Root(path)
    try:
        _make_root(path)
        shutil.copy(busybox_tar, path / "tmp/busybox.tar")
        r.holder = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "sh",
                "-c",
                HOLDER,
            ],
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "ROOT": str(path)},
        )
        deadline = time.monotonic() + 30
        while not (path / "run/holder.ready").exists():
            assert r.holder.poll() is None, f"the namespace holder failed ({r.holder.returncode})"
            assert time.monotonic() < deadline, "the namespace holder did not start"
            time.sleep(0.01)
        r.init_pid = _children(r.holder.pid)[0]
        yield r
    finally:
        for proc in r.background:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        if r.init_pid:
            # PID 1 of the namespace: its death kills every process in it (tugd, shims,
            # containers), and with the last of them go the mount and network namespaces.
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.init_pid, signal.SIGKILL)
        if r.holder is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.holder.pid, signal.SIGKILL)
            r.holder.wait(timeout=30)
        for proc in r.background:
            proc.wait(timeout=30)
        # runc made the containers' cgroups on the host's tree (bound into the root): cgroup v2
        # or each v1 hierarchy. The ids: those the test saw, and those on the root's disk.
        on_disk = path / "var/lib/tugboat/containers"
        ids = r.container_ids | ({p.name for p in on_disk.iterdir()} if on_disk.is_dir() else set())
        cgroups = [
            cg
            for cid in ids
            if len(cid) == 64
            for cg in [f"/sys/fs/cgroup/tugboat/{cid}", *glob.glob(f"/sys/fs/cgroup/*/tugboat/{cid}")]
        ]
        for cg in cgroups:
            deadline = time.monotonic() + 10
            while os.path.isdir(cg):
                try:
                    os.rmdir(cg)
                except OSError:
                    assert time.monotonic() < deadline, f"cgroup {cg} stays busy"
                    time.sleep(0.05)
        with open("/proc/self/mountinfo") as f:
            leftover = [line for line in f if f" {path}/" in line or f" {path} " in line]
        assert not leftover, leftover
        shutil.rmtree(path, ignore_errors=True)


def _tug(r: Root, args: str, check: bool = True) -> str:
    return r.sh(f"tug {args}", check=check).stdout.strip()


def _field(r: Root, name: str, *keys: str) -> str:
    """Fields of tugd's own record of container ``name`` (``tug inspect --format json``; a
    template would read docker's shape), joined by spaces."""
    record = json.loads(_tug(r, f"inspect --format json {name}"))
    return " ".join(str(record[k]) for k in keys)


def _wait_for(r: Root, script: str, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while r.sh(script, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stop_tugd(proc: subprocess.Popen[bytes]) -> None:
    """What systemd does to tugd.service on a restart with KillMode=process: SIGTERM to tugd
    alone (the nsenter in front of it passes the signal on), then wait for it."""
    children = _children(proc.pid)
    assert children, "tugd is not running"
    os.kill(children[0], signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_install_upgrade_keeps_containers_then_remove_and_purge(debs: tuple[Path, Path], root: Root) -> None:
    first, second = debs
    for deb in debs:
        shutil.copy(deb, root.path / "tmp" / deb.name)

    # Install: commands on PATH, units, tmpfiles entry, completion, the group, byte-code.
    started = time.monotonic()
    root.sh(f"apt-get install -y --no-install-recommends /tmp/{first.name}")
    install_s = time.monotonic() - started
    assert root.sh("dpkg-query -W -f '${Version}' tugboat").stdout == _base_version()
    for name in COMMANDS:
        root.sh(f"command -v {name} && test -x /usr/bin/{name}")
    root.sh("tug --help >/dev/null && tugd --help >/dev/null && tug-shim --help >/dev/null")
    root.sh("test -f /lib/systemd/system/tugd.socket && test -f /usr/lib/tmpfiles.d/tugboat.conf")
    root.sh("getent group tugboat")
    completion = root.sh("cat /usr/share/bash-completion/completions/tug").stdout
    for command in ("run", "ps", "logs", "exec", "network", "build"):
        assert f" {command} " in completion
    assert root.sh("find /opt/tugboat/.venv/lib -name '*.pyc' | head -n 1").stdout.strip()
    # deb-systemd-helper enabled the socket (no systemd here to start it).
    root.sh("test -L /etc/systemd/system/sockets.target.wants/tugd.socket")
    # ... and only it: tugd.service is socket-activated, the front doors are the operator's choice.
    enabled = root.sh("find /etc/systemd/system -name 'tug*'").stdout.split()
    assert enabled == ["/etc/systemd/system/sockets.target.wants/tugd.socket"], enabled

    # tugd and containers from the installed files.
    tugd = root.start_tugd("/tmp/tugd-1.log")
    _tug(root, "import /tmp/busybox.tar busybox")
    ran = root.sh("tug run --name done busybox sh -c 'echo done-line; exit 3'", check=False)
    assert (ran.returncode, ran.stdout) == (3, "done-line\n"), ran.stderr + root.tugd_logs()
    assert _field(root, "done", "exit_code") == "3"
    # Waits for /tmp/go (made by an exec after the upgrade), logs before and after, exits 7.
    cid = _tug(
        root,
        "run -d --name long busybox sh -c "
        "'echo before-upgrade; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after-upgrade; exit 7'",
    )
    root.container_ids.add(cid)
    root.container_ids.add(_field(root, "done", "id"))
    _wait_for(root, "tug logs long | grep -q before-upgrade", "the container's first log line")
    pid_before = _field(root, "long", "pid", "shim_pid")
    assert _field(root, "long", "state") == "running"

    # Upgrade while it runs: the new files go in, then tugd is restarted from them.
    root.sh(f"apt-get install -y --no-install-recommends /tmp/{second.name}")
    assert root.sh("dpkg-query -W -f '${Version}' tugboat").stdout == _base_version() + SECOND_VERSION_SUFFIX
    assert _field(root, "long", "state") == "running", "the upgrade stopped a container"
    _stop_tugd(tugd)
    root.start_tugd("/tmp/tugd-2.log")

    assert _field(root, "long", "state") == "running"
    assert _field(root, "long", "pid", "shim_pid") == pid_before, "a new process"
    assert _field(root, "done", "exit_code") == "3"
    assert _tug(root, "logs done") == "done-line"
    _tug(root, "exec long touch /tmp/go")
    assert _tug(root, "wait long") == "7"
    assert _tug(root, "logs long").splitlines() == ["before-upgrade", "after-upgrade"]

    # A network whose bridge and nft table `tugd --cleanup` (prerm) is to remove from the host
    # (here: the root's network namespace).
    _tug(root, "network create pkgnet")
    _tug(root, "run --rm --network pkgnet busybox true")
    assert "tb-" in root.sh("ip -o link show type bridge").stdout
    assert "tugboat" in root.sh("nft list tables").stdout

    # Remove: the data stays. Purge: data and group go (tugd --cleanup ran in prerm).
    _tug(root, "rm -f long done")
    _stop_tugd(root.background[-1])
    removed = root.sh("apt-get remove -y tugboat")
    assert re.search(r"^removed \d+: .*tb-", removed.stdout, re.M), removed.stdout + removed.stderr
    assert "tb-" not in root.sh("ip -o link show type bridge").stdout
    assert "tugboat" not in root.sh("nft list tables").stdout
    root.sh("test ! -e /usr/bin/tug && test ! -e /opt/tugboat/.venv/bin/tugd")
    root.sh("test -f /var/lib/tugboat/tugboat.db && getent group tugboat")
    root.sh("apt-get purge -y tugboat")
    root.sh("test ! -e /var/lib/tugboat && test ! -e /opt/tugboat && ! getent group tugboat")
    print(f"apt-get install of the package took {install_s:.1f} s", file=sys.stderr)


def test_maintainer_scripts_start_the_socket_and_never_stop_on_upgrade(
    debs: tuple[Path, Path], tmp_path: Path
) -> None:
    """What systemd would be told (not run here: systemd is not PID 1 in the test's root):
    install enables and starts tugd.socket, an upgrade stops nothing before unpacking and
    try-restarts the daemons after, remove stops everything."""
    _run(["dpkg-deb", "-e", str(debs[0]), str(tmp_path / "DEBIAN")])
    scripts = {p.name: p.read_text() for p in (tmp_path / "DEBIAN").iterdir()}
    assert "deb-systemd-helper enable 'tugd.socket'" in scripts["postinst"]
    assert "deb-systemd-invoke start 'tugd.socket'" in scripts["postinst"]
    assert "try-restart tugd.service tug-cri.service tug-docker-api.service" in scripts["postinst"]
    # Nothing is stopped before an upgrade (preinst) and no unit is restarted but the daemons.
    assert "stop" not in scripts.get("preinst", "")
    assert "restart 'tugd.socket'" not in scripts["postinst"]
    assert 'if [ "$1" = remove ]' in scripts["prerm"] and "tugd.socket tugd.service" in scripts["prerm"]
    assert "tugd --cleanup" in scripts["prerm"]
    assert "rm -rf" in scripts["postrm"] and "groupdel tugboat" in scripts["postrm"]
