"""The start path, A/B between trees: wall time and tugd's own CPU per container.

Usage (as root, from the repository):

    .venv/bin/python bench/startpath.py [--rounds N] [--cycles N] [TREE ...]

Each TREE is a checkout with its own ``.venv`` (default: this one). One tugd per tree, with its
roots under one short temporary directory, the busybox image imported into each. Then, round by
round, in an order that rotates every round, for each tugd:

- ``cli``: wall time of ``tug run --rm busybox true`` (that tree's own ``tug``);
- ``api``: wall time of one container through the API from this process (this tree's
  ``tugwire.syncclient``): ``container.create``, then ``container.wait {removed}`` and
  ``container.start`` on one connection, as ``tug run --rm`` sends them (auto-remove set),
  until the wait answers;
- ``cpu``: tugd's utime+stime (``/proc/PID/stat``) over ``--cycles`` API containers, per
  container (the mean over all rounds: the kernel counts in 10 ms ticks): the figure least
  disturbed by a loaded machine; and the ``tug`` process's own CPU time (``RUSAGE_CHILDREN``).

And ``runc`` alone: ``runc run`` of the OCI spec the first tugd wrote (a created container's
``config.json``, its rootfs replaced by the extracted image), the floor of both.

Prints Markdown to stdout; progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import run as benchrun  # noqa: E402  (bench/run.py: Tugd, Runc, the helpers)

from tugwire.syncclient import Client  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


class TreeTugd(benchrun.Tugd):
    """bench/run.py's Tugd, with the binaries of another checkout."""

    def __init__(self, base: str, tree: str) -> None:
        super().__init__(base, "template")
        self.tree = tree
        self.bin = os.path.join(tree, ".venv", "bin")

    def start(self) -> None:
        saved = benchrun.TUGD, benchrun.TUG, benchrun._TUGD_HELP[:]
        benchrun.TUGD, benchrun.TUG = os.path.join(self.bin, "tugd"), os.path.join(self.bin, "tug")
        benchrun._TUGD_HELP.clear()
        try:
            super().start()
        finally:
            benchrun.TUGD, benchrun.TUG = saved[0], saved[1]
            benchrun._TUGD_HELP[:] = saved[2]

    def argv(self, *args: str) -> list[str]:
        return [os.path.join(self.bin, "tug"), "--socket", self.socket, *args]


def api_run(socket_path: str) -> float:
    """One ``run --rm busybox true`` through the API; its wall time."""
    t0 = time.perf_counter()
    with Client(socket_path) as c:
        created = c.call("container.create", {"image": "busybox", "cmd": ["true"], "auto_remove": True})
        cid = created["id"]
        wait = c.stream("container.wait", {"id": cid, "condition": "removed"})
        c.call("container.start", {"id": cid})
        result = wait.wait()
    t = time.perf_counter() - t0
    if not isinstance(result, dict) or result.get("exit_code") != 0:
        raise RuntimeError(f"api run: {result!r}")
    return t


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_run(d: TreeTugd) -> tuple[float, float]:
    """Wall time of ``tug run --rm busybox true`` and the CPU time of the ``tug`` process."""
    c0 = children_cpu()
    t, cp = benchrun.timed(d.argv("run", "--rm", "busybox", "true"), capture_output=True)
    benchrun.check(cp, "tug run --rm")
    return t, children_cpu() - c0


