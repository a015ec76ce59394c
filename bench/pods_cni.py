"""The cost of a pod's network: ``pod.create`` + ``pod.stop`` + ``pod.remove`` over tugd's JSON-RPC
API with the built-in pod network and with CNI (Debian's ``bridge`` + ``host-local`` + ``portmap``
from ``/usr/lib/cni``), two tugd side by side in one network namespace this script makes,
interleaved (alternating which goes first).

Usage (as root, from the repository):

    .venv/bin/python bench/pods_cni.py [--rounds N]

Reported: the median and p90 wall time of each step, and the CPU time per pod life of tugd and
of the children it waited for (utime + stime + cutime + cstime: the CNI plugins, ``nft``,
``unshare``). Markdown on stdout, progress on stderr; see docs/cri.md, "Pod networking, CNI".
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MODES = ("builtin", "cni")


def note(msg: str) -> None:
    print(f"[pods_cni] {msg}", file=sys.stderr, flush=True)


def cpu_ms(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (its waited-for children included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")


def conflist(base: str) -> str:
    conf_dir = os.path.join(base, "net.d")
    os.makedirs(conf_dir)
    doc = {
        "cniVersion": "1.0.0",
        "name": "benchcni",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "tbb" + secrets.token_hex(3),
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.232.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": os.path.join(base, "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    with open(os.path.join(conf_dir, "10-bench.conflist"), "w") as f:
        json.dump(doc, f)
    return conf_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="pod lives per mode (default 30)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/pods_cni.py needs root (namespaces)", file=sys.stderr)
        return 2
    from tests.conftest import Daemon

    base = tempfile.mkdtemp(prefix="tbpc", dir="/tmp")
    ns = f"tbpc{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    conf_dir = conflist(base)
    daemons = {
        "builtin": Daemon(os.path.join(base, "b"), extra=["--metrics-address", "off"], netns=ns),
        "cni": Daemon(
            os.path.join(base, "c"),
            extra=["--metrics-address", "off", "--pod-network", "cni", "--cni-conf-dir", conf_dir],
            netns=ns,
        ),
    }
    steps = {m: {"create": [], "stop": [], "remove": []} for m in MODES}
    cpu = dict.fromkeys(MODES, 0.0)
    try:
        for d in daemons.values():
            os.makedirs(d.base)
            d.start()
        for d in daemons.values():
            for i in range(3):  # the pod network, pyroute2, the first nft table; the plugins' pages
                p = d.call("pod.create", {"name": f"warm{i}"})
                d.call("pod.remove", {"id": p["id"]})
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                d = daemons[mode]
                assert d.proc is not None
                c0 = cpu_ms(d.proc.pid)
                t0 = time.perf_counter()
                p = d.call("pod.create", {"name": f"p{r}"})
                t1 = time.perf_counter()
                d.call("pod.stop", {"id": p["id"]})
                t2 = time.perf_counter()
                d.call("pod.remove", {"id": p["id"]})
                t3 = time.perf_counter()
                cpu[mode] += cpu_ms(d.proc.pid) - c0
                for step, s in (("create", t1 - t0), ("stop", t2 - t1), ("remove", t3 - t2)):
                    steps[mode][step].append(s * 1000)
            if (r + 1) % 10 == 0:
                note(f"{r + 1}/{args.rounds} rounds")
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    finally:
        for d in daemons.values():
            problems = d.cleanup()
            if problems:
                note(f"left behind: {problems}")
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"pod.create / pod.stop / pod.remove over JSON-RPC, {args.rounds} interleaved rounds (ms), "
        f"load average {' '.join(load)}:\n"
    )
    print(
        "| pod network | create median (p90) | stop median (p90) | remove median (p90) | CPU per pod life |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode in MODES:
        cells = []
        for step in ("create", "stop", "remove"):
            v = sorted(steps[mode][step])
            cells.append(f"{statistics.median(v):.1f} ({v[int(len(v) * 0.9) - 1]:.1f})")
        print(f"| {mode} | {' | '.join(cells)} | {cpu[mode] / args.rounds:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
