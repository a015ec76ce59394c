"""The memory floor of a Python shim forked from a pre-imported template.

Usage (from the repository):

    .venv/bin/python bench/pss_floor.py [--children 20]

It builds a template the way ``tug-shim template`` does (imports ``shimd.server``, anyio and its
asyncio backend, runs ``shimd.server.warm_up``, ``gc.collect()``, ``gc.freeze()``) and forks
``--children`` children three ways, measuring the average PSS and private dirty memory of the
children (``/proc/PID/smaps_rollup``) two seconds after the fork:

- ``sleep``: each child only calls ``time.sleep``: the cost of the fork itself.
- ``loop``: each child runs an anyio event loop that sleeps (``anyio.run``): the least any
  asyncio-based shim can cost.
- ``fill``: as ``loop``, but the template first fills the free slots of its memory pools (so
  that a child's new objects land in fresh pages rather than in pages shared with the template).

A real shim costs more than ``loop``: it also runs runc, serves its socket, drains the pipes and
writes the log. Python 3.11 writes to every object it touches (reference counts) and to the code
object of every function it runs (the adaptive interpreter's counters), so each shared page a
child touches becomes private; that, not the imports, is what the figures below measure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import smaps_rollup as rollup


def measure(mode: str, children: int) -> tuple[float, float, float]:
    """Fork a template of our own in a child (so each mode starts from a fresh one)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            result = _template(mode, children)
            os.write(w, (" ".join(str(x) for x in result) + "\n").encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        line = f.read()
    os.waitpid(pid, 0)
    pss, dirty, tmpl = (float(x) for x in line.split())
    return pss, dirty, tmpl


def _template(mode: str, children: int) -> tuple[float, float, float]:
    import anyio

    from shimd import server

    importlib.import_module("anyio._backends._asyncio")
    anyio.run(server.warm_up)
    keep = []
    if mode == "fill":
        for size in range(1, 64):
            keep.extend(bytes(size * 8) for _ in range(2000))
    gc.collect()
    gc.freeze()
    kids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            if mode == "sleep":
                time.sleep(60)
            else:

                async def idle() -> None:
                    await anyio.sleep(60)

                anyio.run(idle)
            os._exit(0)
        kids.append(pid)
    time.sleep(2)
    figures = [rollup(k) for k in kids]
    tmpl = rollup(os.getpid())["Pss"]
    for k in kids:
        os.kill(k, 9)
        os.waitpid(k, 0)
    n = len(figures)
    return (
        sum(f["Pss"] for f in figures) / n / 1024,
        sum(f["Private_Dirty"] for f in figures) / n / 1024,
        tmpl / 1024,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--children", type=int, default=20)
    args = ap.parse_args()
    print(f"Children forked from a shim template, average of {args.children}:\n")
    print("| child | PSS MiB | private dirty MiB | template PSS MiB |")
    print("|---|---|---|---|")
    for mode in ("sleep", "loop", "fill"):
        pss, dirty, tmpl = measure(mode, args.children)
        print(f"| {mode} | {pss:.2f} | {dirty:.2f} | {tmpl:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
