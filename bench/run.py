"""Tugboat's benchmarks, side by side with raw runc in one run.

Usage (as root, from the repository):

    .venv/bin/python bench/run.py [--rounds N] [--log-rounds N] [--containers N] [--quick]
                                  [--no-exec] [--keep]

What it measures (see docs/benchmarks.md for results and how to read them):

1. Start latency: ``tug run --rm busybox true`` against ``runc run`` of the same rootfs with
   ``true``, interleaved round by round (the order rotates every round), after warm-ups; also
   ``tug create`` and ``tug start`` timed separately, ``tug info`` (the CLI and one RPC, the floor
   of any tug command), and ``tug run --rm`` on a second tugd with ``--shim-birth exec``.
2. Shim memory: RSS and PSS from ``/proc/PID/smaps_rollup`` of one shim alone (the only container
   running) and the average over N running containers (``sleep``), plus tugd's and the shim
   template's own; for both shim births.
3. Log throughput: a container writing 200 MiB of 61-byte lines to stdout, through the shim into
   the CRI log file (``tug run -d`` + ``tug wait``), against ``runc run`` with stdout straight to
   a file and ``runc run | cat > file``. Every output is checked byte for byte (sha256).

Everything it starts lives under one short temporary directory (unix socket paths must stay
under 108 bytes) and is removed at the end: containers, both tugds, the runc state, the files.
It prints Markdown to stdout and progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
TUG = os.path.join(VENV_BIN, "tug")
TUGD = os.path.join(VENV_BIN, "tugd")
RUNC = shutil.which("runc") or "runc"

LINE = "0123456789 abcdefghij 0123456789 abcdefghij 0123456789 abcde"  # + "\n": 61 bytes
LOG_BYTES = 200 * 1024 * 1024
WRITER = f"yes '{LINE}' | head -c {LOG_BYTES}"
BIG_LOG = ["--log-max-size", "512m", "--log-max-files", "2"]  # keeps all 200 MiB: checkable


def note(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ============================================================================ small helpers


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p90(xs: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(xs)
    return s[max(0, -(-len(s) * 9 // 10) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def mib(kb: float) -> str:
    return f"{kb / 1024:.2f}"


def timed(argv: Sequence[str], **kw: Any) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t0 = time.perf_counter()
    cp = subprocess.run(argv, timeout=300, check=False, **kw)
    return time.perf_counter() - t0, cp


def check(cp: subprocess.CompletedProcess[bytes], what: str) -> None:
    if cp.returncode != 0:
        err = cp.stderr.decode(errors="replace").strip() if isinstance(cp.stderr, bytes) else ""
        raise RuntimeError(f"{what} failed with status {cp.returncode}: {err}")


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def children_of(ppid: int) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == ppid:
            found.append((int(name), cmd))
    return found


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append((int(name), cmd))
    return found


def expected_digest(start: int = 0, end: int = LOG_BYTES) -> str:
    """sha256 of bytes ``start:end`` of what the writer writes (``LINE\\n`` repeated)."""
    line = (LINE + "\n").encode()
    h = hashlib.sha256()
    off = start % len(line)
    first = line[off:][: end - start]
    h.update(first)
    pos = start + len(first)
    block = line * 16384
    while end - pos >= len(block):
        h.update(block)
        pos += len(block)
    h.update(block[: end - pos])
    return h.hexdigest()


def file_digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


@dataclass
class CriCheck:
    files: int = 0
    file_bytes: int = 0
    records: int = 0
    content_bytes: int = 0
    streams: set[bytes] = field(default_factory=set)
    bad: int = 0
    digest: str = ""


def check_cri(log_path: str) -> CriCheck:
    """Rebuild the stream from the CRI log (``path.N`` ... ``path.1``, ``path``): F records get
    their newline back, P records do not. Independent of tugwire.crilog on purpose."""
    paths = []
    i = 1
    while os.path.exists(f"{log_path}.{i}"):
        paths.insert(0, f"{log_path}.{i}")
        i += 1
    paths.append(log_path)
    res = CriCheck()
    h = hashlib.sha256()
    for path in paths:
        if not os.path.exists(path):
            continue
        res.files += 1
        res.file_bytes += os.path.getsize(path)
        rest = b""
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                data = rest + chunk
                end = data.rfind(b"\n") + 1
                rest = data[end:]
                for rec in data[: end - 1].split(b"\n") if end else ():
                    parts = rec.split(b" ", 3)
                    if len(parts) != 4 or parts[2] not in (b"F", b"P") or len(parts[0]) != 30:
                        res.bad += 1
                        continue
                    res.records += 1
                    res.streams.add(parts[1])
                    content = parts[3] + b"\n" if parts[2] == b"F" else parts[3]
                    res.content_bytes += len(content)
                    h.update(content)
        if rest:
            res.bad += 1  # a record without its newline
    res.digest = h.hexdigest()
    return res


# ============================================================================ tugd and runc


_TUGD_HELP: list[str] = []


def tugd_has_option(option: str) -> bool:
    if not _TUGD_HELP:
        cp = subprocess.run([TUGD, "--help"], capture_output=True, text=True, check=False)
        _TUGD_HELP.append(cp.stdout)
    return option in _TUGD_HELP[0]


def git_state() -> str:
    def git(*args: str) -> str:
        cp = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, check=False)
        return cp.stdout.rstrip("\n")

    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if not dirty:
        return f"commit {head}, clean"
    shown = ", ".join(dirty[:8]) + (", ..." if len(dirty) > 8 else "")
    return f"commit {head} plus uncommitted changes to {len(dirty)} files ({shown})"


class Tugd:
    """One tugd of our own, with its roots under ``base``; ready once it says READY=1."""

    def __init__(self, base: str, birth: str) -> None:
        self.base = base
        self.birth = birth
        self.root = os.path.join(base, "root")
        self.state = os.path.join(base, "s")
        self.socket = os.path.join(self.state, "tugd.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(base, "tugd.log")
        self.created: set[str] = set()
        self.wrap: list[str] = []  # e.g. ["nsenter", "--net=/run/netns/NS"]: tugd in that netns

    def start(self) -> None:
        """Start tugd and wait until its socket answers ``tug info``.

        Not through sd_notify: a tugd that passes NOTIFY_SOCKET on to its shims (tugd as
        committed up to 1ca8bae does) makes runc wait for the *container* to send READY=1
        (docs/benchmarks.md), so NOTIFY_SOCKET is kept out of tugd's environment. Metrics stay
        on, as by default, on a port of the kernel's choosing (two tugds, and maybe other
        people's, share the host)."""
        os.makedirs(self.base, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        # Metrics off: two bench tugds (and a demo tugd) cannot all have the default 127.0.0.1:9323.
        argv = [TUGD, "--root", self.root, "--state", self.state, "--shim-birth", self.birth]
        argv += ["--metrics-address", "off"]
        if tugd_has_option("--metrics-address"):
            argv += ["--metrics-address", "127.0.0.1:0"]
        if tugd_has_option("--default-network"):
            argv += ["--default-network", "none"]  # as before networks: no bridge on the host
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, *argv], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tugd exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tugd did not answer in 30 s; see {self.log_path}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.socket)
                except OSError:
                    time.sleep(0.02)
                    continue
            cp = subprocess.run(self.argv("info"), capture_output=True, timeout=30, check=False)
            if cp.returncode == 0:
                return
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self, *args: str) -> list[str]:
        return [TUG, "--socket", self.socket, *args]

    def tug(self, *args: str, what: str = "") -> str:
        cp = subprocess.run(self.argv(*args), capture_output=True, timeout=300, check=False)
        check(cp, what or "tug " + " ".join(args[:2]))
        return cp.stdout.decode()

    def run_detached(self, *args: str) -> str:
        cid = self.tug("run", "-d", *args).strip()
        self.created.add(cid)
        return cid

    def inspect(self, cid: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.tug("inspect", cid))
        return obj

    def rm(self, *cids: str) -> None:
        if cids:
            self.tug("rm", "-f", *cids)
            self.created.difference_update(cids)

    def leftovers(self) -> list[str]:
        return self.tug("ps", "-a", "-q", "--no-trunc").split()

    def template_pid(self) -> int | None:
        for pid, cmd in children_of(self.pid):
            if "template" in cmd:
                return pid
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            note(f"tugd {self.pid} did not stop on SIGTERM in 20 s: SIGKILL")
            self.proc.kill()
            self.proc.wait()


