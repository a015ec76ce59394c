"""Pod networking by CNI (issue 16, mode b): a real tugd with ``--pod-network cni`` in a network
namespace the test made, Debian's real plugins (``bridge`` + ``host-local`` + ``portmap``) from a
conflist the test writes (a private bridge and subnet, host-local's ``dataDir`` in the test's
directory): the pod gets an IP from host-local, reachable from the test's namespace, a host port
answers through portmap, stop DELs (the veth, the IP file, the iptables rules gone), a kill -9 of
tugd between ADD and the record leaves nothing after a restart. The core's :class:`Cni` alone
runs on both anyio backends (ADD, CHECK, DEL twice), with the real plugins and with recording
plugins of the test's (the exact environment, order, prevResult and runtimeConfig; the errors)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from cri.gen import api_pb2
from supervisor.pods import cni
from tugwire import errors

from .conftest import needs_root, needs_runc, netns_links
from .cri_helpers import TugCri, make_tug_cri

__all__ = ["make_tug_cri"]  # a fixture, imported for this module's tests

PLUGINS = "/usr/lib/cni"
needs_plugins = pytest.mark.skipif(
    not all(os.access(os.path.join(PLUGINS, p), os.X_OK) for p in ("bridge", "host-local", "portmap"))
    or shutil.which("iptables-save") is None,
    reason="needs Debian's containernetworking-plugins and iptables (scripts/install.sh)",
)
pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc, needs_plugins]


class Net:
    """A CNI configuration directory with one conflist: its bridge, subnet and host-local dir."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.conf_dir = os.path.join(base, "net.d")
        self.data_dir = os.path.join(base, "ipam")
        os.makedirs(self.conf_dir)
        self.bridge = "tbc" + secrets.token_hex(3)
        self.name = "tbcni" + secrets.token_hex(2)
        octet = 16 + secrets.randbelow(200)
        self.subnet, self.gateway = f"10.231.{octet}.0/24", f"10.231.{octet}.1"
        self.conflist = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.data_dir,
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        # The first file in lexical order is the one: a later one is ignored, as containerd does.
        self.write("10-test.conflist", self.conflist)
        self.write("99-ignored.conflist", {**self.conflist, "name": "ignored"})

    def write(self, name: str, doc: dict[str, Any]) -> None:
        with open(os.path.join(self.conf_dir, name), "w") as f:
            json.dump(doc, f)

    def ip_files(self) -> list[str]:
        d = os.path.join(self.data_dir, self.name)
        try:
            return sorted(n for n in os.listdir(d) if n[0].isdigit())
        except FileNotFoundError:
            return []


@pytest.fixture
def net() -> Iterator[Net]:
    """Asked for before make_daemon: torn down after it (a pod removed by its cleanup DELs, and
    host-local writes its lock in the dataDir)."""
    base = tempfile.mkdtemp(prefix="tbcni", dir="/tmp")
    yield Net(base)
    shutil.rmtree(base, ignore_errors=True)


def in_ns(ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True, text=True, timeout=20
    )


def iptables(ns: str) -> str:
    return in_ns(ns, "iptables-save").stdout


def veths(ns: str, bridge: str) -> list[str]:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show", "master", bridge], capture_output=True, text=True
    )
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line]


def assert_clean(ns: str, net: Net, pid: str) -> None:
    """Nothing of pod ``pid`` is left: its veth, its IP file, its iptables rules."""
    assert veths(ns, net.bridge) == []
    assert net.ip_files() == []
    rules = iptables(ns)
    assert pid not in rules, rules
    assert "18080" not in rules, rules
    # portmap's per-pod chains and rules gone (its shared CNI-HOSTPORT-* chains stay, empty of
    # the pod, as the plugin leaves them), the bridge plugin's ipMasq chain too.
    assert "-j DNAT" not in rules and "CNI-DN-" not in rules, rules


def tugd_args(net: Net) -> list[str]:
    return ["--pod-network", "cni", "--cni-conf-dir", net.conf_dir, "--cni-bin-dir", PLUGINS]


SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen(); print('up', flush=True)\n"
    "c,_=s.accept(); c.sendall(b'hello from the pod\\n'); c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)\n"
    "print(c.recv(100).decode(), end='')\n"
)


