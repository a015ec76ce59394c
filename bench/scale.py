"""Tugboat at scale, side by side with raw runc in one run: parallel starts, stop and remove,
density (hundreds of running containers) and API latency.

Usage (as root, from the repository):

    .venv/bin/python bench/scale.py [--batch 50] [--clients 8] [--rounds 3] [--density 500]
                                    [--info-calls 1000] [--info-conns 50]

What it measures (docs/benchmarks.md, "Scale", has results and how to read them):

1. Parallel starts: ``--batch`` detached ``sleep`` containers started by ``--clients`` client
   threads at once, each running the whole ``tug run -d busybox sleep 1000`` command; beside it
   the same number of ``runc run --detach`` of the same rootfs with the same parallelism. Then
   all of them stopped and removed, by the same number of clients: ``tug rm -f ID`` against
   ``runc delete -f ID``. Wall time of each batch, median over ``--rounds`` rounds (interleaved).
2. Density: ``--density`` ``sleep`` containers running at once (started 8 at a time). On the way:
   the average PSS of the first 20 shims, tugd's own PSS with 100 running, tugd's and all
   shims' at the end; then, with all of them running, ``tug ps`` (the whole command) and
   ``tug ps -a`` 20 times each.
3. API latency with all of them running: ``container.list`` called 200 times on one
   connection (one at a time); then ``--info-calls`` ``system.info`` calls sent at once from
   ``--info-conns`` connections (each connection sends its share without waiting); p50 and p99 of
   the time from send to answer.

Everything runs under one short temporary directory and is removed at the end (containers,
tugd, runc state). Progress goes to stderr, Markdown to stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run import (
    RUNC,
    Runc,
    Tugd,
    build_tar,
    check,
    cleanup,
    machine_info,
    note,
    short_tempdir,
    smaps_rollup,
)


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-len(s) * int(q * 100) // 100) - 1))
    return s[k]


def in_parallel(clients: int, jobs: list[Callable[[], Any]]) -> tuple[float, list[Any]]:
    """Run ``jobs`` on ``clients`` threads; the wall time of the whole batch and the results."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda job: job(), jobs))
    return time.perf_counter() - t0, results


