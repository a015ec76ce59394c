"""Start latency against the peers, measured fairly, in one run (issue 14).

Usage (as root, from the repository; the peers from ``make peers``, never installed by this):

    .venv/bin/python bench/start.py [--rounds 30] [--batch 50] [--clients 8] [--batch-rounds 3]
                                    [--stream-rounds 3] [--shims 20]
                                    [--parts single,bridge,batch,stream,shim]

``--parts`` picks what runs (default all, in this order: single starts, with the bridge case
among them when ``bridge`` is picked; the streams; the shims; the batches). tugd runs in a
network namespace this makes (``nsenter --net``), so the bridge, veths and nft tables of
``--network bridge`` never touch the host's network and go with the namespace at the end.

1. One container that runs ``true``, no network, removed after, one at a time, interleaved
   round by round (the order rotates every round, after warm-ups):

   - ``runc``: raw ``runc run`` of the very OCI spec tugd wrote for a container of the same
     image (its ``config.json``: seccomp profile, capabilities, masked paths, mounts, all), with
     ``root.path`` on a plain copy of the rootfs and the bind-mounted files copied;
   - ``tug CLI``: ``tug run --rm busybox true`` (a tugd whose default network is ``none``);
   - ``tug API``: a JSON-RPC client in this process, on one connection kept open:
     ``container.create {auto_remove}``, ``container.wait {removed}`` and ``container.start``
     pipelined, done when wait answers (what ``tug run --rm`` sends, minus the log stream);
   - ``ctr``: ``ctr run --rm --seccomp IMAGE ID true`` against a private containerd 1.6 (its own
     root, state and socket, started here, stopped at the end), runc state under it too;
   - ``podman``: ``podman run --rm --network none busybox true`` (podman 4.3 with conmon, runc,
     private ``--root``/``--runroot`` and configuration).

   - ``tug bridge`` (part ``bridge``): ``tug run --rm --network bridge busybox true``.

   Median, p90 and min of the wall time, the ratio of medians to ``runc``, and the CPU time of
   the client command itself (utime + stime of the reaped child: what the CLI process costs).
2. ``--batch`` detached ``sleep`` containers started by ``--clients`` threads at once, then all
   removed the same way: ``tug run -d`` / ``tug rm -f``, the API (create + start / delete with
   force, one connection per thread), ``ctr run -d --seccomp --null-io`` / ``ctr task rm -f`` +
   ``ctr container rm``, ``podman run -d --network none`` / ``podman rm -f``.

3. (part ``stream``) A foreground 100 MiB of output (``yes LINE | head -c 104857600``) with the
   command's stdout a plain file: ``runc run`` of tugd's spec with that command, ``tug run
   --rm``, ``ctr run --rm --seccomp``, ``podman run --rm --network none``, interleaved; each
   output's size and sha256 checked (a wrong one stops the run). MB/s = 10^6 bytes per second.
4. (part ``shim``) ``--shims`` ``sleep`` containers running at once in each of tug, containerd
   and podman; the average PSS (``/proc/PID/smaps_rollup``) of tug-shim,
   containerd-shim-runc-v2 and conmon.

A peer that is missing (``scripts/install-peers.sh`` not run) is reported as missing. The
images are the same: the busybox tar of ``scripts/make_busybox_rootfs.py`` imported into tugd,
``tug save``'d and loaded into containerd (``ctr images import``) and podman (``podman load``).
Everything lives under one short temporary directory and is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import (
    LINE,
    RUNC,
    Tugd,
    build_tar,
    check,
    cleanup,
    expected_digest,
    file_digest,
    machine_info,
    median,
    ms,
    note,
    p90,
    short_tempdir,
    smaps_rollup,
)
from scale import in_parallel, run_cmd

from tests import peerd
from tugwire.syncclient import Client

STREAM_BYTES = 100 * 1024 * 1024
WRITER = f"yes '{LINE}' | head -c {STREAM_BYTES}"
PARTS = ("single", "bridge", "batch", "stream", "shim")


def stream_to(out: str, argv: list[str], environ: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall time of ``argv > out`` (stdout a plain file) and its exit status."""
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        cp = subprocess.run(
            argv, env=environ, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.PIPE, timeout=600
        )
        t = time.perf_counter() - t0
    check(cp, " ".join(os.path.basename(a) for a in argv[:2]))
    return t, cp.returncode


