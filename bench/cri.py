"""Pods through the CRI (issue 16, "Speed"): tug-cri with its tugd against containerd's own CRI
plugin, driven by the same gRPC client (``cri/gen`` stubs) in this process, interleaved rounds.

Usage (as root, from the repository):

    .venv/bin/python bench/cri.py [--rounds N] [--pods N]

One pod life is RunPodSandbox + CreateContainer + StartContainer (until ContainerStatus says
running), then StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox: what kubelet
does for a pod with one container. The container runs ``sleep``; the image is passed by its id,
as kubelet does.

- Tugboat: tugd in a network namespace this script makes (its pod network: a veth and an address
  per pod), tug-cri on a socket under a private root.
- containerd: Debian's containerd 1.6 unpacked by ``scripts/install-peers.sh`` (``tests/peerd.py``)
  with its CRI plugin on, private root, state, sockets and runc root, in a network namespace of its
  own; CNI from Debian's ``containernetworking-plugins`` (``/usr/lib/cni``: bridge + host-local,
  no masquerade, IPAM state under the private root) so that each pod also gets a veth and an
  address. Its sandbox image is a pause look-alike made here: the busybox rootfs with ``sleep`` as
  its command, imported with ``ctr -n k8s.io images import`` and named as ``sandbox_image``.
  A missing containerd is reported, and Tugboat alone is measured.

Memory: ``--pods`` pods each with one running container, then the PSS (``smaps_rollup``) of
every process of each runtime (tugd + tug-shims + tug-cri; containerd + its shims + the pause
processes), the containers' own ``sleep`` excluded, divided by the number of pods; and the growth
over the idle runtime, divided likewise. Markdown on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

import grpc  # noqa: E402

from cri.gen import api_pb2, api_pb2_grpc  # noqa: E402
from tests import peerd  # noqa: E402

PAUSE_REF = "tugboat.local/pause:1"
IMAGE_REF = "tugboat.local/busybox:1"
PAUSE_ARG = "2147483"  # the pause look-alike's sleep, told apart from the containers' by it
CONTAINER_ARG = "987654"
CNI_CACHE = "/var/lib/cni"
STEPS = ("run_pod", "create", "start", "stop", "remove", "stop_pod", "remove_pod")


def note(msg: str) -> None:
    print(f"[cri] {msg}", file=sys.stderr, flush=True)


def cpu_ms(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def mentioning(words: set[str]) -> list[int]:
    """Pids whose command line holds one of ``words`` (ids: tug-shim renames itself to
    ``tug-shim ID``), not ours."""
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    return [pid for pid in pids if words & set(cmdline(pid))]


def runtime_processes(base: str, roots: list[int], ids: set[str]) -> dict[int, str]:
    """pid -> kind of every process of a runtime: those whose command line mentions ``base``
    (daemons, containerd's shims, tugd's shim template and pods' infra) or one of ``ids`` (tugd's
    shims), ``roots``, and their descendants but the containers' own ``sleep``."""
    found: dict[int, str] = {}
    todo = list(dict.fromkeys([*roots, *peerd.processes_under(base), *mentioning(ids)]))
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        argv = cmdline(pid)
        if not argv:
            continue
        if argv[-1] == CONTAINER_ARG:
            continue  # the workload, not the runtime
        name = os.path.basename(argv[0])
        found[pid] = "pause" if argv[-1] == PAUSE_ARG else name
        todo += children(pid)
    return found


def image_tar(path: str, rootfs_tar: str, ref: str, cmd: list[str]) -> None:
    """A docker-archive (``manifest.json`` + config + one layer) of the busybox rootfs, named
    ``ref``, whose command is ``cmd``: what ``ctr images import`` reads."""
    with open(rootfs_tar, "rb") as f:
        layer = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in ((config_name, config), ("layer.tar", layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))