def runc_bundle(d: TreeTugd, runc: benchrun.Runc) -> str:
    """A bundle with the spec tugd wrote for ``busybox true``, on the extracted rootfs."""
    cid = d.tug("create", "busybox", "true").strip()
    try:
        with open(os.path.join(d.root, "containers", cid, "config.json")) as f:
            spec: dict[str, Any] = json.load(f)
    finally:
        d.tug("rm", cid)
    spec["root"] = {"path": runc.rootfs, "readonly": False}
    spec["process"]["terminal"] = False
    # Bind mounts of files in the container's dir (hosts, resolv.conf) went with it: drop them.
    spec["mounts"] = [m for m in spec.get("mounts", []) if not m.get("source", "").startswith(d.root)]
    spec.get("linux", {}).pop("cgroupsPath", None)
    bundle = os.path.join(runc.base, "tugspec")
    os.makedirs(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    return bundle


def run_runc(runc: benchrun.Runc, bundle: str) -> float:
    t, cp = benchrun.timed(runc.argv(bundle), capture_output=True)
    benchrun.check(cp, "runc run")
    return t


def batches(tugds: list[TreeTugd], batch: int, clients: int, rounds: int) -> None:
    """bench/start.py's batches, per tree: ``batch`` detached ``sleep`` containers started by
    ``clients`` threads at once (each tree's ``tug run -d``, then the API's create + start), then
    all removed the same way (``tug rm -f``, ``container.delete {force}``); the trees alternate,
    the order rotating every round. Medians and minimums, seconds."""
    from start import batch_tug_api, batch_tug_cli  # bench/start.py

    res: dict[str, list[tuple[float, float]]] = {}
    jobs: list[tuple[str, Callable[[], tuple[float, float]]]] = []
    for i, d in enumerate(tugds):
        jobs.append((f"cli{i}", lambda d=d: batch_tug_cli(d, clients, batch)))  # type: ignore[misc]
        jobs.append((f"api{i}", lambda d=d: batch_tug_api(d, clients, batch)))  # type: ignore[misc]
    for r in range(rounds):
        shift = r % len(jobs)
        for key, fn in jobs[shift:] + jobs[:shift]:
            res.setdefault(key, []).append(fn())
        benchrun.note(f"batch round {r + 1}/{rounds}")
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"\n{batch} detached containers by {clients} clients, {rounds} rounds; load at the end: {load}\n")
    print("| tree | path | start all, median (min), s | remove all, median (min), s |")
    print("|---|---|---:|---:|")
    for i, d in enumerate(tugds):
        for path in ("cli", "api"):
            got = res[f"{path}{i}"]
            st, rm = [g[0] for g in got], [g[1] for g in got]
            print(
                f"| {d.tree} | {path} | {benchrun.median(st):.2f} ({min(st):.2f}) "
                f"| {benchrun.median(rm):.2f} ({min(rm):.2f}) |"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="*", help="checkouts with a .venv (default: this one)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=10, help="API containers per CPU sample")
    ap.add_argument("--batch", type=int, default=0, help="detached containers per batch (0: none)")
    ap.add_argument("--clients", type=int, default=8, help="parallel clients of a batch")
    ap.add_argument("--batch-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    trees = [os.path.abspath(t) for t in (args.trees or [benchrun.REPO])]
    base = benchrun.short_tempdir()
    tugds: list[TreeTugd] = []
    runc: benchrun.Runc | None = None
    try:
        tar_path = os.path.join(base, "busybox.tar")
        benchrun.build_tar(tar_path)
        for i, tree in enumerate(trees):
            d = TreeTugd(os.path.join(base, f"t{i}"), tree)
            tugds.append(d)
            d.start()
            d.tug("import", tar_path, "busybox")
        runc = benchrun.Runc(base, tar_path)
        bundle = runc_bundle(tugds[0], runc)
        for d in tugds:  # warm-ups
            for _ in range(2):
                cli_run(d)
                api_run(d.socket)
        samples: dict[str, list[float]] = {"runc": []}
        for i in range(len(tugds)):
            for k in ("cli", "clicpu", "api", "cpu"):
                samples[f"{k}{i}"] = []
        for r in range(args.rounds):
            order: list[Callable[[], None]] = []

            def add_runc() -> None:
                samples["runc"].append(run_runc(runc, bundle))  # type: ignore[arg-type]

            order.append(add_runc)
            for i, d in enumerate(tugds):

                def one(i: int = i, d: TreeTugd = d) -> None:
                    wall, cli_cpu = cli_run(d)
                    samples[f"cli{i}"].append(wall)
                    samples[f"clicpu{i}"].append(cli_cpu)
                    c0 = cpu_seconds(d.pid)
                    walls = [api_run(d.socket) for _ in range(args.cycles)]
                    samples[f"cpu{i}"].append((cpu_seconds(d.pid) - c0) / args.cycles)
                    samples[f"api{i}"].append(benchrun.median(walls))

                order.append(one)
            shift = r % len(order)
            for fn in order[shift:] + order[:shift]:
                fn()
            benchrun.note(f"round {r + 1}/{args.rounds}")
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        rr = benchrun.median(samples["runc"])
        print(f"load average at the end: {load}; {args.rounds} rounds, {args.cycles} API cycles each\n")
        print(
            "| tree | CLI `run --rm`, ms (x runc) | API, ms (x runc) | tugd CPU per container, ms "
            "| `tug` process CPU, ms |"
        )
        print("|---|---:|---:|---:|---:|")
        for i, d in enumerate(tugds):
            cli, api = benchrun.median(samples[f"cli{i}"]), benchrun.median(samples[f"api{i}"])
            # Means: CPU times come in clock ticks (10 ms); the mean over every container is exact.
            cpu = sum(samples[f"cpu{i}"]) / len(samples[f"cpu{i}"])
            cli_cpu = sum(samples[f"clicpu{i}"]) / len(samples[f"clicpu{i}"])
            print(
                f"| {d.tree} | {cli * 1000:.1f} ({cli / rr:.2f}x) | {api * 1000:.1f} ({api / rr:.2f}x) "
                f"| {cpu * 1000:.2f} | {cli_cpu * 1000:.1f} |"
            )
        print(f"| runc on tugd's spec | {rr * 1000:.1f} | | | |")
        if args.batch:
            batches(tugds, args.batch, args.clients, args.batch_rounds)
        return 0
    finally:
        problems = benchrun.cleanup(base, list(tugds), runc)
        for p in problems:
            benchrun.note(p)


if __name__ == "__main__":
    sys.exit(main())