class Runc:
    """Bundles that share one extracted rootfs, run with ``runc --root R run``."""

    def __init__(self, base: str, tar_path: str) -> None:
        self.base = base
        self.root = os.path.join(base, "runc")
        self.rootfs = os.path.join(base, "rootfs")
        os.makedirs(self.root)
        os.makedirs(self.rootfs)
        check(
            subprocess.run(["tar", "-xf", tar_path, "-C", self.rootfs], capture_output=True, check=False),
            "tar -x",
        )
        self.n = 0

    def bundle(self, name: str, args: list[str]) -> str:
        path = os.path.join(self.base, name)
        os.makedirs(path)
        check(subprocess.run([RUNC, "spec"], cwd=path, capture_output=True, check=False), "runc spec")
        cfg_path = os.path.join(path, "config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = args
        cfg["root"]["path"] = self.rootfs  # `runc spec` otherwise: "rootfs", read-only: kept
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)
        return path

    def argv(self, bundle: str) -> list[str]:
        self.n += 1
        return [RUNC, "--root", self.root, "run", "--bundle", bundle, f"b{os.getpid()}-{self.n}"]

    def leftovers(self) -> list[str]:
        cp = subprocess.run([RUNC, "--root", self.root, "list", "-q"], capture_output=True, check=False)
        return cp.stdout.decode().split()