def run_cmd(argv: list[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    check(cp, " ".join(argv[:4]))
    return cp.stdout.decode().strip()


def api_batch(d: Tugd, clients: int, batch: int, out: dict[str, list[float]]) -> None:
    """The batch through the API: one connection per client thread, create + start (what
    ``tug run -d`` sends), then delete with force; no CLI process per container."""
    from tugwire.syncclient import Client

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

    def api_run() -> str:
        cid = str(conn().call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"])
        conn().call("container.start", {"id": cid})
        return cid

    try:
        took, ids = in_parallel(clients, [api_run] * batch)
        out["api_start"].append(took)
        d.created.update(ids)
        rm_jobs = [lambda cid=cid: conn().call("container.delete", {"id": cid, "force": True}) for cid in ids]
        took, _ = in_parallel(clients, rm_jobs)
        out["api_rm"].append(took)
        d.created.difference_update(ids)
    finally:
        for c in opened:
            c.close()


def bench_batches(d: Tugd, runc: Runc, batch: int, clients: int, rounds: int) -> dict[str, list[float]]:
    bundle = runc.bundle("sleep", ["sleep", "1000"])
    out: dict[str, list[float]] = {
        "tug_start": [],
        "tug_rm": [],
        "api_start": [],
        "api_rm": [],
        "runc_start": [],
        "runc_rm": [],
    }
    order = ["tug", "api", "runc"]
    jobs: list[Callable[[], Any]]
    for r in range(rounds):
        note(f"batches: round {r + 1}/{rounds}")
        for which in order[r % 3 :] + order[: r % 3]:
            if which == "api":
                api_batch(d, clients, batch, out)
            elif which == "tug":
                jobs = [
                    lambda: run_cmd(d.argv("run", "-d", "busybox", "sleep", "1000")) for _ in range(batch)
                ]
                took, ids = in_parallel(clients, jobs)
                out["tug_start"].append(took)
                d.created.update(ids)
                took, _ = in_parallel(clients, [lambda i=i: run_cmd(d.argv("rm", "-f", i)) for i in ids])
                out["tug_rm"].append(took)
                d.created.difference_update(ids)
            else:
                names = [f"s{r}-{i}" for i in range(batch)]

                def start(name: str) -> str:
                    # No pipes: a detached container inherits runc's stdio and would hold them open.
                    rc = subprocess.call(
                        [RUNC, "--root", runc.root, "run", "--detach", "--bundle", bundle, name],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        timeout=300,
                    )
                    if rc != 0:
                        raise RuntimeError(f"runc run --detach {name} exited with {rc}")
                    return name

                took, _ = in_parallel(clients, [lambda n=n: start(n) for n in names])
                out["runc_start"].append(took)
                took, _ = in_parallel(
                    clients,
                    [lambda n=n: run_cmd([RUNC, "--root", runc.root, "delete", "-f", n]) for n in names],
                )
                out["runc_rm"].append(took)
    return out


def pss_kb(pid: int) -> int:
    try:
        return smaps_rollup(pid).get("Pss", 0)
    except OSError:
        return 0


def bench_density(d: Tugd, n: int, clients: int) -> dict[str, Any]:
    from tugwire.syncclient import Client

    res: dict[str, Any] = {}
    ids: list[str] = []
    t0 = time.perf_counter()
    while len(ids) < n:
        k = min(clients, n - len(ids))
        _, new = in_parallel(
            clients, [lambda: run_cmd(d.argv("run", "-d", "busybox", "sleep", "100000")) for _ in range(k)]
        )
        ids += new
        d.created.update(new)
        if len(ids) >= 20 and "shim20_pss_kb" not in res:
            time.sleep(1)
            with Client(d.socket) as c:
                pids = [int(c.call("container.inspect", {"id": i})["shim_pid"]) for i in ids[:20]]
            res["shim20_pss_kb"] = statistics.mean(pss_kb(p) for p in pids)
        if len(ids) >= 100 and "tugd100_pss_kb" not in res:
            res["tugd100_pss_kb"] = pss_kb(d.pid)
        if len(ids) % 100 < clients:
            note(f"density: {len(ids)} running ({time.perf_counter() - t0:.0f} s)")
    res["start_all_s"] = time.perf_counter() - t0
    time.sleep(2)
    with Client(d.socket) as c:
        listed = c.call("container.list", {"all": False})
        running = [x for x in listed if x["state"] == "running"]
        res["running"] = len(running)
        shim_pids = [int(c.call("container.inspect", {"id": i})["shim_pid"]) for i in ids]
    res["shims_avg_pss_kb"] = statistics.mean(pss_kb(p) for p in shim_pids)
    res["tugd_pss_kb"] = pss_kb(d.pid)
    tmpl = d.template_pid()
    res["template_pss_kb"] = pss_kb(tmpl) if tmpl else 0
    ps: list[float] = []
    ps_a: list[float] = []
    for _ in range(20):
        for argv, into in ((d.argv("ps"), ps), (d.argv("ps", "-a"), ps_a)):
            t = time.perf_counter()
            lines = run_cmd(argv).splitlines()
            into.append(time.perf_counter() - t)
            if len(lines) != n + 1:
                raise RuntimeError(f"tug ps listed {len(lines) - 1} containers, not {n}")
    res["ps"] = ps
    res["ps_a"] = ps_a
    res["ids"] = ids
    return res


def bench_api(d: Tugd, info_calls: int, info_conns: int) -> dict[str, list[float]]:
    import anyio

    from tugwire import jsonrpc
    from tugwire.syncclient import Client

    lst: list[float] = []
    with Client(d.socket) as c:
        for _ in range(200):
            t = time.perf_counter()
            c.call("container.list", {"all": True})
            lst.append(time.perf_counter() - t)

    info: list[float] = []

    async def one_conn(share: int, ready: anyio.Event) -> None:
        async with jsonrpc.connect(d.socket, timeout=30) as client:
            await ready.wait()

            async def one() -> None:
                t = time.perf_counter()
                await client.call("system.info", {})
                info.append(time.perf_counter() - t)

            async with anyio.create_task_group() as tg:
                for _ in range(share):
                    tg.start_soon(one)

    async def main() -> None:
        ready = anyio.Event()
        async with anyio.create_task_group() as tg:
            for i in range(info_conns):
                share = info_calls // info_conns + (1 if i < info_calls % info_conns else 0)
                tg.start_soon(one_conn, share, ready)
            await anyio.sleep(0.5)  # every connection open before the first call
            ready.set()

    anyio.run(main)
    if len(info) != info_calls:
        raise RuntimeError(f"{len(info)} of {info_calls} system.info calls answered")
    return {"list": lst, "info": info}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--density", type=int, default=500)
    ap.add_argument("--info-calls", type=int, default=1000)
    ap.add_argument("--info-conns", type=int, default=50)
    ap.add_argument("--skip-batches", action="store_true")
    args = ap.parse_args(argv)
    base = short_tempdir()
    d = Tugd(os.path.join(base, "t"), "template")
    runc: Runc | None = None
    problems: list[str] = []
    try:
        tar = os.path.join(base, "busybox.tar")
        build_tar(tar)
        d.start()
        d.tug("import", tar, "busybox")
        runc = Runc(base, tar)
        lines = ["## Scale (`bench/scale.py`)", ""]
        lines.append(
            "    .venv/bin/python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
        )
        lines += ["", *machine_info(), ""]
        if not args.skip_batches:
            b = bench_batches(d, runc, args.batch, args.clients, args.rounds)
            med = {k: statistics.median(v) for k, v in b.items()}
            lines += [
                f"### {args.batch} detached containers, {args.clients} clients (median of {args.rounds})",
                "",
                "| what | tug | runc | ratio |",
                "|---|---|---|---|",
                f"| start (`tug run -d` / `runc run --detach`) | {med['tug_start']:.2f} s "
                f"| {med['runc_start']:.2f} s | {med['tug_start'] / med['runc_start']:.2f}x |",
                f"| stop and remove (`tug rm -f` / `runc delete -f`) | {med['tug_rm']:.2f} s "
                f"| {med['runc_rm']:.2f} s | {med['tug_rm'] / med['runc_rm']:.2f}x |",
                f"| start through the API (create + start, {args.clients} connections) "
                f"| {med['api_start']:.2f} s "
                f"| {med['runc_start']:.2f} s | {med['api_start'] / med['runc_start']:.2f}x |",
                f"| remove through the API (delete, force) | {med['api_rm']:.2f} s "
                f"| {med['runc_rm']:.2f} s | {med['api_rm'] / med['runc_rm']:.2f}x |",
                "",
                "All rounds (s): "
                + "; ".join(f"{k} " + ", ".join(f"{x:.2f}" for x in v) for k, v in b.items()),
                "",
            ]
        note(f"density: starting {args.density} containers")
        dens = bench_density(d, args.density, args.clients)
        api = bench_api(d, args.info_calls, args.info_conns)
        lines += [
            f"### {args.density} running `sleep` containers",
            "",
            "| what | figure |",
            "|---|---|",
            f"| running at once | {dens['running']} (started in {dens['start_all_s']:.0f} s, 8 at a time) |",
            f"| shim PSS, average of the first 20 (20 running) "
            f"| {dens.get('shim20_pss_kb', 0) / 1024:.2f} MiB |",
            f"| shim PSS, average of all {args.density} | {dens['shims_avg_pss_kb'] / 1024:.2f} MiB |",
            f"| tugd PSS with 100 running | {dens.get('tugd100_pss_kb', 0) / 1024:.1f} MiB |",
            f"| tugd PSS with {args.density} running | {dens['tugd_pss_kb'] / 1024:.1f} MiB |",
            f"| shim template PSS | {dens['template_pss_kb'] / 1024:.1f} MiB |",
            f"| `tug ps` (whole command), median / p90 of 20 | {statistics.median(dens['ps']) * 1000:.1f} / "
            f"{pct(dens['ps'], 0.9) * 1000:.1f} ms |",
            f"| `tug ps -a`, median / p90 of 20 | {statistics.median(dens['ps_a']) * 1000:.1f} / "
            f"{pct(dens['ps_a'], 0.9) * 1000:.1f} ms |",
            f"| `container.list` over one connection, p50 / p99 of 200 | "
            f"{pct(api['list'], 0.5) * 1000:.2f} / {pct(api['list'], 0.99) * 1000:.2f} ms |",
            f"| {args.info_calls} `system.info` at once from {args.info_conns} connections, p50 / p99 | "
            f"{pct(api['info'], 0.5) * 1000:.1f} / {pct(api['info'], 0.99) * 1000:.1f} ms |",
            "",
        ]
        note("removing")
        ids = dens["ids"]
        for i in range(0, len(ids), 50):
            d.rm(*ids[i : i + 50])
        print("\n".join(lines))
    finally:
        problems = cleanup(base, [d], runc)
    for p in problems:
        note(f"cleanup: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