def test_cni_pod_life(net: Net, make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True, image=False, extra=tugd_args(net))
    conf = d.call("pod.network_config")
    assert (conf["mode"], conf["ready"], conf["network"]) == ("cni", True, net.name)
    assert conf["conf_file"] == os.path.join(net.conf_dir, "10-test.conflist")
    ports = [{"container_port": 8080, "host_port": 18080}, {"container_port": 9090}]
    pod = d.call("pod.create", {"name": "web", "namespace": "ns1", "uid": "u-1", "ports": ports})
    pid, ip = pod["id"], pod["network"]["ip"]
    assert pod["state"] == "ready" and pod["network"]["name"] == net.name
    assert ip.startswith(net.subnet.rsplit(".", 1)[0] + ".") and pod["network"]["prefixlen"] == 24
    assert net.ip_files() == [ip]  # host-local's, in the test's dataDir
    with open(os.path.join(net.data_dir, net.name, ip)) as f:
        assert f.read().split()[0] == pid  # CNI_CONTAINERID is the pod's id
    assert len(veths(d.netns, net.bridge)) == 1
    assert in_ns(d.netns, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0
    # The pod's loopback is up; its eth0 has the address.
    netns = pod["namespaces"]["network"]
    lo = subprocess.run(
        ["nsenter", f"--net={netns}", "ip", "-o", "link", "show", "lo"], capture_output=True, text=True
    )
    assert "<LOOPBACK,UP,LOWER_UP>" in lo.stdout, lo
    addrs = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "addr"], capture_output=True, text=True)
    assert f"eth0    inet {ip}/24" in addrs.stdout, addrs
    # The host port, through portmap's DNAT: a server in the pod, a client in the test's namespace.
    py = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".venv", "bin", "python"))
    server = subprocess.Popen(
        ["nsenter", f"--net={netns}", py, "-c", SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == "up\n"
        got = in_ns(d.netns, py, "-c", CLIENT, net.gateway, "18080")
        assert got.stdout == "hello from the pod\n", got
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert "18080" in iptables(d.netns)
    # Stop: DEL (veth, address, rules gone), the pod notready; again: nothing to do.
    assert d.call("pod.stop", {"id": pid})["state"] == "notready"
    assert_clean(d.netns, net, pid)
    assert d.call("pod.inspect", {"id": pid})["network"]["ip"] == ""
    assert d.call("pod.stop", {"id": pid})["state"] == "notready"
    d.call("pod.remove", {"id": pid})
    assert os.listdir(os.path.join(d.state, "cni")) == []
    # Remove of a ready pod DELs too.
    again = d.call("pod.create", {"name": "again"})
    assert net.ip_files() == [again["network"]["ip"]]
    d.call("pod.remove", {"id": again["id"]})
    assert_clean(d.netns, net, again["id"])


@pytest.mark.parametrize(
    ("point", "added"),
    [
        ("pod.create.after_network=kill", True),  # the chain added, the record still creating
        ("pod.cni.add.after_plugin=kill", False),  # in the middle of ADD: bridge done, portmap not
    ],
)
def test_cni_kill9_in_create_leaves_nothing(net: Net, make_daemon: Any, point: str, added: bool) -> None:
    d = make_daemon(netns=True, image=False, extra=tugd_args(net))
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": point}
    d.start()
    d.start_env = {}
    with pytest.raises(errors.TugError):
        d.call("pod.create", {"name": "half", "ports": [{"container_port": 80, "host_port": 18080}]})
    assert d.proc is not None
    d.proc.wait(timeout=20)
    d.proc = None
    # The cache says what was being added (with its result once the chain was done).
    cached = os.listdir(os.path.join(d.state, "cni"))
    assert len(cached) == 1 and len(net.ip_files()) == 1
    pid = cached[0].removesuffix(".json")
    with open(os.path.join(d.state, "cni", cached[0])) as f:
        assert (json.load(f)["result"] is not None) is added
    rules = iptables(d.netns)
    assert pid in rules and ("18080" in rules) is added
    d.start()  # recovery: DEL from the cache
    assert d.call("pod.list") == []
    assert os.listdir(os.path.join(d.state, "cni")) == []
    assert_clean(d.netns, net, pid)
    assert not [n for n in netns_links(d.netns) if n.startswith("veth")]


def test_cni_pod_whose_namespace_is_gone_is_deleted_at_start(net: Net, make_daemon: Any) -> None:
    """A reboot (the namespace unmounted while tugd is down): DEL with no namespace releases the
    address and the rules; the pod is notready."""
    d = make_daemon(netns=True, image=False, extra=tugd_args(net))
    pod = d.call("pod.create", {"name": "gone", "ports": [{"container_port": 80, "host_port": 18080}]})
    keep = d.call("pod.create", {"name": "keep"})
    d.kill9()
    subprocess.run(["umount", pod["namespaces"]["network"]], check=True)
    d.start()
    assert d.call("pod.inspect", {"id": pod["id"]})["state"] == "notready"
    assert net.ip_files() == [keep["network"]["ip"]]
    # portmap's rules gone. (The bridge plugin tears its ipMasq rule down only from the addresses
    # it finds on eth0 in the namespace: with the namespace gone it cannot, and says nothing;
    # a real reboot empties iptables too.)
    rules = iptables(d.netns)
    assert "18080" not in rules and "-j DNAT" not in rules and "CNI-DN-" not in rules
    assert keep["id"] in rules
    assert in_ns(d.netns, "busybox", "ping", "-c", "1", "-W", "2", keep["network"]["ip"]).returncode == 0
    d.call("pod.remove", {"id": pod["id"]})
    d.call("pod.remove", {"id": keep["id"]})
    assert_clean(d.netns, net, keep["id"])


def test_cni_not_ready_and_plugin_errors(net: Net, make_daemon: Any, make_tug_cri: Any) -> None:
    empty = os.path.join(net.base, "empty")
    os.makedirs(empty)
    d = make_daemon(
        netns=True,
        image=False,
        extra=["--pod-network", "cni", "--cni-conf-dir", empty, "--cni-bin-dir", PLUGINS],
    )
    conf = d.call("pod.network_config")
    assert (conf["mode"], conf["ready"]) == ("cni", False)
    assert "no CNI configuration" in conf["message"] and empty in conf["message"]
    cri: TugCri = make_tug_cri(d)
    cond = {c.type: c for c in cri.runtime.Status(api_pb2.StatusRequest()).status.conditions}
    assert not cond["NetworkReady"].status
    assert cond["NetworkReady"].reason == "NetworkPluginNotReady"
    assert "no CNI configuration" in cond["NetworkReady"].message
    with pytest.raises(errors.RuntimeFailed, match="CNI is not ready"):
        d.call("pod.create", {"name": "p"})
    assert d.call("pod.list") == []
    # A configuration appears: ready at once (read at each call, as containerd watches it).
    bad = json.loads(json.dumps(net.conflist))
    bad["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    with open(os.path.join(empty, "10-bad.conflist"), "w") as f:
        json.dump(bad, f)
    assert d.call("pod.network_config")["ready"] is True
    cond = {c.type: c for c in cri.runtime.Status(api_pb2.StatusRequest()).status.conditions}
    assert cond["NetworkReady"].status
    # A plugin's error names the plugin and carries its error JSON; nothing is left.
    with pytest.raises(errors.RuntimeFailed) as info:
        d.call("pod.create", {"name": "p"})
    msg = str(info.value)
    assert "CNI plugin bridge" in msg and '"code":' in msg and "not-a-subnet" in msg, msg
    assert d.call("pod.list") == [] and os.listdir(os.path.join(d.state, "cni")) == []
    assert veths(d.netns, net.bridge) == []


def test_cni_core_add_check_del(anyio_backend_name: str, net: Net) -> None:
    """The core's Cni alone on one anyio backend: ADD, CHECK, DEL, DEL again (idempotent), in a
    namespace of the test's. No port mappings here: Debian's portmap fails CHECK looking for
    IPv6 rules it never made (containernetworking/plugins#819); pods do not run CHECK."""
    ns = "tbcn" + secrets.token_hex(4)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        pod_ns = "tbcp" + secrets.token_hex(4)
        subprocess.run(["ip", "netns", "add", pod_ns], check=True)
        try:
            _core_steps(anyio_backend_name, net, ns, pod_ns)
        finally:
            subprocess.run(["ip", "netns", "del", pod_ns], check=False)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _core_steps(backend: str, net: Net, ns: str, pod_ns: str) -> None:
    # The plugins run in the test's namespace (as tugd would): the whole test runs there.
    cache = os.path.join(net.base, "cache")
    code = f"""
import anyio, json, sys
from supervisor.pods import cni
c = cni.Cni({net.conf_dir!r}, ({PLUGINS!r},), {cache!r})
args = cni.PodArgs(id="p" * 64, netns="/run/netns/{pod_ns}", name="n", namespace="ns", uid="u")
async def main():
    conf, result = await c.add(args)
    assert conf.name == {net.name!r}
    print(json.dumps(cni.address(result)), flush=True)
    await c.check(args.id, args.netns)
    sys.stdin.readline()
    await c.delete(args.id, args.netns)
    await c.delete(args.id, args.netns)
    print("deleted", flush=True)
anyio.run(main, backend={backend!r})
"""
    repo = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    py = os.path.join(repo, ".venv", "bin", "python")
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", py, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=repo,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ip, prefixlen = json.loads(proc.stdout.readline())
        assert prefixlen == 24 and net.ip_files() == [ip]
        assert "p" * 64 in iptables(ns) and len(veths(ns, net.bridge)) == 1  # bridge's ipMasq
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "deleted\n"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
    assert_clean(ns, net, "p" * 64)
    assert os.listdir(cache) == []


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_conf_parsing(tmp_path: Any) -> None:
    """Which file is the configuration, and the reasons one is not."""
    with pytest.raises(cni.NotReady, match="no CNI configuration directory"):
        cni.load(str(tmp_path / "nope"))
    with pytest.raises(cni.NotReady, match=r"no CNI configuration \(\*.conflist"):
        cni.load(str(tmp_path))
    (tmp_path / "05-broken.conflist").write_text("{")
    with pytest.raises(cni.NotReady, match="not JSON"):
        cni.load(str(tmp_path))
    (tmp_path / "20-one.conf").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "one", "type": "bridge"})
    )
    conf = cni.load(str(tmp_path))  # the broken one is skipped, the next valid one taken
    assert (conf.name, [p["type"] for p in conf.plugins]) == ("one", ["bridge"])
    (tmp_path / "10-list.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "list", "plugins": [{"type": "a"}, {"type": "b"}]})
    )
    assert cni.load(str(tmp_path)).name == "list"
    c = cni.Cni(str(tmp_path), (str(tmp_path / "bin"),), str(tmp_path / "cache"))
    conf2, why = c.status()
    assert conf2 is None and "CNI plugin 'a' not found" in why
    assert cni.PodArgs(id="X", netns="", name="n", namespace="ns", uid="u").cni_args() == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=n;K8S_POD_INFRA_CONTAINER_ID=X;K8S_POD_UID=u"
    )
    assert cni.port_mappings([{"container_port": 80, "host_port": 0}]) == []
    assert cni.address({"ips": [{"address": "fd00::2/64"}, {"address": "10.1.2.3/16"}]}) == ("10.1.2.3", 16)