class Client:
    """The CRI gRPC client, the same for both runtimes."""

    def __init__(self, sock: str) -> None:
        self.channel = grpc.insecure_channel(f"unix:{sock}")
        self.rt: Any = api_pb2_grpc.RuntimeServiceStub(self.channel)  # type: ignore[arg-type]
        self.img: Any = api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[arg-type]
        self.image_id = ""
        self.logs = ""

    def pod_config(self, name: str) -> Any:
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="bench", uid=name, attempt=0),
            log_directory=os.path.join(self.logs, name),
            linux=api_pb2.LinuxPodSandboxConfig(cgroup_parent=""),
        )

    def container_config(self) -> Any:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c", attempt=0),
            image=api_pb2.ImageSpec(image=self.image_id),
            command=["sleep", CONTAINER_ARG],
            log_path="c/0.log",
        )

    def run_pod(self, name: str) -> tuple[str, str]:
        cfg = self.pod_config(name)
        pod = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
        ccfg = self.container_config()
        cid = self.rt.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg)
        ).container_id
        return pod, cid

    def start(self, cid: str) -> None:
        self.rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        deadline = time.monotonic() + 30
        while True:
            st = self.rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
            if st.state == api_pb2.CONTAINER_RUNNING:
                return
            if st.state == api_pb2.CONTAINER_EXITED or time.monotonic() > deadline:
                raise RuntimeError(f"container {cid} is not running: {st}")

    def remove(self, pod: str, cid: str) -> None:
        self.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
        self.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
        self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod))
        self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod))

    def life(self, name: str) -> dict[str, float]:
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        cfg = self.pod_config(name)
        pod = self.rt.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
        t1 = time.perf_counter()
        ccfg = self.container_config()
        cid = self.rt.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg)
        ).container_id
        t2 = time.perf_counter()
        self.start(cid)
        t3 = time.perf_counter()
        self.rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0))
        t4 = time.perf_counter()
        self.rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
        t5 = time.perf_counter()
        self.rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod))
        t6 = time.perf_counter()
        self.rt.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod))
        t7 = time.perf_counter()
        marks = (t0, t1, t2, t3, t4, t5, t6, t7)
        for i, step in enumerate(STEPS):
            t[step] = (marks[i + 1] - marks[i]) * 1000
        t["up"] = (t3 - t0) * 1000
        t["down"] = (t7 - t3) * 1000
        t["total"] = (t7 - t0) * 1000
        return t

    def close(self) -> None:
        self.channel.close()


class Runtime:
    label = ""
    base = ""
    client: Client

    def daemons(self) -> list[int]:
        raise NotImplementedError

    def processes(self, ids: set[str]) -> dict[int, str]:
        return runtime_processes(self.base, self.daemons(), ids)

    def stop(self) -> list[str]:
        raise NotImplementedError


class Tugboat(Runtime):
    label = "tug-cri + tugd"

    def __init__(self, base: str, rootfs_tar: str) -> None:
        from tests.conftest import Daemon
        from tests.cri_helpers import TugCri

        self.base = base
        os.makedirs(base)
        self.ns = peerd.Netns(f"tbcri{secrets.token_hex(3)}")
        self.tugd = Daemon(base, extra=["--metrics-address", "off"], netns=self.ns.name)
        self.tugd.start()
        self.tugd.call("image.import", {"path": rootfs_tar, "ref": "busybox"})
        self.cri = TugCri(base, self.tugd.socket)
        self.cri.start()
        self.client = Client(self.cri.socket)
        self.client.logs = os.path.join(base, "logs")
        self.client.image_id = self.tugd.call("image.inspect", {"ref": "busybox"})["id"]

    def daemons(self) -> list[int]:
        return [p.pid for p in (self.tugd.proc, self.cri.proc) if p is not None]

    def stop(self) -> list[str]:
        self.client.close()
        problems: list[str] = []
        try:
            self.cri.stop()
        finally:
            problems += self.tugd.cleanup()
            self.ns.delete()
        return problems


