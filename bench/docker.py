"""The Docker API against the reference dockerd, with the docker CLI, in one run (issue 15).

Usage (as root, from the repository; dockerd 20.10 from ``make peers``, never installed by this):

    .venv/bin/python bench/docker.py [--rounds 20] [--ps 100] [--ps-rounds 20] [--log-mib 100]
                                     [--log-rounds 3]

Two daemons, each in a network namespace of its own (their bridges never touch the host's):
``tug-docker-api`` in front of its own tugd (default network: tugd's bridge), and the reference
dockerd 20.10 with its own containerd, data-root and exec-root (``tests/peerd.py``). The same
docker CLI (``/usr/local/bin/docker``, 28.x) drives both, alternating round by round:

1. ``docker run --rm busybox true`` (the default network: a bridge on both) and the same with
   ``--network none``: median, p90, min of the wall time of the CLI command.
2. ``docker ps`` with ``--ps`` running ``sleep`` containers (``--network none``, started first)
   on each, and ``docker ps -a`` beside it: the wall time of the whole command.
3. ``docker logs ID`` of a finished container that wrote ``--log-mib`` MiB of 61-byte lines to
   stdout, into a pipe that this process reads and hashes: MB/s of container output, each output
   checked against the sha256 of what was written.

The image is the same: the busybox tar of ``scripts/make_busybox_rootfs.py`` imported into tugd,
``tug save``'d and ``docker load``'ed into dockerd. Missing peers are reported as missing.
Everything lives under one short temporary directory; daemons are stopped by pid, mounts
unmounted, namespaces deleted. Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

from run import LINE, TUG, check, expected_digest, machine_info, median, ms, note, p90, short_tempdir
from scale import in_parallel

from tests import peerd


@dataclass
class Target:
    label: str
    environ: dict[str, str]
    ids: list[str] = field(default_factory=list)

    def docker(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        cp = subprocess.run(
            [peerd.DOCKER_CLI, *args],
            env=self.environ,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        check(cp, f"docker {' '.join(args[:3])} ({self.label})")
        return cp


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def logs_read(t: Target, cid: str) -> tuple[float, int, str]:
    """``docker logs ID`` into a pipe read here: seconds, bytes, sha256 of stdout."""
    h = hashlib.sha256()
    n = 0
    t0 = time.perf_counter()
    with subprocess.Popen(
        [peerd.DOCKER_CLI, "logs", cid], env=t.environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    ) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"docker logs ({t.label}) exited {p.returncode}")
    return took, n, h.hexdigest()


def rows(title: str, series: dict[str, list[float]], base_key: str | None = None) -> list[str]:
    out = [
        title,
        "",
        "| what | runs | median | p90 | min | median / dockerd |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, xs in series.items():
        ref = key.replace("tug-docker-api", "dockerd")
        ratio = f"{median(xs) / median(series[ref]):.2f}x" if ref in series else "-"
        out.append(f"| {key} | {len(xs)} | {ms(median(xs))} | {ms(p90(xs))} | {ms(min(xs))} | {ratio} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20, help="rounds of docker run --rm")
    ap.add_argument("--warmups", type=int, default=2)
    ap.add_argument("--ps", type=int, default=100, help="running containers for docker ps")
    ap.add_argument("--ps-rounds", type=int, default=20)
    ap.add_argument("--log-mib", type=int, default=100)
    ap.add_argument("--log-rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/docker.py: runs daemons and containers: needs root", file=sys.stderr)
        return 2
    for peer in ("docker-cli", "dockerd"):
        if why := peerd.missing(peer):
            print(f"The reference dockerd is **missing**: {why}. Nothing measured.")
            return 0

    import make_busybox_rootfs

    from tests.conftest import Daemon
    from tests.docker_helpers import DockerApi

    base = short_tempdir()
    tag = secrets.token_hex(3)
    tug_ns = peerd.Netns(f"tbdk{tag}")
    os.makedirs(os.path.join(base, "t"))
    tugd = Daemon(
        os.path.join(base, "t"),
        extra=["--metrics-address", "off", "--log-max-size", str(512 << 20), "--log-max-files", "2"],
        netns=tug_ns.name,
    )
    api = DockerApi(tugd)
    ref = peerd.Dockerd(os.path.join(base, "d"), f"tbdr{tag}")
    problems: list[str] = []
    targets: list[Target] = []
    try:
        out = ["## Machine", "", *machine_info(), ""]
        tar = os.path.join(base, "busybox.tar")
        make_busybox_rootfs.build(tar, "/bin/busybox")
        tugd.start()
        tugd.call("image.import", {"path": tar, "ref": "busybox"})
        api.start()
        save = os.path.join(base, "save.tar")
        check(
            subprocess.run(
                [TUG, "--socket", tugd.socket, "save", "-o", save, "busybox"], capture_output=True
            ),
            "save",
        )
        ref.start()
        tug = Target("tug-docker-api", {**api.env, "DOCKER_CLI_HINTS": "false"})
        dref = Target("dockerd", {**ref.docker_env, "DOCKER_CLI_HINTS": "false"})
        dref.docker("load", "-i", save)
        targets += [tug, dref]
        v = {
            t.label: t.docker("version", "--format", "{{.Server.Version}}").stdout.decode().strip()
            for t in targets
        }
        out.append(f"- servers: tug-docker-api {v['tug-docker-api']}, dockerd {v['dockerd']}")
        cli_v = tug.docker("version", "--format", "{{.Client.Version}}").stdout.decode().strip()
        out.append(f"- docker CLI: {cli_v}")
        out.append("")

        # 1. docker run --rm
        runs: dict[str, list[float]] = {}
        cases = [(t, net) for net in ("default", "none") for t in targets]

        def run_key(t: Target, net: str) -> str:
            return f"{t.label}: `docker run --rm{'' if net == 'default' else ' --network none'} busybox true`"

        for t, net in cases:
            runs[run_key(t, net)] = []
        note(f"docker run --rm: {args.rounds} rounds of {len(cases)}")
        for r in range(-args.warmups, args.rounds):
            order = cases if r % 2 == 0 else cases[::-1]
            for t, net in order:
                extra = [] if net == "default" else ["--network", "none"]
                took = timed(lambda t=t, extra=extra: t.docker("run", "--rm", *extra, "busybox", "true"))
                if r >= 0:
                    runs[run_key(t, net)].append(took)
        out += rows("### `docker run --rm` (ms, wall time of the CLI command)", runs)
        out.append("")
        print("\n".join(out), flush=True)
        out = []

        # 2. docker ps with N running containers
        for t in targets:
            note(f"{t.label}: starting {args.ps} sleep containers")

            def job(t: Target = t) -> str:
                return (
                    t.docker("run", "-d", "--network", "none", "busybox", "sleep", "100000")
                    .stdout.decode()
                    .strip()
                )

            _, ids = in_parallel(4, [job] * args.ps)
            t.ids += ids
        ps: dict[str, list[float]] = {}
        for t in targets:
            listed = t.docker("ps", "-q").stdout.decode().split()
            if len(listed) != args.ps:
                raise RuntimeError(f"{t.label}: docker ps lists {len(listed)} containers, not {args.ps}")
            ps[f"{t.label}: `docker ps` ({args.ps} running)"] = []
            ps[f"{t.label}: `docker ps -a` ({args.ps} running)"] = []
        for r in range(-args.warmups, args.ps_rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                for a in ([], ["-a"]):
                    took = timed(lambda t=t, a=a: t.docker("ps", *a))
                    if r >= 0:
                        ps[f"{t.label}: `docker ps{' -a' if a else ''}` ({args.ps} running)"].append(took)
        for t in targets:
            took = timed(lambda t=t: t.docker("rm", "-f", *t.ids))
            ps[f"{t.label}: `docker rm -f` of all {args.ps} (one command)"] = [took]
            t.ids.clear()
        out += rows("### `docker ps` (ms)", ps)
        out.append("")
        print("\n".join(out), flush=True)
        out = []

        # 3. docker logs of a big log
        size = args.log_mib << 20
        digest = expected_digest(0, size)
        writer = f"yes '{LINE}' | head -c {size}"
        logs: dict[str, list[float]] = {
            f"{t.label}: `docker logs` of {args.log_mib} MiB": [] for t in targets
        }
        bad: list[str] = []
        for r in range(args.log_rounds):
            for t in targets if r % 2 == 0 else targets[::-1]:
                cid = (
                    t.docker("run", "-d", "--network", "none", "busybox", "sh", "-c", writer)
                    .stdout.decode()
                    .strip()
                )
                t.ids.append(cid)
                t.docker("wait", cid)
                took, n, got = logs_read(t, cid)
                if n != size or got != digest:
                    bad.append(f"{t.label} round {r}: {n} bytes, sha256 {'ok' if got == digest else 'WRONG'}")
                logs[f"{t.label}: `docker logs` of {args.log_mib} MiB"].append(took)
                t.docker("rm", "-f", cid)
                t.ids.remove(cid)
        out += [
            f"### `docker logs` of a finished container's {args.log_mib} MiB (61-byte lines, into a pipe)",
            "",
            "| what | runs | median s | MB/s (median) | best MB/s | dockerd / this (time) | checked |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for key, xs in logs.items():
            refx = logs[key.replace("tug-docker-api", "dockerd")]
            okay = "sha256 ok" if not any(b.startswith(key.split(":")[0]) for b in bad) else "FAILED"
            out.append(
                f"| {key} | {len(xs)} | {median(xs):.2f} | {size / median(xs) / 1e6:.0f} | "
                f"{size / min(xs) / 1e6:.0f} | {median(refx) / median(xs):.2f}x | {okay} |"
            )
        if bad:
            out += ["", *[f"- {b}" for b in bad]]
        out.append("")
        out.append(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("\n".join(out), flush=True)
    finally:
        for t in targets:
            if t.ids:
                subprocess.run(
                    [peerd.DOCKER_CLI, "rm", "-f", *t.ids], env=t.environ, capture_output=True, check=False
                )
        api.stop()
        problems += tugd.cleanup()
        tug_ns.delete()
        ref.stop()
        problems += peerd.sweep(base)
        subprocess.run(["rm", "-rf", base], check=False)
        for p in problems:
            note(f"cleanup: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