def test_cni_through_tug_cri(net: Net, make_daemon: Any, make_tug_cri: Any) -> None:
    """RunPodSandbox in CNI mode: PodSandboxStatus has host-local's IP, Status says ready and
    which configuration (verbose), StopPodSandbox releases the IP."""
    d = make_daemon(netns=True, image=False, extra=tugd_args(net))
    cri: TugCri = make_tug_cri(d)
    status = cri.runtime.Status(api_pb2.StatusRequest(verbose=True))
    cond = {c.type: c for c in status.status.conditions}
    assert cond["NetworkReady"].status and not cond["NetworkReady"].reason
    info = json.loads(status.info["network"])
    assert (info["mode"], info["network"], info["conf_dir"]) == ("cni", net.name, net.conf_dir)
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="uid-7", attempt=0),
        port_mappings=[api_pb2.PortMapping(container_port=8080, host_port=18080)],
    )
    pid = cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pid)).status
    assert st.state == api_pb2.SANDBOX_READY and net.ip_files() == [st.network.ip]
    assert "18080" in iptables(d.netns)
    cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pid))
    assert_clean(d.netns, net, pid)
    cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pid))
    cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pid))  # again: fine


# A plugin of the test's: records its environment and its stdin, answers with a result (ADD)
# that names the plugin, or fails as asked by its configuration.
RECORDER = """#!/bin/sh
conf=$(cat)
dir=$(dirname "$0")/../calls
n=$(ls "$dir" | wc -l)
{ env | grep ^CNI_ | sort; echo "$conf"; } > "$dir/$n-$(basename "$0")-$CNI_COMMAND"
case "$conf" in *'"fail": "json"'*) echo '{"cniVersion": "1.0.0", "code": 7, "msg": "bad config", \
"details": "field x"}'; exit 1;; *'"fail": "text"'*) echo "oops on stderr" >&2; exit 1;; esac
[ "$CNI_COMMAND" = ADD ] && printf '{"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], \
"ips": [{"address": "10.9.9.%s/24", "interface": 0}], "by": "%s"}' "$n" "$(basename "$0")"
exit 0
"""