def containerd_config(base: str, sock: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return (
        "version = 2\n"
        f'root = "{base}/root"\n'
        f'state = "{base}/state"\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
        '[metrics]\n  address = ""\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
        f"[{cri}]\n"
        f'  sandbox_image = "{PAUSE_REF}"\n'
        '  stream_server_address = "127.0.0.1"\n'
        '  stream_server_port = "0"\n'
        "  enable_selinux = false\n"
        # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj to the pause's -998
        "  restrict_oom_score_adj = true\n"
        f"[{cri}.containerd]\n"
        '  snapshotter = "overlayfs"\n'
        '  default_runtime_name = "runc"\n'
        f"[{cri}.containerd.runtimes.runc]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f"[{cri}.containerd.runtimes.runc.options]\n"
        f'  BinaryName = "{peerd.RUNC}"\n'
        f'  Root = "{base}/runc"\n'
        f"[{cri}.cni]\n"
        '  bin_dir = "/usr/lib/cni"\n'
        f'  conf_dir = "{base}/cni"\n'
        "  max_conf_num = 1\n"
    )


class Containerd(Runtime):
    label = "containerd 1.6 CRI"

    def __init__(self, base: str, rootfs_tar: str) -> None:
        self.base = base
        self.ns = peerd.Netns(f"tbcrc{secrets.token_hex(3)}")
        self.d = peerd.Containerd(base, self.ns)  # writes its config: ours replaces it
        with open(self.d.config, "w") as f:
            f.write(containerd_config(base, self.d.sock))
        os.makedirs(os.path.join(base, "cni"))
        with open(os.path.join(base, "cni", "10-bench.conflist"), "w") as f:
            json.dump(
                {
                    "cniVersion": "1.0.0",
                    "name": "bench",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "tbcri0",
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": "10.98.0.0/16"}]],
                                "dataDir": os.path.join(base, "ipam"),
                            },
                        }
                    ],
                },
                f,
            )
        # libcni caches each ADD's result under /var/lib/cni whatever the configuration: the
        # directories go again at the stop if they were ours (and are empty)
        self.made_var_lib_cni = not os.path.exists(CNI_CACHE)
        self.d.start()
        for ref, cmd in ((PAUSE_REF, ["sleep", PAUSE_ARG]), (IMAGE_REF, ["sh"])):
            tar = os.path.join(base, ref.split("/")[1].split(":")[0] + ".tar")
            image_tar(tar, rootfs_tar, ref, cmd)
            subprocess.run(
                self.d.ctr("images", "import", tar, namespace="k8s.io"),
                check=True,
                capture_output=True,
                env=peerd.env(),
            )
        self.client = Client(self.d.sock)
        self.client.logs = os.path.join(base, "logs")
        spec = api_pb2.ImageSpec(image=IMAGE_REF)
        self.client.image_id = self.client.img.ImageStatus(api_pb2.ImageStatusRequest(image=spec)).image.id
        assert self.client.image_id, "containerd does not list the imported image"

    def daemons(self) -> list[int]:
        return [self.d.proc.pid] if self.d.proc is not None else []

    def stop(self) -> list[str]:
        self.client.close()
        try:
            self.d.stop()
        finally:
            found = peerd.sweep(self.base)
            self.ns.delete()
            if self.made_var_lib_cni:
                for d in (os.path.join(CNI_CACHE, "results"), CNI_CACHE):
                    with contextlib.suppress(OSError):
                        os.rmdir(d)
        return found


def cpu_of(rt: Runtime) -> float:
    return sum(cpu_ms(p) for p in rt.daemons())


def lives(runtimes: list[Runtime], rounds: int, warmups: int) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = {rt.label: {"steps": [], "cpu": 0.0} for rt in runtimes}
    for r in range(warmups + rounds):
        order = runtimes if r % 2 == 0 else runtimes[::-1]
        for rt in order:
            c0 = cpu_of(rt)
            t = rt.client.life(f"p{r}")
            if r >= warmups:
                res[rt.label]["steps"].append(t)
                res[rt.label]["cpu"] += cpu_of(rt) - c0
        if (r + 1) % 10 == 0:
            note(f"{r + 1}/{warmups + rounds} rounds")
    return res