@dataclass
class Series:
    label: str
    what: str
    fn: Callable[[], None]
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def timed_child(
    argv: list[str], environ: dict[str, str] | None = None, what: str = ""
) -> tuple[float, float]:
    """Wall time and the child's own CPU time (utime + stime, from the rusage of the reaped
    child: only what this command's process spent, not the daemons')."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cp = subprocess.run(argv, env=environ, capture_output=True, timeout=120, check=False)
    t = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    check(cp, what or " ".join(argv[:3]))
    return t, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


class RuncSameSpec:
    """``runc run`` of a copy of the bundle tugd wrote for ``cid``."""

    def __init__(self, base: str, tugd: Tugd, cid: str, tar_path: str) -> None:
        self.root = os.path.join(base, "runc")
        self.bundle = os.path.join(base, "same")
        rootfs = os.path.join(self.bundle, "rootfs")
        os.makedirs(self.root)
        os.makedirs(rootfs)
        check(subprocess.run(["tar", "-xf", tar_path, "-C", rootfs], capture_output=True, check=False), "tar")
        cdir = os.path.join(tugd.root, "containers", cid)
        with open(os.path.join(cdir, "config.json")) as f:
            cfg = json.load(f)
        cfg["root"]["path"] = rootfs
        for m in cfg.get("mounts", []):
            src = m.get("source", "")
            if m.get("type") == "bind" and src.startswith(cdir + "/"):
                copy = os.path.join(self.bundle, os.path.basename(src))
                shutil.copy(src, copy)
                m["source"] = copy
        for ns in cfg["linux"].get("namespaces", []):
            ns.pop("path", None)  # a new namespace, as tugd's `none` gives
        cfg["linux"]["cgroupsPath"] = f"/tugbench/same-{os.getpid()}"
        self.seccomp = "seccomp" in cfg["linux"]
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(cfg, f)
        # the same spec writing STREAM_BYTES to its stdout (root.path is absolute: shared rootfs)
        self.writer = os.path.join(base, "samew")
        os.makedirs(self.writer)
        cfg["process"]["args"] = ["sh", "-c", WRITER]
        cfg["process"]["terminal"] = False
        with open(os.path.join(self.writer, "config.json"), "w") as f:
            json.dump(cfg, f)
        self.n = 0

    def run(self) -> tuple[float, float]:
        self.n += 1
        argv = [RUNC, "--root", self.root, "run", "--bundle", self.bundle, f"same{self.n}"]
        return timed_child(argv, what="runc run")

    def write(self, out: str) -> tuple[float, int]:
        self.n += 1
        return stream_to(out, [RUNC, "--root", self.root, "run", "--bundle", self.writer, f"samew{self.n}"])

    def leftovers(self) -> list[str]:
        cp = subprocess.run([RUNC, "--root", self.root, "list", "-q"], capture_output=True, check=False)
        return cp.stdout.decode().split()


class Api:
    """tugd's JSON-RPC API from this process, on one connection."""

    def __init__(self, tugd: Tugd) -> None:
        self.client = Client(tugd.socket)

    def run_rm(self) -> tuple[float, float]:
        c = self.client
        t0 = time.perf_counter()
        c0 = time.process_time()
        cid = c.call("container.create", {"image": "busybox", "cmd": ["true"], "auto_remove": True})["id"]
        waiting = c.send("container.wait", {"id": cid, "condition": "removed"})
        c.call("container.start", {"id": cid})
        res = c.wait_for(waiting)
        t = time.perf_counter() - t0
        if res.get("exit_code") != 0:
            raise RuntimeError(f"API run of true: {res}")
        return t, time.process_time() - c0