def test_cni_chain_as_the_spec_says(anyio_backend_name: str, tmp_path: Any) -> None:
    """The environment, the chain order, prevResult and runtimeConfig each plugin gets, and the
    errors, with recording plugins of the test's (no namespace touched: the core alone)."""
    bin_dir, calls, conf_dir = tmp_path / "bin", tmp_path / "calls", tmp_path / "net.d"
    for d in (bin_dir, calls, conf_dir):
        d.mkdir()
    for name in ("first", "second"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    doc: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "rec",
        "plugins": [{"type": "first", "x": 1}, {"type": "second", "capabilities": {"portMappings": True}}],
    }
    (conf_dir / "10-rec.conflist").write_text(json.dumps(doc))
    c = cni.Cni(str(conf_dir), ("/nonexistent", str(bin_dir)), str(tmp_path / "cache"))
    ports = cni.port_mappings([{"container_port": 80, "host_port": 8080, "protocol": "udp", "host_ip": ""}])
    args = cni.PodArgs(id="abc", netns="/x/net", name="n", namespace="ns", uid="u", port_mappings=ports)

    async def run() -> None:
        conf, result = await c.add(args)
        assert (conf.name, result["by"], cni.address(result)) == ("rec", "second", ("10.9.9.1", 24))
        await c.check("abc", "/x/net")
        await c.delete("abc", "")
        await c.delete("abc", "")  # nothing cached: nothing run

    anyio.run(run, backend=anyio_backend_name)
    recorded = sorted(os.listdir(calls), key=lambda n: int(n.split("-")[0]))
    assert [n.split("-", 1)[1] for n in recorded] == [
        "first-ADD",
        "second-ADD",
        "first-CHECK",
        "second-CHECK",
        "second-DEL",
        "first-DEL",
    ]

    def call(i: int) -> tuple[dict[str, str], dict[str, Any]]:
        lines = (calls / recorded[i]).read_text().splitlines()
        env = dict(line.split("=", 1) for line in lines[:-1])
        return env, json.loads(lines[-1])

    env, conf0 = call(0)
    assert env == {
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=n;K8S_POD_INFRA_CONTAINER_ID=abc;"
        "K8S_POD_UID=u",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": "/x/net",
        "CNI_PATH": f"/nonexistent:{bin_dir}",
    }
    assert conf0 == {"cniVersion": "1.0.0", "name": "rec", "type": "first", "x": 1}  # no caps, no prev
    _, conf1 = call(1)
    assert conf1["prevResult"]["by"] == "first"
    assert conf1["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]
    }
    for i in (2, 3, 4, 5):  # CHECK and DEL: the chain's cached result
        env, conf = call(i)
        assert conf["prevResult"]["by"] == "second", (i, conf)
    assert call(4)[0]["CNI_NETNS"] == ""
    assert os.listdir(tmp_path / "cache") == []
    # Errors: the plugin's JSON, or its stderr; a failed ADD is DELeted, its cache dropped when
    # the DEL fails as the ADD did.
    for fail, want in (("json", 'bad config: field x (error {"cniVersion"'), ("text", "oops on stderr")):
        doc["plugins"][1]["fail"] = fail
        (conf_dir / "10-rec.conflist").write_text(json.dumps(doc))
        with pytest.raises(errors.RuntimeFailed) as info:
            anyio.run(c.add, args, backend=anyio_backend_name)
        assert str(info.value).startswith(
            f"CNI plugin second ({bin_dir}/second) ADD failed (exit status 1): "
        )
        assert want in str(info.value), str(info.value)
        assert os.listdir(tmp_path / "cache") == []
