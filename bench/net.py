"""Container networking: TCP throughput and the cost of wiring a container, in one run.

Usage (as root, from the repository):

    .venv/bin/python bench/net.py [--mib N] [--rounds N] [--starts N] [--keep]

Everything happens inside network namespaces this script makes (nothing touches the host's
network): a tugd runs in ``tbbenchXXXX`` (as the tests' do), and a plain veth pair joins two more
namespaces made by hand with ``ip``. Each transfer is this file run as a TCP client
(``--tcp-client``: N MiB in 1 MiB ``sendall``s, half-close, wait for the server's byte count) to
itself as a server (``--tcp-server``: ``recv_into`` to the end, answer the count), both under the
host's ``/usr/bin/python3.11`` (bind-mounted read-only into the containers with /usr and /lib:
the image is busybox only, and busybox's ``nc`` does not close on EOF). The rate is the bytes
over the client's wall time, the median of ``--rounds`` rounds, each running every path once in
an order that rotates every round (after a warm-up round). Paths measured:

1. ``veth``: namespace to namespace over a veth pair made by hand (the floor: no bridge, no NAT).
2. ``container -> container``: two containers on one user-defined network, through its bridge,
   by name.
3. ``published (nft DNAT)``: tugd's namespace (the "host") to a container's ``-p`` port, on the
   bridge's gateway address and on 127.0.0.1 (DNAT in the output hook; route_localnet).
4. ``userland proxy``: the same, through an asyncio proxy (``--proxy``, run in tugd's namespace)
   listening on 127.0.0.1 and copying to the container: what tugd would run per published port
   instead of the nft rule.

Then the cost of the wiring: ``container.start`` latency of ``sleep`` containers on ``none``
against the default ``bridge`` (namespace, veth, addresses, routes, nft table), median of
``--starts``. Markdown on stdout, progress on stderr; see docs/benchmarks.md, "Networks".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")
TUGD = os.path.join(VENV_BIN, "tugd")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
PORT = 5001


def note(msg: str) -> None:
    print(f"[net] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=300)


PY = "/usr/bin/python3.11"  # the host's, stdlib only; bind-mounted into the containers too
HOST_PY_MOUNTS = [
    {"source": "/usr", "destination": "/usr", "readonly": True},
    {"source": "/usr/lib", "destination": "/lib", "readonly": True},
    {"source": "/usr/lib64", "destination": "/lib64", "readonly": True},
    {"source": os.path.join(REPO, "bench"), "destination": "/bench", "readonly": True},
]
CHUNK = 1 << 20


def tcp_server(port: int) -> None:
    """Accept forever; read each connection to its end, answer with the byte count."""
    lsock = socket.create_server(("0.0.0.0", port), reuse_port=True)
    buf = bytearray(CHUNK)
    while True:
        conn, _ = lsock.accept()
        with conn:
            total = 0
            while n := conn.recv_into(buf):
                total += n
            conn.sendall(str(total).encode())


def tcp_client(addr: str, port: int, mib: int) -> None:
    """Send ``mib`` MiB, half-close, wait for the server's count; print ``bytes seconds``."""
    data = bytes(CHUNK)
    t0 = time.perf_counter()
    with socket.create_connection((addr, port)) as s:
        for _ in range(mib):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = int(s.recv(64) or b"0")
    elapsed = time.perf_counter() - t0
    if got != mib * CHUNK:
        raise SystemExit(f"sent {mib * CHUNK} bytes, the server got {got}")
    print(got, f"{elapsed:.6f}")


def rate(line: str) -> float:
    """MiB/s from a ``bytes seconds`` line."""
    nbytes, secs = line.split()[-2:]
    return int(nbytes) / (1 << 20) / float(secs)


def server_cmd() -> list[str]:
    return [PY, "/bench/net.py", "--tcp-server", str(PORT)]


def client_cmd(addr: str, port: int, mib: int) -> list[str]:
    return [PY, "/bench/net.py", "--tcp-client", f"{addr}:{port}:{mib}"]


# ------------------------------------------------------------------------------ the proxy


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof():
            writer.write_eof()