def memory(rt: Runtime, pods: int) -> dict[str, Any]:
    idle = sum(pss_kib(p) for p in rt.processes(set()))
    made = []
    for i in range(pods):
        pod, cid = rt.client.run_pod(f"m{i}")
        rt.client.start(cid)
        made.append((pod, cid))
    procs = rt.processes({i for pair in made for i in pair})
    by_kind: dict[str, int] = {}
    for pid, kind in procs.items():
        by_kind[kind] = by_kind.get(kind, 0) + pss_kib(pid)
    counts: dict[str, int] = {}
    for kind in procs.values():
        counts[kind] = counts.get(kind, 0) + 1
    for pod, cid in made:
        rt.client.remove(pod, cid)
    total = sum(by_kind.values())
    return {"idle": idle, "total": total, "by_kind": by_kind, "counts": counts}


def pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[max(0, int(len(s) * q) - 1)]


def report(
    res: dict[str, dict[str, Any]], mem: dict[str, dict[str, Any]], rounds: int, pods: int
) -> list[str]:
    out = [
        f"One pod life through the CRI, {rounds} interleaved rounds, median (p90) ms; the daemons' CPU "
        "(utime+stime of tugd + tug-cri, of containerd; shims not counted) per pod life:",
        "",
        "| runtime | RunPodSandbox | CreateContainer | StartContainer (running) | StopContainer "
        "| RemoveContainer | StopPodSandbox | RemovePodSandbox | up | down | total | daemon CPU |",
        "|---|" + "---:|" * 11,
    ]
    for label, r in res.items():
        cells = []
        for step in (*STEPS, "up", "down", "total"):
            v = [t[step] for t in r["steps"]]
            cells.append(f"{statistics.median(v):.1f} ({pct(v, 0.9):.1f})")
        out.append(f"| {label} | {' | '.join(cells)} | {r['cpu'] / rounds:.1f} ms |")
    out += [
        "",
        f"Memory of {pods} pods, each with one running container (PSS, KiB; the containers' own "
        "processes not counted):",
        "",
        f"| runtime | idle | with the pods | processes (count: KiB) | per pod (all / {pods}) "
        "| per pod (growth) |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for label, m in mem.items():
        kinds = ", ".join(f"{k} x{m['counts'][k]}: {v}" for k, v in sorted(m["by_kind"].items()))
        out.append(
            f"| {label} | {m['idle']} | {m['total']} | {kinds} | {m['total'] / pods:.0f} "
            f"| {(m['total'] - m['idle']) / pods:.0f} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30, help="pod lives per runtime (default 30)")
    ap.add_argument("--warmups", type=int, default=2)
    ap.add_argument("--pods", type=int, default=20, help="running pods for the memory figure (default 20)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/cri.py needs root (namespaces, runc)", file=sys.stderr)
        return 2
    import make_busybox_rootfs

    base = tempfile.mkdtemp(prefix="tbcri", dir="/tmp")
    runtimes: list[Runtime] = []
    problems: list[str] = []
    missing: dict[str, str] = {}
    try:
        rootfs = os.path.join(base, "busybox.tar")
        make_busybox_rootfs.build(rootfs, shutil.which("busybox") or "/bin/busybox")
        runtimes.append(Tugboat(os.path.join(base, "t"), rootfs))
        if why := peerd.missing("containerd"):
            missing["containerd"] = why
        else:
            runtimes.append(Containerd(os.path.join(base, "c"), rootfs))
        note("runtimes up")
        res = lives(runtimes, args.rounds, args.warmups)
        mem: dict[str, dict[str, Any]] = {}
        for rt in runtimes:
            mem[rt.label] = memory(rt, args.pods)
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    finally:
        for rt in runtimes:
            try:
                problems += rt.stop()
            except Exception as exc:  # stop the others too
                problems.append(f"{rt.label}: {exc!r}")
        problems += peerd.sweep(base)
        shutil.rmtree(base, ignore_errors=True)
    out = [f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load}.", ""]
    out += report(res, mem, args.rounds, args.pods)
    for peer, why in missing.items():
        out += ["", f"{peer}: missing ({why})"]
    if problems:
        out += ["", f"left behind (swept): {problems}"]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