# ============================================================================ the peers


class Peers:
    """The peers that are there, started privately; ``missing`` says why the others are not."""

    def __init__(self, base: str, save_tar: str) -> None:
        self.missing: dict[str, str] = {}
        self.containerd: peerd.Containerd | None = None
        self.podman: peerd.Podman | None = None
        self.ctr_image = ""
        self.n = 0
        self.lock = threading.Lock()
        if why := peerd.missing("containerd"):
            self.missing["ctr"] = why
        else:
            d = peerd.Containerd(os.path.join(base, "ctd"))
            self.containerd = d
            d.start()
            cp = subprocess.run(d.ctr("images", "import", save_tar), env=peerd.env(), capture_output=True)
            check(cp, "ctr images import")
            cp = subprocess.run(d.ctr("images", "ls", "-q"), env=peerd.env(), capture_output=True, check=True)
            self.ctr_image = cp.stdout.decode().split()[0]
        if why := peerd.missing("podman"):
            self.missing["podman"] = why
        else:
            p = peerd.Podman(os.path.join(base, "pod"))
            self.podman = p
            cp = subprocess.run(p.argv("load", "-q", "-i", save_tar), env=p.env, capture_output=True)
            check(cp, "podman load")

    def name(self, prefix: str) -> str:
        with self.lock:
            self.n += 1
            return f"{prefix}{os.getpid()}-{self.n}"

    def ctr_run(self) -> tuple[float, float]:
        d = self.containerd
        assert d is not None
        name = self.name("r")
        argv = d.ctr(
            "run",
            "--rm",
            "--seccomp",
            "--runc-root",
            d.runc_root,
            "--fifo-dir",
            d.fifo_dir,
            self.ctr_image,
            name,
            "true",
        )
        return timed_child(argv, peerd.env(), "ctr run --rm")

    def podman_run(self) -> tuple[float, float]:
        p = self.podman
        assert p is not None
        return timed_child(p.argv("run", "--rm", "--network", "none", "busybox", "true"), p.env, "podman run")

    def ctr_write(self, out: str) -> tuple[float, int]:
        d = self.containerd
        assert d is not None
        argv = d.ctr(
            "run",
            "--rm",
            "--seccomp",
            "--runc-root",
            d.runc_root,
            "--fifo-dir",
            d.fifo_dir,
            self.ctr_image,
            self.name("w"),
            "sh",
            "-c",
            WRITER,
        )
        return stream_to(out, argv, peerd.env())

    def podman_write(self, out: str) -> tuple[float, int]:
        p = self.podman
        assert p is not None
        argv = p.argv("run", "--rm", "--network", "none", "busybox", "sh", "-c", WRITER)
        return stream_to(out, argv, p.env)

    def stop(self) -> list[str]:
        found = []
        if self.containerd is not None:
            self.containerd.stop()
            found += peerd.sweep(self.containerd.base)
        if self.podman is not None:
            found += peerd.sweep(self.podman.base)
        return found


# ============================================================================ the benchmarks


def bench_single(series: list[Series], rounds: int, warmups: int) -> None:
    for _ in range(warmups):
        for s in series:
            s.fn()
    note(f"single starts: {rounds} rounds of {len(series)} commands, interleaved")
    for r in range(rounds):
        k = r % len(series)
        for s in series[k:] + series[:k]:
            s.fn()


def batch_tug_cli(d: Tugd, clients: int, batch: int) -> tuple[float, float]:
    jobs = [lambda: run_cmd(d.argv("run", "-d", "busybox", "sleep", "1000")) for _ in range(batch)]
    t_start, ids = in_parallel(clients, jobs)
    d.created.update(ids)
    t_rm, _ = in_parallel(clients, [lambda i=i: run_cmd(d.argv("rm", "-f", i)) for i in ids])
    d.created.difference_update(ids)
    return t_start, t_rm