async def _proxy(listen_port: int, target: str, target_port: int, ready: str) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection(target, target_port)
        await asyncio.gather(_pipe(r, tw), _pipe(tr, w), return_exceptions=True)
        w.close()
        tw.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    with open(ready, "w") as f:
        f.write("ready")
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------ the bench


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(3)
        self.base = tempfile.mkdtemp(prefix="tbn", dir="/tmp")
        self.ns = f"tbbench{self.tag}"
        self.nsa, self.nsb = f"tbbencha{self.tag}", f"tbbenchb{self.tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemon: Any = None

    # -- setup and teardown

    def setup(self) -> None:
        import make_busybox_rootfs

        from tests.conftest import Daemon

        for ns in (self.ns, self.nsa, self.nsb):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "-n",
            self.nsa,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            self.nsb,
        )
        for ns, dev, addr in ((self.nsa, "veth0", "10.200.0.1/24"), (self.nsb, "veth1", "10.200.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        tar = os.path.join(self.base, "busybox.tar")
        make_busybox_rootfs.build(tar, BUSYBOX)
        self.daemon = Daemon(self.base, extra=["--metrics-address", "off"], netns=self.ns)
        self.daemon.start()
        self.daemon.call("image.import", {"path": tar, "ref": "busybox"})
        note(f"tugd in netns {self.ns}, roots under {self.base}")

    def teardown(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        if self.daemon is not None:
            problems = self.daemon.cleanup()
            if problems:
                note(f"left behind: {problems}")
        for ns in (self.ns, self.nsa, self.nsb):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    # -- helpers

    def in_ns(self, ns: str, cmd: list[str]) -> str:
        cmd = [c.replace("/bench/net.py", __file__) for c in cmd]
        return sh("nsenter", f"--net=/run/netns/{ns}", *cmd).stdout

    def start(self, cmd: list[str], **opts: Any) -> str:
        cid: str = self.daemon.call("container.create", {"image": "busybox", "cmd": cmd, **opts})["id"]
        self.daemon.call("container.start", {"id": cid})
        return cid

    def exec_out(self, cid: str, cmd: list[str]) -> str:
        return self.daemon.tug("exec", cid, *cmd, timeout=300).stdout.decode()

    def listening(self, ns_or_cid: str, in_container: bool) -> bool:
        probe = ["netstat", "-ltn"]
        out = self.exec_out(ns_or_cid, probe) if in_container else self.in_ns(ns_or_cid, [BUSYBOX, *probe])
        return f":{PORT} " in out

    def wait_for(self, probe: Any) -> None:
        deadline = time.monotonic() + 20
        while not probe():
            if time.monotonic() > deadline:
                raise RuntimeError("server did not come up")
            time.sleep(0.1)

    def paths(self) -> dict[str, Any]:
        """Start every server (and the proxy); return each path's one-transfer function."""
        mib = self.args.mib
        out: dict[str, Any] = {}
        # 1. veth by hand
        cmd = [c.replace("/bench/net.py", __file__) for c in server_cmd()]
        self.procs.append(subprocess.Popen(["nsenter", f"--net=/run/netns/{self.nsb}", *cmd]))
        self.wait_for(lambda: self.listening(self.nsb, False))
        out["veth pair, namespace to namespace (by hand)"] = lambda: rate(
            self.in_ns(self.nsa, client_cmd("10.200.0.2", PORT, mib))
        )
        # 2. container to container, by name
        self.daemon.call("network.create", {"name": "benchnet", "subnet": "10.201.0.0/24"})
        self.start(server_cmd(), name="srv", network="benchnet", volumes=HOST_PY_MOUNTS)
        client = self.start(["sleep", "100000"], name="cli", network="benchnet", volumes=HOST_PY_MOUNTS)
        self.wait_for(lambda: self.listening("srv", True))
        out["container -> container (bridge)"] = lambda: rate(
            self.exec_out(client, client_cmd("srv", PORT, mib))
        )
        # 3. published port, nft DNAT, on the gateway's address and on 127.0.0.1
        srv = self.start(server_cmd(), name="pub", ports=[f"15001:{PORT}"], volumes=HOST_PY_MOUNTS)
        info = self.daemon.call("container.inspect", {"id": srv})
        ip, gateway = info["networks"]["bridge"]["ip"], info["networks"]["bridge"]["gateway"]
        self.wait_for(lambda: self.listening("pub", True))
        for label, addr in (("gateway", gateway), ("127.0.0.1", "127.0.0.1")):
            cmd = client_cmd(addr, 15001, mib)
            out[f"host -> published port, nft DNAT, {label}"] = lambda c=cmd: rate(self.in_ns(self.ns, c))
        # 4. the same through a userland proxy
        ready = os.path.join(self.base, "proxy.ready")
        self.procs.append(
            subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.ns}",
                    PY,
                    __file__,
                    "--proxy",
                    f"15002:{ip}:{PORT}:{ready}",
                ]
            )
        )
        self.wait_for(lambda: os.path.exists(ready))
        cmd = client_cmd("127.0.0.1", 15002, mib)
        out["host -> published port, userland proxy (asyncio), 127.0.0.1"] = lambda: rate(
            self.in_ns(self.ns, cmd)
        )
        return out

    def throughput(self) -> dict[str, list[float]]:
        """Every path once per round, the order rotating each round, after one warm-up round:
        the machine's load drifts, and every path sees the same drift."""
        paths = self.paths()
        labels = list(paths)
        for label in labels:
            paths[label]()  # warm-up
        results: dict[str, list[float]] = {label: [] for label in labels}
        for r in range(self.args.rounds):
            note(f"round {r + 1}/{self.args.rounds}")
            for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                results[label].append(paths[label]())
        return results

    def start_latency(self) -> dict[str, float]:
        out = {}
        for net in ("none", "bridge"):
            times = []
            cids = []
            for i in range(self.args.starts + 1):
                cid = self.daemon.call(
                    "container.create", {"image": "busybox", "cmd": ["sleep", "100000"], "network": net}
                )["id"]
                t0 = time.perf_counter()
                self.daemon.call("container.start", {"id": cid})
                if i:  # the first is a warm-up (pyroute2's import, the bridge)
                    times.append(time.perf_counter() - t0)
                cids.append(cid)
            out[net] = statistics.median(times) * 1000
            for cid in cids:
                self.daemon.call("container.delete", {"id": cid, "force": True})
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=2048, help="MiB per transfer (default 2048)")
    parser.add_argument("--rounds", type=int, default=5, help="transfers per path (median; default 5)")
    parser.add_argument("--starts", type=int, default=20, help="container starts per network (default 20)")
    parser.add_argument("--keep", action="store_true", help="leave everything running (debugging)")
    parser.add_argument("--proxy", help=argparse.SUPPRESS)  # LISTENPORT:IP:PORT:READYFILE (internal)
    parser.add_argument("--tcp-server", type=int, help=argparse.SUPPRESS)  # PORT (internal)
    parser.add_argument("--tcp-client", help=argparse.SUPPRESS)  # ADDR:PORT:MIB (internal)
    args = parser.parse_args(argv)
    if args.tcp_server:
        tcp_server(args.tcp_server)
        return 0
    if args.tcp_client:
        addr, port, mib = args.tcp_client.split(":")
        tcp_client(addr, int(port), int(mib))
        return 0
    if args.proxy:
        listen, ip, port, ready = args.proxy.split(":", 3)
        asyncio.run(_proxy(int(listen), ip, int(port), ready))
        return 0
    if os.geteuid() != 0:
        print("bench/net.py needs root (namespaces, runc)", file=sys.stderr)
        return 2
    bench = Bench(args)
    try:
        bench.setup()
        note("throughput")
        results = bench.throughput()
        note("start latency, none against bridge")
        starts = bench.start_latency()
    finally:
        if not args.keep:
            bench.teardown()
    print(f"TCP throughput, {args.mib} MiB per transfer, median of {args.rounds}:\n")
    print("| path | MiB/s median | (min, max) | of veth |")
    print("|---|---:|---|---:|")
    veth = statistics.median(next(iter(results.values())))
    for label, values in results.items():
        med = statistics.median(values)
        print(f"| {label} | {med:,.0f} | ({min(values):,.0f}, {max(values):,.0f}) | {med / veth:.2f} |")
    print(f"\n`container.start` of `sleep`, median of {args.starts} (ms):\n")
    print("| network | ms |")
    print("|---|---:|")
    for net, ms in starts.items():
        print(f"| {net} | {ms:.1f} |")
    print(f"\nkernel {os.uname().release}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