# ============================================================================ the benchmarks


@dataclass
class Series:
    label: str
    what: str
    samples: list[float] = field(default_factory=list)


def bench_latency(
    tugd: Tugd, cold: Tugd | None, runc: Runc, rounds: int, warmups: int
) -> tuple[list[Series], dict[str, float]]:
    true_bundle = runc.bundle("b-true", ["true"])

    def run_runc() -> float:
        t, cp = timed(runc.argv(true_bundle), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        check(cp, "runc run")
        return t

    def run_tug(d: Tugd) -> Callable[[], float]:
        def go() -> float:
            t, cp = timed(
                d.argv("run", "--rm", "busybox", "true"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            check(cp, "tug run --rm")
            return t

        return go

    create_s = Series("tug create", "`tug create busybox true`")
    start_s = Series("tug start", "`tug start ID` (of that container)")

    def run_create_start() -> float:
        t1, cp = timed(tugd.argv("create", "busybox", "true"), capture_output=True)
        check(cp, "tug create")
        cid = cp.stdout.decode().strip()
        tugd.created.add(cid)
        t2, cp = timed(tugd.argv("start", cid), capture_output=True)
        check(cp, "tug start")
        create_s.samples.append(t1)
        start_s.samples.append(t2)
        tugd.tug("wait", cid)
        tugd.rm(cid)
        return t1 + t2

    def run_info() -> float:
        t, cp = timed(tugd.argv("info"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        check(cp, "tug info")
        return t

    series = [
        Series("runc", "`runc run` of `true` (same rootfs)"),
        Series("tug", "`tug run --rm busybox true` (template shim)"),
    ]
    fns: list[Callable[[], float]] = [run_runc, run_tug(tugd)]
    if cold is not None:
        series.append(Series("tug-exec", "`tug run --rm busybox true` (`--shim-birth exec`)"))
        fns.append(run_tug(cold))
    series.append(Series("create+start", "`tug create` + `tug start` (sum)"))
    fns.append(run_create_start)
    series.append(Series("info", "`tug info` (CLI + one RPC: the floor of any tug command)"))
    fns.append(run_info)

    for _ in range(warmups):
        for fn in fns:
            fn()
    create_s.samples.clear()
    start_s.samples.clear()
    note(f"latency: {rounds} rounds of {len(fns)} commands, interleaved")
    for r in range(rounds):
        k = r % len(fns)
        order = list(range(len(fns)))[k:] + list(range(len(fns)))[:k]
        for i in order:
            series[i].samples.append(fns[i]())
    ci = next(i for i, s in enumerate(series) if s.label == "create+start")
    series[ci + 1 : ci + 1] = [create_s, start_s]
    left = tugd.leftovers()
    stats = {"tug_leftover_containers": float(len(left))}
    if cold is not None:
        stats["cold_leftover_containers"] = float(len(cold.leftovers()))
    stats["runc_leftover_containers"] = float(len(runc.leftovers()))
    return series, stats


@dataclass
class MemResult:
    birth: str
    n: int
    alone: dict[str, int]
    shims: list[dict[str, int]]
    tugd: dict[str, int]
    template: dict[str, int] | None


def bench_memory(d: Tugd, n: int, settle: float) -> MemResult:
    note(f"memory: {n} containers on the {d.birth} tugd")
    cids = [d.run_detached("busybox", "sleep", "1000")]
    shim_pids = [int(d.inspect(cids[0])["shim_pid"])]
    time.sleep(settle)
    alone = smaps_rollup(shim_pids[0])
    for _ in range(n - 1):
        cid = d.run_detached("busybox", "sleep", "1000")
        cids.append(cid)
        shim_pids.append(int(d.inspect(cid)["shim_pid"]))
    time.sleep(settle)
    shims = [smaps_rollup(p) for p in shim_pids]
    tugd_mem = smaps_rollup(d.pid)
    tpid = d.template_pid()
    template = smaps_rollup(tpid) if tpid is not None else None
    d.rm(*cids)
    gone = time.monotonic() + 10
    while time.monotonic() < gone and any(os.path.exists(f"/proc/{p}") for p in shim_pids):
        time.sleep(0.05)
    alive = [p for p in shim_pids if os.path.exists(f"/proc/{p}")]
    if alive:
        note(f"WARNING: shims still alive 10 s after tug rm -f: {alive}")
    return MemResult(d.birth, n, alone, shims, tugd_mem, template)


@dataclass
class Throughput:
    label: str
    what: str
    seconds: list[float] = field(default_factory=list)
    out_bytes: list[int] = field(default_factory=list)  # bytes on disk (log file or plain file)
    ok: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def bench_logs(d: Tugd, runc: Runc, rounds: int, digest: str) -> list[Throughput]:
    base = runc.base
    writer_bundle = runc.bundle("b-writer", ["sh", "-c", WRITER])
    null_bundle = runc.bundle("b-null", ["sh", "-c", WRITER + " > /dev/null"])
    out_file = os.path.join(base, "out.bin")

    def tug_detached(extra: list[str], full: bool) -> Callable[[Throughput], None]:
        def go(res: Throughput) -> None:
            t0 = time.perf_counter()
            cid = d.run_detached(*extra, "busybox", "sh", "-c", WRITER)
            code = d.tug("wait", cid).strip()
            t = time.perf_counter() - t0
            info = d.inspect(cid)
            cri = check_cri(info["log_path"])
            d.rm(cid)
            ok = code == "0" and cri.bad == 0 and cri.streams <= {b"stdout"}
            if full:
                ok = ok and cri.content_bytes == LOG_BYTES and cri.digest == digest
            else:
                kept = cri.content_bytes
                ok = ok and 0 < kept <= LOG_BYTES
                ok = ok and cri.digest == expected_digest(LOG_BYTES - kept, LOG_BYTES)
            if not ok:
                res.notes.append(
                    f"exit {code}, {cri.content_bytes} content bytes in {cri.files} files, "
                    f"{cri.bad} bad records, streams {sorted(cri.streams)}"
                )
            res.seconds.append(t)
            res.out_bytes.append(cri.file_bytes)
            res.ok.append(ok)
            if not full:
                res.notes.append(f"kept {cri.content_bytes} of {LOG_BYTES} bytes in {cri.files} files")

        return go

    def tug_followed(res: Throughput) -> None:
        """The CRI-log case while ``tug logs -f`` follows the container to a file, and a second
        follower that never reads (its pipe fills at once): neither may slow the container."""
        t0 = time.perf_counter()
        cid = d.run_detached(*BIG_LOG, "busybox", "sh", "-c", WRITER)
        with open(out_file, "wb") as out:
            follower = subprocess.Popen(d.argv("logs", "-f", cid), stdout=out, stderr=subprocess.DEVNULL)
            stuck = subprocess.Popen(
                d.argv("logs", "-f", cid), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            code = d.tug("wait", cid).strip()
            t = time.perf_counter() - t0
            try:
                follower.wait(timeout=120)
            finally:
                follower.kill()
                stuck.kill()
                follower.wait()
                stuck.wait()
        info = d.inspect(cid)
        cri = check_cri(info["log_path"])
        d.rm(cid)
        size, dig = file_digest(out_file)
        ok = code == "0" and cri.bad == 0 and cri.content_bytes == LOG_BYTES and cri.digest == digest
        followed = size == LOG_BYTES and dig == digest
        if not (ok and followed):
            res.notes.append(
                f"exit {code}, {cri.content_bytes} bytes in the log ({cri.bad} bad records); "
                f"the follower got {size} bytes{'' if followed else ' (MISMATCH)'}"
            )
        res.seconds.append(t)
        res.out_bytes.append(cri.file_bytes)
        res.ok.append(ok and followed)

    def tug_follow(res: Throughput) -> None:
        with open(out_file, "wb") as out:
            t, cp = timed(
                d.argv("run", "--rm", *BIG_LOG, "busybox", "sh", "-c", WRITER),
                stdout=out,
                stderr=subprocess.PIPE,
            )
        size, dig = file_digest(out_file)
        ok = cp.returncode == 0 and size == LOG_BYTES and dig == digest
        if not ok:
            prefix = dig == expected_digest(0, size)
            res.notes.append(
                f"exit status {cp.returncode}, {size} of {LOG_BYTES} bytes on stdout "
                f"({LOG_BYTES - size} missing; {'a clean prefix' if prefix else 'NOT a prefix'}), "
                f"stderr {cp.stderr[-300:]!r}"
            )
        res.seconds.append(t)
        res.out_bytes.append(size)
        res.ok.append(ok)

    def runc_file(res: Throughput) -> None:
        with open(out_file, "wb") as out:
            t, cp = timed(runc.argv(writer_bundle), stdout=out, stderr=subprocess.PIPE)
        size, dig = file_digest(out_file)
        ok = cp.returncode == 0 and size == LOG_BYTES and dig == digest
        res.seconds.append(t)
        res.out_bytes.append(size)
        res.ok.append(ok)

    def runc_cat(res: Throughput) -> None:
        with open(out_file, "wb") as out:
            t0 = time.perf_counter()
            rp = subprocess.Popen(runc.argv(writer_bundle), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert rp.stdout is not None
            cat = subprocess.Popen(["cat"], stdin=rp.stdout, stdout=out)
            rp.stdout.close()
            rc1 = rp.wait(timeout=300)
            rc2 = cat.wait(timeout=300)
            t = time.perf_counter() - t0
        size, dig = file_digest(out_file)
        res.seconds.append(t)
        res.out_bytes.append(size)
        res.ok.append(rc1 == 0 and rc2 == 0 and size == LOG_BYTES and dig == digest)

    def runc_null(res: Throughput) -> None:
        t, cp = timed(runc.argv(null_bundle), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        res.seconds.append(t)
        res.out_bytes.append(0)
        res.ok.append(cp.returncode == 0)

    cases: list[tuple[Throughput, Callable[[Throughput], None]]] = [
        (Throughput("runc > file", "`runc run` with stdout redirected to a file"), runc_file),
        (Throughput("runc | cat > file", "`runc run \\| cat > file`"), runc_cat),
        (
            Throughput(
                "tug (CRI log)",
                "`tug run -d --log-max-size 512m --log-max-files 2` + "
                "`tug wait`: through the shim into the CRI log",
            ),
            tug_detached(BIG_LOG, True),
        ),
        (
            Throughput(
                "tug (CRI log) + `logs -f` + stuck follower",
                "same, while `tug logs -f` follows it to a file (checked whole) and a second "
                "`tug logs -f` never reads its stdout",
            ),
            tug_followed,
        ),
        (
            Throughput(
                "tug (CRI log, default rotation)",
                "same, default rotation 64 MiB x 4 (the oldest data is rotated away)",
            ),
            tug_detached([], False),
        ),
        (
            Throughput(
                "tug run (follow) > file",
                "foreground `tug run --rm ... > file`: the shim "
                "writes the log, the CLI follows it to its stdout",
            ),
            tug_follow,
        ),
        (
            Throughput(
                "generator alone",
                "`runc run` of the writer with `> /dev/null` inside "
                "(the ceiling: how fast busybox `yes \\| head` can go)",
            ),
            runc_null,
        ),
    ]
    note(f"logs: {rounds} rounds of {len(cases)} cases, 200 MiB each")
    for r in range(rounds):
        k = r % len(cases)
        for res, fn in cases[k:] + cases[:k]:
            fn(res)
            note(f"  {res.label}: {res.seconds[-1]:.2f} s{'' if res.ok[-1] else ' (CHECK FAILED)'}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out_file)
    return [res for res, _ in cases]


# ============================================================================ report


def machine_info() -> list[str]:
    runc_v = subprocess.run([RUNC, "--version"], capture_output=True, text=True, check=False)
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    os_name = ""
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    return [
        f"- CPUs: {os.cpu_count()} ({cpu})",
        f"- OS: {os_name}, kernel {platform.release()}",
        f"- runc: {runc_v.stdout.splitlines()[0] if runc_v.stdout else '?'}",
        f"- Python: {platform.python_version()} ({PYTHON})",
        f"- load average at the start: {load}",
        f"- tugboat: {git_state()}",
    ]


def report_latency(series: list[Series], extra: dict[str, float]) -> Iterator[str]:
    base = median(next(s for s in series if s.label == "runc").samples)
    yield "### Start latency (wall time of the whole command, ms)"
    yield ""
    yield "| command | runs | median | p90 | min | median / runc |"
    yield "|---|---:|---:|---:|---:|---:|"
    for s in series:
        m = median(s.samples)
        yield (
            f"| {s.what} | {len(s.samples)} | {ms(m)} | {ms(p90(s.samples))} | "
            f"{ms(min(s.samples))} | {m / base:.2f}x |"
        )
    yield ""
    leftovers = {k: int(v) for k, v in extra.items() if v}
    yield f"Left behind after the runs: {leftovers or 'nothing'} (tug ps -a, runc list)."


def report_memory(results: list[MemResult]) -> Iterator[str]:
    yield "### Shim memory (`/proc/PID/smaps_rollup`, MiB)"
    yield ""
    yield "| shim birth | what | RSS | PSS |"
    yield "|---|---|---:|---:|"
    for r in results:
        rss = [s["Rss"] for s in r.shims]
        pss = [s["Pss"] for s in r.shims]
        yield (
            f"| {r.birth} | one shim alone (the only container) | {mib(r.alone['Rss'])} | "
            f"{mib(r.alone['Pss'])} |"
        )
        yield (
            f"| {r.birth} | shim, average of {r.n} running | {mib(statistics.mean(rss))} | "
            f"{mib(statistics.mean(pss))} |"
        )
        yield (
            f"| {r.birth} | shim, min / max of {r.n} | {mib(min(rss))} / {mib(max(rss))} | "
            f"{mib(min(pss))} / {mib(max(pss))} |"
        )
        if r.template is not None:
            yield (
                f"| {r.birth} | the template process | {mib(r.template['Rss'])} | {mib(r.template['Pss'])} |"
            )
            per = (sum(pss) + r.template["Pss"]) / r.n
            yield f"| {r.birth} | (shims + template) / {r.n} | | {mib(per)} |"
        yield f"| {r.birth} | tugd itself, with {r.n} running | {mib(r.tugd['Rss'])} | {mib(r.tugd['Pss'])} |"


def report_logs(results: list[Throughput]) -> Iterator[str]:
    base = median(next(r for r in results if r.label == "runc > file").seconds)
    yield (
        f"### Log throughput ({LOG_BYTES} bytes = 200 MiB of 61-byte lines on stdout; "
        "MB/s = 10^6 bytes of container output per second)"
    )
    yield ""
    yield "| path | runs | median s | MB/s (median) | best MB/s | vs runc > file | on disk MB/s | checked |"
    yield "|---|---:|---:|---:|---:|---:|---:|---|"
    for r in results:
        m = median(r.seconds)
        disk = median(r.out_bytes) / m / 1e6 if any(r.out_bytes) else 0
        okay = "all ok" if all(r.ok) else f"{r.ok.count(False)} FAILED"
        yield (
            f"| {r.what} | {len(r.seconds)} | {m:.2f} | {LOG_BYTES / m / 1e6:.0f} | "
            f"{LOG_BYTES / min(r.seconds) / 1e6:.0f} | {base / m:.2f}x | "
            f"{disk:.0f} | {okay} |"
        )
    notes = [f"- {r.label}: {n}" for r in results for n in sorted(set(r.notes))]
    if notes:
        yield ""
        yield from notes


TARGET_RATIO = 2.0  # tug run --rm / runc run, medians (issue 7; issue 2 asked 4.0)
TARGET_PSS_MB = 3.0  # average shim PSS over 20 running containers (MB; issue 2 asked 12)
TARGET_FOLLOWED = 0.9  # CRI log while `tug logs -f` follows, against `runc run | cat > file`


def report_targets(series: list[Series], mem: list[MemResult], logs: list[Throughput]) -> Iterator[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    runc_m = median(next(s for s in series if s.label == "runc").samples)
    tug_m = median(next(s for s in series if s.label == "tug").samples)
    ratio = tug_m / runc_m
    yield "### Against the targets"
    yield ""
    yield "| target | measured | verdict |"
    yield "|---|---|---|"
    yield (
        f"| `tug run --rm busybox true` at most {TARGET_RATIO:g}x raw `runc run` | "
        f"{ms(tug_m)} / {ms(runc_m)} ms = {ratio:.2f}x | {verdict(ratio <= TARGET_RATIO)} |"
    )
    for r in mem:
        avg = statistics.mean(s["Pss"] for s in r.shims) * 1024 / 1e6  # kB -> MB, as the target
        yield (
            f"| shim PSS averaged over {r.n} running containers at most {TARGET_PSS_MB:g} MB "
            f"({r.birth} birth{', the default' if r.birth == 'template' else ', for comparison'}) "
            f"| {avg:.2f} MB | {verdict(avg <= TARGET_PSS_MB)} |"
        )
    cat = next(r for r in logs if r.label == "runc | cat > file")
    followed = next(r for r in logs if r.label == "tug (CRI log) + `logs -f` + stuck follower")
    rel = median(cat.seconds) / median(followed.seconds)
    yield (
        f"| CRI log while `tug logs -f` follows (and a stuck follower) at least {TARGET_FOLLOWED:g}x "
        f"`runc run \\| cat > file` | {LOG_BYTES / median(followed.seconds) / 1e6:.0f} / "
        f"{LOG_BYTES / median(cat.seconds) / 1e6:.0f} MB/s = {rel:.2f}x | "
        f"{verdict(rel >= TARGET_FOLLOWED and all(followed.ok))} |"
    )


# ============================================================================ main


def short_tempdir() -> str:
    """``/tmp/tbXXXX``: runc binds ``<state>/runc/<64-hex id>/notify/notify.sock``, and a unix
    socket path must fit in 107 bytes, so the state dir must stay under about 20 bytes
    (``tempfile.mkdtemp`` names are 4 bytes too long for that)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    while True:
        name = "/tmp/tb" + "".join(secrets.choice(alphabet) for _ in range(4))
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:
            continue
        return name


def build_tar(path: str) -> None:
    script = os.path.join(REPO, "scripts", "make_busybox_rootfs.py")
    check(subprocess.run([PYTHON, script, path], capture_output=True, check=False), "make_busybox_rootfs.py")


def cleanup(base: str, tugds: list[Tugd], runc: Runc | None) -> list[str]:
    problems: list[str] = []
    for d in tugds:
        if d.proc is None or d.proc.poll() is not None:
            continue
        try:
            left = d.leftovers()
            if left:
                d.rm(*left)
        except Exception as exc:
            problems.append(f"removing containers of the {d.birth} tugd: {exc}")
        d.stop()
    if runc is not None:
        for cid in runc.leftovers():
            problems.append(f"runc container {cid} left behind: deleted")
            subprocess.run([RUNC, "--root", runc.root, "delete", "-f", cid], check=False, capture_output=True)
    time.sleep(0.5)
    for pid, cmd in processes_mentioning(base):
        problems.append(f"process {pid} still running: {cmd[:120]}: killed")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(base)]
    for m in reversed(mounts):
        problems.append(f"mount {m} left behind: unmounted")
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(base, ignore_errors=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=None, help="start-latency rounds (default 30)")
    ap.add_argument("--log-rounds", type=int, default=None, help="throughput rounds (default 5)")
    ap.add_argument("--containers", type=int, default=20, help="containers for the memory average")
    ap.add_argument("--quick", action="store_true", help="8 latency rounds, 1 throughput round")
    ap.add_argument("--no-exec", action="store_true", help="skip the --shim-birth exec tugd")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--strict", action="store_true", help="exit 1 when an output check fails")
    args = ap.parse_args(argv)
    rounds = args.rounds or (8 if args.quick else 30)
    log_rounds = args.log_rounds or (1 if args.quick else 5)
    warmups = 2 if args.quick else 3
    if os.geteuid() != 0:
        print("bench/run.py: runs containers: needs root", file=sys.stderr)
        return 2

    base = short_tempdir()
    tugds: list[Tugd] = []
    runc: Runc | None = None
    out: list[str] = []
    status = 0
    try:
        out += ["## Machine", "", *machine_info(), ""]
        tar_path = os.path.join(base, "busybox.tar")
        build_tar(tar_path)
        digest = expected_digest()
        tugd = Tugd(os.path.join(base, "t"), "template")
        tugds.append(tugd)
        cold: Tugd | None = None
        if not args.no_exec:
            cold = Tugd(os.path.join(base, "x"), "exec")
            tugds.append(cold)
        for d in tugds:
            d.start()
            d.tug("import", tar_path, "busybox")
        note(f"tugd pids: {[d.pid for d in tugds]}, base {base}")
        runc = Runc(base, tar_path)

        series, extra = bench_latency(tugd, cold, runc, rounds, warmups)
        out += [*report_latency(series, extra), ""]
        print("\n".join(out), flush=True)
        out = []

        mem = [bench_memory(d, args.containers, 1.0) for d in tugds]
        out += [*report_memory(mem), ""]
        print("\n".join(out), flush=True)
        out = []

        logs = bench_logs(tugd, runc, log_rounds, digest)
        out += [*report_logs(logs), ""]
        out += [*report_targets(series, mem, logs), ""]
        failed = [r.label for r in logs if not all(r.ok)]
        if failed:
            note(f"WARNING: output checks failed: {failed}")
            if args.strict:
                status = 1
        print("\n".join(out), flush=True)
        out = []
    finally:
        if args.keep:
            note(f"kept {base}; tugds still running: {[d.pid for d in tugds]}")
        else:
            problems = cleanup(base, tugds, runc)
            for p in problems:
                note(f"cleanup: {p}")
            if problems:
                print("\nCleanup found: " + "; ".join(problems))
    return status


if __name__ == "__main__":
    sys.exit(main())