def batch_tug_api(d: Tugd, clients: int, batch: int) -> tuple[float, float]:
    local = threading.local()
    opened: list[Client] = []
    lock = threading.Lock()

    def conn() -> Client:
        c: Client | None = getattr(local, "client", None)
        if c is None:
            c = local.client = Client(d.socket)
            with lock:
                opened.append(c)
        return c

    def start() -> str:
        cid = str(conn().call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"])
        conn().call("container.start", {"id": cid})
        return cid

    try:
        t_start, ids = in_parallel(clients, [start] * batch)
        d.created.update(ids)
        jobs = [lambda cid=cid: conn().call("container.delete", {"id": cid, "force": True}) for cid in ids]
        t_rm, _ = in_parallel(clients, jobs)
        d.created.difference_update(ids)
    finally:
        for c in opened:
            c.close()
    return t_start, t_rm


def batch_ctr(peers: Peers, clients: int, batch: int) -> tuple[float, float]:
    d = peers.containerd
    assert d is not None
    e = peerd.env()
    names = [peers.name("d") for _ in range(batch)]

    def start(n: str) -> None:
        argv = d.ctr(
            "run",
            "-d",
            "--seccomp",
            "--null-io",
            "--runc-root",
            d.runc_root,
            "--fifo-dir",
            d.fifo_dir,
            peers.ctr_image,
            n,
        )
        run_env([*argv, "sleep", "1000"], e)

    def rm(n: str) -> None:
        run_env(d.ctr("task", "rm", "-f", n), e)
        run_env(d.ctr("containers", "rm", n), e)

    t_start, _ = in_parallel(clients, [lambda n=n: start(n) for n in names])
    t_rm, _ = in_parallel(clients, [lambda n=n: rm(n) for n in names])
    return t_start, t_rm


def batch_podman(peers: Peers, clients: int, batch: int) -> tuple[float, float]:
    p = peers.podman
    assert p is not None
    names = [peers.name("p") for _ in range(batch)]
    argv = ["run", "-d", "--network", "none", "--name"]
    jobs = [lambda n=n: run_env(p.argv(*argv, n, "busybox", "sleep", "1000"), p.env) for n in names]
    t_start, _ = in_parallel(clients, jobs)
    rm_jobs = [lambda n=n: run_env(p.argv("rm", "-f", "-t", "0", n), p.env) for n in names]
    t_rm, _ = in_parallel(clients, rm_jobs)
    return t_start, t_rm


def run_env(argv: list[str], environ: dict[str, str]) -> None:
    # No pipes on stdout: a detached container could inherit them and hold them open.
    dev = subprocess.DEVNULL
    err = subprocess.PIPE
    cp = subprocess.run(argv, env=environ, stdin=dev, stdout=dev, stderr=err, timeout=300, check=False)
    check(cp, " ".join(os.path.basename(a) for a in argv[:1]) + " " + " ".join(argv[-4:]))


def bench_stream(
    cases: dict[str, Callable[[str], tuple[float, int]]], out: str, rounds: int
) -> dict[str, list[float]]:
    """Each case writes STREAM_BYTES to ``out`` (its stdout), interleaved; every output is
    checked by size and sha256 (a wrong one raises: no figure from a broken stream)."""
    digest = expected_digest(0, STREAM_BYTES)
    res: dict[str, list[float]] = {k: [] for k in cases}
    keys = list(cases)
    note(f"foreground streams: {rounds} rounds of {len(keys)} commands, 100 MiB each")
    for r in range(rounds):
        k = r % len(keys)
        for key in keys[k:] + keys[:k]:
            t, _ = cases[key](out)
            size, dig = file_digest(out)
            if size != STREAM_BYTES or dig != digest:
                raise RuntimeError(f"{key}: wrote {size} bytes, sha256 {dig[:12]}, not the 100 MiB expected")
            res[key].append(t)
            os.unlink(out)
    return res


def procs_named(comm: str, mentioning: str) -> list[int]:
    """Pids whose /proc/PID/comm is ``comm`` and whose command line mentions ``mentioning``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                if f.read().strip() != comm:
                    continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if mentioning.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def pss_of(pids: list[int]) -> list[int]:
    return [smaps_rollup(p)["Pss"] for p in pids]


def shim_tug(d: Tugd, n: int) -> list[int]:
    cids = [d.run_detached("busybox", "sleep", "1000") for _ in range(n)]
    try:
        time.sleep(1.0)  # settle, as bench/run.py does
        return pss_of([int(d.inspect(c)["shim_pid"]) for c in cids])
    finally:
        d.rm(*cids)


def shim_ctr(peers: Peers, n: int) -> list[int]:
    d = peers.containerd
    assert d is not None
    e = peerd.env()
    names = [peers.name("m") for _ in range(n)]
    started: list[str] = []
    try:
        for nm in names:
            argv = d.ctr(
                "run", "-d", "--seccomp", "--null-io", "--runc-root", d.runc_root, "--fifo-dir", d.fifo_dir
            )
            run_env([*argv, peers.ctr_image, nm, "sleep", "1000"], e)
            started.append(nm)
        time.sleep(1.0)
        pids = procs_named("containerd-shim", d.sock)  # comm is cut to 15 bytes
        if len(pids) != n:
            raise RuntimeError(f"found {len(pids)} containerd-shim-runc-v2 for {n} containers")
        return pss_of(pids)
    finally:
        for nm in started:
            run_env(d.ctr("task", "rm", "-f", nm), e)
            run_env(d.ctr("containers", "rm", nm), e)


def shim_podman(peers: Peers, n: int) -> list[int]:
    p = peers.podman
    assert p is not None
    names = [peers.name("m") for _ in range(n)]
    started: list[str] = []
    try:
        for nm in names:
            run_env(p.argv("run", "-d", "--network", "none", "--name", nm, "busybox", "sleep", "1000"), p.env)
            started.append(nm)
        time.sleep(1.0)
        pids = procs_named("conmon", p.base)
        if len(pids) != n:
            raise RuntimeError(f"found {len(pids)} conmon for {n} containers")
        return pss_of(pids)
    finally:
        if started:
            run_env(p.argv("rm", "-f", "-t", "0", *started), p.env)


# ============================================================================ report


def report_single(series: list[Series], missing: dict[str, str], seccomp: bool) -> list[str]:
    base = median(next(s for s in series if s.label == "runc").wall)
    out = [
        "### One container, `true`, no network, removed after (ms)",
        "",
        "| command | runs | median | p90 | min | median / runc same spec | client CPU (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in series:
        m = median(s.wall)
        out.append(
            f"| {s.what} | {len(s.wall)} | {ms(m)} | {ms(p90(s.wall))} | {ms(min(s.wall))} | "
            f"{m / base:.2f}x | {ms(median(s.cpu))} |"
        )
    for label, why in missing.items():
        out.append(f"| {label}: **missing** ({why}) | 0 | - | - | - | - | - |")
    out += [
        "",
        f"runc runs tugd's own config.json (seccomp profile {'included' if seccomp else 'ABSENT'}) "
        "on a plain directory; tug and the peers on an overlay snapshot of the same image.",
    ]
    return out


def report_batches(res: dict[str, list[tuple[float, float]]], batch: int, clients: int) -> list[str]:
    out = [
        f"### {batch} detached starts by {clients} clients, and their removal (s, median of rounds)",
        "",
        "| path | rounds | start all (median) | start all (min) | remove all (median) | remove all (min) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, rs in res.items():
        starts = [r[0] for r in rs]
        rms = [r[1] for r in rs]
        out.append(
            f"| {label} | {len(rs)} | {median(starts):.2f} | {min(starts):.2f} | "
            f"{median(rms):.2f} | {min(rms):.2f} |"
        )
    return out


def report_stream(res: dict[str, list[float]], rounds: int) -> list[str]:
    out = [
        f"### Foreground `run ... > file`, 100 MiB of output ({rounds} rounds, "
        "each output's size and sha256 checked)",
        "",
        "| command | runs | median s | MB/s at the median | MB/s range (min-max) |",
        "|---|---:|---:|---:|---|",
    ]
    for k, ts in res.items():
        rates = [STREAM_BYTES / t / 1e6 for t in ts]
        out.append(
            f"| {k} | {len(ts)} | {median(ts):.2f} | {STREAM_BYTES / median(ts) / 1e6:.0f} | "
            f"{min(rates):.0f}-{max(rates):.0f} |"
        )
    return out


def report_shims(res: dict[str, list[int]], n: int) -> list[str]:
    out = [
        f"### Shim memory: PSS from `/proc/PID/smaps_rollup`, {n} `sleep` containers running at once",
        "",
        "| shim | shims | average PSS | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, kb in res.items():
        out.append(
            f"| {k} | {len(kb)} | {sum(kb) / len(kb) / 1024:.2f} MiB | "
            f"{min(kb) / 1024:.2f} | {max(kb) / 1024:.2f} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds of single starts")
    ap.add_argument("--warmups", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50, help="detached containers per batch (0: skip)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--batch-rounds", type=int, default=3)
    ap.add_argument("--stream-rounds", type=int, default=3, help="rounds of the 100 MiB foreground output")
    ap.add_argument("--shims", type=int, default=20, help="containers running for the shim PSS average")
    ap.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {','.join(PARTS)} (default all; bridge needs single)",
    )
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        ap.error(f"unknown parts: {sorted(parts - set(PARTS))}; choose from {','.join(PARTS)}")
    if args.batch == 0:
        parts.discard("batch")
    if os.geteuid() != 0:
        print("bench/start.py: runs containers: needs root", file=sys.stderr)
        return 2
    base = short_tempdir()
    tugd = Tugd(os.path.join(base, "t"), "template")
    # tugd in a network namespace of its own (as bench/bridge.py's): its bridge, veths and nft
    # tables never touch the host's network, and go with the namespace at the end
    netns = peerd.Netns(f"tb14{os.getpid()}")
    tugd.wrap = netns.enter([])
    peers: Peers | None = None
    same: RuncSameSpec | None = None
    api: Api | None = None
    problems: list[str] = []
    try:
        out = ["## Machine", "", *machine_info(), ""]
        tar_path = os.path.join(base, "busybox.tar")
        build_tar(tar_path)
        tugd.start()
        tugd.tug("import", tar_path, "busybox")
        save_tar = os.path.join(base, "save.tar")
        tugd.tug("save", "-o", save_tar, "busybox")
        cid = tugd.tug("create", "busybox", "true").strip()
        same = RuncSameSpec(base, tugd, cid, tar_path)
        tugd.tug("rm", cid)
        peers = Peers(base, save_tar)
        api = Api(tugd)

        def tug_cli() -> tuple[float, float]:
            return timed_child(tugd.argv("run", "--rm", "busybox", "true"), what="tug run --rm")

        series: list[Series] = []

        def add(label: str, what: str, fn: Callable[[], tuple[float, float]]) -> None:
            s = Series(label, what, lambda: None)

            def go() -> None:
                w, c = fn()
                s.wall.append(w)
                s.cpu.append(c)

            s.fn = go
            series.append(s)

        def tug_bridge() -> tuple[float, float]:
            argv = tugd.argv("run", "--rm", "--network", "bridge", "busybox", "true")
            return timed_child(argv, what="tug run --rm --network bridge")

        add("runc", "`runc run` of tugd's spec (same spec)", same.run)
        add("tug CLI", "`tug run --rm busybox true`", tug_cli)
        add("tug API", "API: create {auto_remove} + wait {removed} + start, in-process", api.run_rm)
        if "bridge" in parts:
            add(
                "tug bridge",
                "`tug run --rm --network bridge busybox true` (tugd in its own netns)",
                tug_bridge,
            )
        if peers.containerd is not None:
            add("ctr", "`ctr run --rm --seccomp` (containerd 1.6, runc)", peers.ctr_run)
        if peers.podman is not None:
            add("podman", "`podman run --rm --network none` (podman 4.3, conmon, runc)", peers.podman_run)
        if "single" in parts:
            bench_single(series, args.rounds, args.warmups)
            for s in series:
                s.wall = s.wall[args.warmups :]
                s.cpu = s.cpu[args.warmups :]
            out += [*report_single(series, peers.missing, same.seccomp), ""]
        print("\n".join(out), flush=True)

        if "stream" in parts:
            cases: dict[str, Callable[[str], tuple[float, int]]] = {
                "`runc run > file` (tugd's spec)": same.write,
                "`tug run --rm busybox sh -c ... > file`": lambda o: stream_to(
                    o, tugd.argv("run", "--rm", "busybox", "sh", "-c", WRITER)
                ),
            }
            if peers.containerd is not None:
                cases["`ctr run --rm --seccomp ... > file`"] = peers.ctr_write
            if peers.podman is not None:
                cases["`podman run --rm --network none ... > file`"] = peers.podman_write
            sres = bench_stream(cases, os.path.join(base, "out"), args.stream_rounds)
            print("\n".join([*report_stream(sres, args.stream_rounds), ""]), flush=True)

        if "shim" in parts:
            note(f"shim memory: {args.shims} containers each")
            shims: dict[str, list[int]] = {"tug-shim": shim_tug(tugd, args.shims)}
            if peers.containerd is not None:
                shims["containerd-shim-runc-v2"] = shim_ctr(peers, args.shims)
            if peers.podman is not None:
                shims["conmon (podman)"] = shim_podman(peers, args.shims)
            print("\n".join([*report_shims(shims, args.shims), ""]), flush=True)

        if "batch" in parts:
            batches: dict[str, Callable[[], tuple[float, float]]] = {
                "`tug run -d` / `tug rm -f` (CLI)": lambda: batch_tug_cli(tugd, args.clients, args.batch),
                "API create + start / delete {force}": lambda: batch_tug_api(tugd, args.clients, args.batch),
            }
            if peers.containerd is not None:
                batches["`ctr run -d --seccomp` / `ctr task rm -f` + `ctr c rm`"] = lambda: batch_ctr(
                    peers, args.clients, args.batch
                )
            if peers.podman is not None:
                batches["`podman run -d --network none` / `podman rm -f -t 0`"] = lambda: batch_podman(
                    peers, args.clients, args.batch
                )
            res: dict[str, list[tuple[float, float]]] = {k: [] for k in batches}
            keys = list(batches)
            for r in range(args.batch_rounds):
                note(f"batches: round {r + 1}/{args.batch_rounds}")
                for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                    res[k].append(batches[k]())
            lines = report_batches(res, args.batch, args.clients)
            lines += [f"| {k}: **missing** ({why}) | 0 | - | - | - | - |" for k, why in peers.missing.items()]
            print("\n".join([*lines, ""]), flush=True)
        with open("/proc/loadavg") as f:
            print(f"Load average at the end: {' '.join(f.read().split()[:3])}")
        left = same.leftovers()
        if left:
            problems.append(f"runc containers left: {left}")
    finally:
        if api is not None:
            api.client.close()
        if peers is not None:
            problems += [f"peer leftover {x}" for x in peers.stop()]
        if same is not None:
            for name in same.leftovers():
                subprocess.run([RUNC, "--root", same.root, "delete", "-f", name], check=False)
        subprocess.run(["rmdir", "/sys/fs/cgroup/pids/tugbench"], check=False, capture_output=True)
        problems += cleanup(base, [tugd], None)
        netns.delete()
        for p in problems:
            note(f"cleanup: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
