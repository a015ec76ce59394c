"""Networks end to end (issue 5): each test's tugd runs in a network namespace of its own that the
test made (``make_daemon(netns=True)``), so bridges, veths and nft rules never touch the host's
network; traffic flows only between that namespace and its containers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tugwire import errors

from .conftest import needs_root, needs_runc, netns_links
from .helpers import output, run, start
from .waiting import wait_actions, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc]

HTTPD = [
    "sh",
    "-c",
    "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && httpd -f -p 80 -h /www",
]


def in_ns(d: Any, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """A command in tugd's namespace: the 'host' of the test's containers."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", *cmd], capture_output=True, text=True, timeout=timeout
    )


def ip_of(d: Any, cid: str, network: str) -> str:
    ip: str = d.call("container.inspect", {"id": cid})["networks"][network]["ip"]
    return ip


def wait_http(d: Any, url: str, timeout: float = 20) -> str:
    """GET ``url`` from tugd's namespace with busybox wget until the server answers (a server
    in a container tells nobody when it listens)."""
    stderr: list[str] = []

    def get() -> subprocess.CompletedProcess[str] | None:
        res = in_ns(d, "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-", url)
        stderr.append(res.stderr)
        return res if res.returncode == 0 else None

    answer = wait_until(get, timeout, f"an answer from {url}", interval=0.1, describe=lambda: stderr[-1])
    return answer.stdout


def nft_rules(d: Any) -> str:
    """The text of tugd's own nft table (``ip tugboat-<instance>``) in its namespace."""
    from supervisor.network.host import table_name

    return in_ns(d, "nft", "list", "table", "ip", table_name(d.root)).stdout


def links(d: Any, prefix: str) -> list[str]:
    return [n for n in netns_links(d.netns) if n.startswith(prefix)]


def test_two_containers_on_one_network_talk_tcp_by_name(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True)
    d.tug("network", "create", "--subnet", "10.77.0.0/24", "appnet")
    web = start(d, HTTPD, name="web", network="appnet", network_aliases=["www"])
    assert ip_of(d, web, "appnet") == "10.77.0.2"
    script = (
        "for i in $(seq 100); do timeout 3 wget -q -O - http://web/ && break; sleep 0.1; done; "
        "timeout 3 wget -q -O - http://www/; cat /etc/hosts; cat /etc/resolv.conf; ip route"
    )
    cid, result = run(d, ["sh", "-c", script], name="client", network="appnet")
    out, err = output(d, cid)
    assert result["exit_code"] == 0, (out, err)
    text = out.decode()
    assert text.count(f"hello-from-{web[:12]}") == 2, (text, err)
    assert "10.77.0.2\tweb" in text
    assert "default via 10.77.0.1" in text
    # The server's own /etc/hosts was updated when the client joined.
    hosts = d.call("container.inspect", {"id": web})["bundle"] + "/hosts"
    with open(hosts) as f:
        assert "10.77.0.3\tclient" in f.read()
    d.call("container.delete", {"id": cid})
    with open(hosts) as f:
        assert "client" not in f.read()
    peer = start(d, ["sleep", "1000"], name="peer", network="appnet")
    d.tug("rename", "web", "web-renamed")
    with open(d.call("container.inspect", {"id": peer})["bundle"] + "/hosts") as f:
        assert "\tweb-renamed www " in f.read()
    d.call("container.delete", {"id": peer, "force": True})
    d.call("container.delete", {"id": web, "force": True})
    assert links(d, "tv") == []
    bridge = d.call("network.inspect", {"id": "appnet"})["bridge"]
    assert bridge in links(d, "tb-")
    d.tug("network", "rm", "appnet")
    assert bridge not in links(d, "tb-")


def test_dual_stack_network(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.tug("network", "create", "--ipv6", "--subnet", "10.78.0.0/24", "--subnet", "fd00:78::/64", "dual")
    info = d.call("network.inspect", {"id": "dual"})
    assert (info["subnet6"], info["gateway6"]) == ("fd00:78::/64", "fd00:78::1")
    web = start(d, HTTPD, name="web6", network="dual")
    net = d.call("container.inspect", {"id": web})["networks"]["dual"]
    assert (net["ip"], net["ip6"]) == ("10.78.0.2", "fd00:78::2")
    fixed = d.call(
        "container.create", {"image": "busybox", "cmd": ["true"], "network": "dual", "ip6": "fd00:78::99"}
    )
    with pytest.raises(errors.InvalidArgument, match="already in use"):
        d.call(
            "container.create", {"image": "busybox", "cmd": ["true"], "network": "dual", "ip6": "fd00:78::99"}
        )
    script = (
        "for i in $(seq 100); do timeout 3 wget -q -O - 'http://[fd00:78::2]/' && break; sleep 0.1; done; "
        "grep web6 /etc/hosts; ip -6 route"
    )
    cid, result = run(d, ["sh", "-c", script], network="dual")
    out = output(d, cid)[0].decode()
    assert result["exit_code"] == 0, out
    assert f"hello-from-{web[:12]}" in out
    assert "fd00:78::2\tweb6" in out and "10.78.0.2\tweb6" in out
    assert "default via fd00:78::1" in out
    for bad, message in (
        ({"name": "x", "subnet6": "fd00:78:0:0:1::/80"}, "overlaps"),
        ({"name": "x", "subnet6": "10.0.0.0/24"}, "not an IPv6 prefix"),
        ({"name": "x", "ipv6": True}, "needs an IPv6 subnet"),
    ):
        with pytest.raises(errors.InvalidArgument, match=message):
            d.call("network.create", bad)
    with pytest.raises(errors.InvalidArgument, match="no IPv6 subnet"):
        d.call("container.create", {"image": "busybox", "cmd": ["true"], "ip6": "fd00::5"})
    d.call("container.delete", {"id": fixed["id"]})


def test_containers_on_different_networks_cannot_reach_each_other(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "red", "subnet": "10.81.0.0/24"})
    red = start(d, HTTPD, name="red1", network="red")
    d.call("network.create", {"name": "blue", "subnet": "10.82.0.0/24"})  # after the table was made
    red_ip = ip_of(d, red, "red")
    # Same network: reachable (the server is up); the other network: not, by address or name.
    script = f"for i in $(seq 100); do timeout 3 wget -q -O - http://{red_ip}/ && break; sleep 0.1; done"
    cid, result = run(d, ["sh", "-c", script], network="red")
    assert result["exit_code"] == 0, output(d, cid)
    cid, result = run(
        d,
        ["sh", "-c", f"timeout 3 wget -q -O - http://{red_ip}/; echo rc=$?; grep -c red1 /etc/hosts"],
        network="blue",
    )
    out = output(d, cid)[0].decode()
    assert "hello-from" not in out
    assert "rc=0" not in out
    assert out.strip().endswith("0"), out  # no entry for red1 in a blue container's /etc/hosts


def test_published_port_serves_the_host_side(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True)
    web = start(d, HTTPD, name="web", ports=["18080:80", "127.0.0.1:18081:80/tcp", "80"])
    info = d.call("container.inspect", {"id": web})
    ports = info["ports"]
    assert ports[0] == {"host_ip": "", "host_port": 18080, "container_port": 80, "proto": "tcp"}
    picked = ports[2]["host_port"]
    assert 32768 <= picked <= 60999
    gateway = info["networks"]["bridge"]["gateway"]
    expected = f"hello-from-{web[:12]}\n"
    assert wait_http(d, "http://127.0.0.1:18080/") == expected
    assert wait_http(d, f"http://{gateway}:18080/") == expected
    assert wait_http(d, "http://127.0.0.1:18081/") == expected
    assert wait_http(d, f"http://127.0.0.1:{picked}/") == expected
    # 18081 is published on 127.0.0.1 only.
    assert (
        in_ns(
            d, "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", f"http://{gateway}:18081/"
        ).returncode
        != 0
    )
    # The same host port twice: the second start fails cleanly and leaves nothing behind.
    other = d.call("container.create", {"image": "busybox", "cmd": HTTPD, "ports": ["18080:80"]})["id"]
    with pytest.raises(errors.FailedPrecondition, match="already allocated"):
        d.call("container.start", {"id": other})
    assert sorted(links(d, "tv")) == [f"tv0{web[:12]}"]
    d.call("container.delete", {"id": web, "force": True})
    assert (
        in_ns(
            d, "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:18080/"
        ).returncode
        != 0
    )
    rules = nft_rules(d)
    assert "dnat" not in rules
    d.call("container.start", {"id": other})  # the port is free again
    assert wait_http(d, "http://127.0.0.1:18080/").startswith("hello-from-")


def test_publish_all_publishes_the_images_exposed_ports(make_daemon: Any, tmp_path: Any) -> None:
    d = make_daemon(netns=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nEXPOSE 80 53/udp\n")
    d.tug("build", "-t", "exposed:1", str(ctx), timeout=120)
    cid = d.call("container.create", {"image": "exposed:1", "cmd": HTTPD, "publish_all": True})["id"]
    d.call("container.start", {"id": cid})
    ports = {
        (p["container_port"], p["proto"]): p["host_port"]
        for p in d.call("container.inspect", {"id": cid})["ports"]
    }
    assert set(ports) == {(80, "tcp"), (53, "udp")}
    assert all(32768 <= port <= 60999 for port in ports.values())
    assert wait_http(d, f"http://127.0.0.1:{ports[80, 'tcp']}/") == f"hello-from-{cid[:12]}\n"
    rules = nft_rules(d)
    assert f"udp dport {ports[53, 'udp']} dnat to" in rules


def test_outbound_traffic_is_nated_through_the_host(make_daemon: Any, tmp_path: Any) -> None:
    """A namespace "outside" tugd's, joined to it by a veth, with no route to the containers'
    subnet: a container reaches a server there only through the masquerade."""
    d = make_daemon(netns=True)
    outside = d.netns + "o"
    subprocess.run(["ip", "netns", "add", outside], check=True)
    try:
        for cmd in (
            [
                "ip",
                "-n",
                d.netns,
                "link",
                "add",
                "tbout0",
                "type",
                "veth",
                "peer",
                "name",
                "tbout1",
                "netns",
                outside,
            ],
            ["ip", "-n", d.netns, "addr", "add", "192.0.2.1/24", "dev", "tbout0"],
            ["ip", "-n", d.netns, "link", "set", "tbout0", "mtu", "1400", "up"],
            ["ip", "-n", d.netns, "route", "add", "default", "via", "192.0.2.2"],
            ["ip", "-n", outside, "addr", "add", "192.0.2.2/24", "dev", "tbout1"],
            ["ip", "-n", outside, "link", "set", "tbout1", "up"],
            ["ip", "-n", outside, "link", "set", "lo", "up"],
            ["ip", "-n", d.netns, "-6", "addr", "add", "fd00:192::1/64", "dev", "tbout0", "nodad"],
            ["ip", "-n", outside, "-6", "addr", "add", "fd00:192::2/64", "dev", "tbout1", "nodad"],
            ["ip", "-n", d.netns, "-6", "route", "add", "default", "via", "fd00:192::2"],
        ):
            subprocess.run(cmd, check=True)
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("outside\n")
        server = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{outside}", "busybox", "httpd", "-f", "-p", "8000", "-h", str(www)]
        )
        try:
            url = "http://192.0.2.2:8000/"
            script = f"for i in $(seq 20); do timeout 3 wget -q -O - {url} && break; sleep 0.1; done"
            cid, result = run(d, ["sh", "-c", script + "; cat /sys/class/net/eth0/mtu"])
            assert result["exit_code"] == 0
            # Outbound NAT worked, and the veth took the MTU of the uplink (the default route's).
            assert output(d, cid)[0] == b"outside\n1400\n"
            # A network made after the first one is wired gets its NAT rule too.
            keep = start(d, ["sleep", "1000"])
            d.call("network.create", {"name": "late", "subnet": "10.84.0.0/24", "subnet6": "fd00:84::/64"})
            cid, result = run(d, ["sh", "-c", script], network="late")
            assert result["exit_code"] == 0
            assert output(d, cid)[0] == b"outside\n"
            # IPv6 too, masqueraded by the ip6 table (the outside has no route to fd00:84::/64).
            script6 = script.replace("192.0.2.2", "[fd00:192::2]")
            cid, result = run(d, ["sh", "-c", script6], network="late")
            assert result["exit_code"] == 0, output(d, cid)
            assert output(d, cid)[0] == b"outside\n"
            d.call("container.delete", {"id": keep, "force": True})
        finally:
            server.kill()
            server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", outside], check=False)


def test_addresses_survive_a_tugd_restart_without_duplicates(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "keep", "subnet": "10.90.0.0/24", "ip_range": "10.90.0.128/28"})
    first = [start(d, ["sleep", "1000"], network="keep") for _ in range(3)]
    created = d.call("container.create", {"image": "busybox", "cmd": ["true"], "network": "keep"})["id"]
    before = {cid: ip_of(d, cid, "keep") for cid in [*first, created]}
    assert sorted(before.values()) == [f"10.90.0.{i}" for i in range(129, 133)]
    d.kill9()
    d.start()
    after = {cid: ip_of(d, cid, "keep") for cid in before}
    assert after == before
    assert sorted(links(d, "tv")) == sorted(f"tv0{cid[:12]}" for cid in first)  # kept, not rebuilt
    more = [start(d, ["sleep", "1000"], network="keep") for _ in range(2)]
    ips = [ip_of(d, cid, "keep") for cid in [*first, created, *more]]
    assert len(set(ips)) == len(ips) == 6
    # The first container still answers on its address after the restart.
    script = f"ping -c 1 -W 2 {before[first[0]]}"
    cid, result = run(d, ["sh", "-c", script], network="keep")
    assert result["exit_code"] == 0, output(d, cid)
    # An address comes back on rm, and only then.
    freed = before[first[1]]
    d.call("container.delete", {"id": first[1], "force": True})
    d.call("container.delete", {"id": cid})
    again = d.call("container.create", {"image": "busybox", "cmd": ["true"], "network": "keep"})["id"]
    assert ip_of(d, again, "keep") == freed


def test_fifty_containers_on_one_network_get_distinct_addresses(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "many", "subnet": "10.91.0.0/24"})
    cids = [start(d, ["sleep", "1000"], network="many") for _ in range(50)]
    ips = [ip_of(d, cid, "many") for cid in cids]
    assert len(set(ips)) == 50
    assert "10.91.0.1" not in ips  # the gateway
    assert len(links(d, "tv")) == 50
    # Each really has its address: the last one reaches the first by its name.
    first = d.call("container.inspect", {"id": cids[0]})["name"]
    cid, result = run(d, ["ping", "-c", "1", "-W", "2", first], network="many")
    assert result["exit_code"] == 0, output(d, cid)
    for c in cids:
        d.call("container.delete", {"id": c, "force": True})
    d.call("container.delete", {"id": cid})
    assert links(d, "tv") == []
    assert d.call("network.inspect", {"id": "many"})["containers"] == {}


def test_crashes_leave_nothing_behind(make_daemon: Any, backend: str) -> None:
    """tugd kill -9 while one container exits and another runs, a shim kill -9, and garbage
    of ours planted in the namespace: the restart reconciles, rm cleans the rest."""
    d = make_daemon(backend=backend, netns=True)
    stays = start(d, ["sleep", "1000"], name="stays")
    goes = start(d, ["sh", "-c", "sleep 1"], name="goes", ports=["18090:80"])
    assert "dport 18090" in nft_rules(d)
    shim_dies = start(d, ["sleep", "1000"], name="shimdies")
    d.kill9()
    # Garbage of ours (links with our alias): a veth of no container, a bridge of no network;
    # and another tugd's bridge (no alias of ours), which must stay.
    from supervisor.network.host import link_alias

    for cmd in (
        ["link", "add", "tv0abcdefabcdef", "type", "veth", "peer", "name", "tbjunk"],
        ["link", "set", "tv0abcdefabcdef", "alias", link_alias(d.root)],
        ["link", "add", "tb-abcdefabcdef", "type", "bridge"],
        ["link", "set", "tb-abcdefabcdef", "alias", link_alias(d.root)],
    ):
        subprocess.run(["ip", "-n", d.netns, *cmd], check=True)
    subprocess.run(["ip", "-n", d.netns, "link", "add", "tb-0123456789ab", "type", "bridge"], check=True)
    goes_ns = os.path.join(d.state, "netns", goes)
    exit_record = os.path.join(d.state, "shims", goes, "exit.json")
    # "goes" exits while tugd is down: its shim writes the exit record
    wait_until(lambda: os.path.exists(exit_record), 20, "the exit record of 'goes'")
    assert os.path.exists(goes_ns)
    d.start()
    assert d.call("container.inspect", {"id": goes})["state"] == "exited"
    assert not os.path.exists(goes_ns)
    assert "dport 18090" not in nft_rules(d)
    assert sorted(links(d, "tv")) == sorted(f"tv0{c[:12]}" for c in (stays, shim_dies))
    assert "tb-abcdefabcdef" not in links(d, "tb-")
    assert "tb-0123456789ab" in links(d, "tb-")  # not ours: never touched
    # A shim killed: the container's fate is unknown until rm, which cleans everything.
    shim_pid = d.call("container.inspect", {"id": shim_dies})["shim_pid"]
    os.kill(shim_pid, 9)
    wait_actions(d, shim_dies, lambda a: "die" in a, what="the die of the container whose shim died")
    assert d.call("container.inspect", {"id": shim_dies})["state"] == "unknown"
    d.call("container.delete", {"id": shim_dies, "force": True})
    d.call("container.delete", {"id": goes})
    assert links(d, "tv") == [f"tv0{stays[:12]}"]
    assert os.listdir(os.path.join(d.state, "netns")) == [stays]
    d.call("container.delete", {"id": stays, "force": True})
    assert links(d, "tv") == []
    assert os.listdir(os.path.join(d.state, "netns")) == []


def test_host_and_none_networks(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "side", "subnet": "10.93.0.0/24"})
    bridge = d.call("network.inspect", {"id": "side"})["bridge"]
    start(d, ["sleep", "1000"], network="side")  # the side bridge now exists in tugd's namespace
    cid, _ = run(d, ["ip", "-o", "link"], network="host")
    assert bridge in output(d, cid)[0].decode()
    cid, _ = run(d, ["sh", "-c", "ip -o link; ip -o addr"], network="none")
    out = output(d, cid)[0].decode()
    assert "lo:" in out and "127.0.0.1/8" in out
    assert "eth0" not in out
    none_id = d.call("network.inspect", {"id": "none"})["id"]
    assert d.call("container.inspect", {"id": cid})["networks"] == {"none": {"network_id": none_id}}
    for net in ("host", "none"):
        with pytest.raises(errors.InvalidArgument):
            d.call(
                "container.create", {"image": "busybox", "cmd": ["true"], "network": net, "ports": ["80:80"]}
            )


def test_generated_etc_files(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    cid, _ = run(
        d,
        ["sh", "-c", "cat /etc/hosts /etc/resolv.conf /etc/hostname; hostname"],
        hostname="boaty",
        dns=["192.0.2.53"],
        add_hosts=["db.example:192.0.2.7"],
    )
    out = output(d, cid)[0].decode()
    ip = ip_of(d, cid, "bridge")
    assert f"{ip}\tboaty " in out
    assert "192.0.2.7\tdb.example" in out
    assert "nameserver 192.0.2.53" in out
    assert out.endswith("boaty\nboaty\n")


def test_connect_and_disconnect_a_running_container(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.tug("network", "create", "--subnet", "10.94.0.0/24", "one")
    d.tug("network", "create", "--subnet", "10.95.0.0/24", "two")
    web = start(d, HTTPD, name="web2", network="two")
    box = start(d, ["sleep", "1000"], name="box", network="one")
    d.tug("network", "connect", "--ip", "10.95.0.50", "--alias", "boxy", "two", "box")
    info = d.call("container.inspect", {"id": box})["networks"]
    assert info["two"]["ip"] == "10.95.0.50" and info["two"]["interface"] == "eth1"
    res = d.call("container.inspect", {"id": web})["bundle"]
    with open(res + "/hosts") as f:
        assert "10.95.0.50\tbox boxy" in f.read()
    probe = "for i in $(seq 100); do timeout 3 wget -q -O - http://web2/ && exit 0; sleep 0.1; done; exit 1"
    ex = d.tug("exec", "box", "sh", "-c", probe, check=False)
    assert ex.returncode == 0, ex
    with pytest.raises(errors.FailedPrecondition, match="active endpoints"):
        d.call("network.delete", {"id": "two"})
    d.tug("network", "disconnect", "two", "box")
    ex = d.tug("exec", "box", "sh", "-c", "timeout 3 wget -q -O - http://10.95.0.2/", check=False)
    assert ex.returncode != 0
    assert links(d, f"tv1{box[:12]}") == []
    assert "two" not in d.call("container.inspect", {"id": box})["networks"]


def test_bad_input_is_refused_and_changes_nothing(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "base", "subnet": "10.96.0.0/16"})
    before = d.call("network.list")
    bad_networks = [
        ({"name": "x", "subnet": "10.96.5.0/24"}, "overlaps"),
        ({"name": "x", "subnet": "not-a-subnet"}, "invalid subnet"),
        ({"name": "x", "subnet": "fd00::/64"}, "IPv6"),
        ({"name": "x", "subnet": "10.97.0.0/24", "gateway": "10.98.0.1"}, "not a host address"),
        ({"name": "x", "subnet": "10.97.0.0/24", "ip_range": "10.97.1.0/28"}, "not within"),
        ({"name": "base", "subnet": "10.99.0.0/24"}, "already exists"),
        ({"name": "bad/name"}, "invalid network name"),
        ({"name": "x", "driver": "overlay"}, "not supported"),
    ]
    for params, message in bad_networks:
        with pytest.raises(errors.TugError, match=message):
            d.call("network.create", params)
    for builtin in ("bridge", "host", "none"):
        with pytest.raises(errors.FailedPrecondition, match="pre-defined"):
            d.call("network.delete", {"id": builtin})
    with pytest.raises(errors.NotFound):
        d.call("network.delete", {"id": "nosuch"})
    taken = d.call(
        "container.create", {"image": "busybox", "cmd": ["true"], "network": "base", "ip": "10.96.0.9"}
    )["id"]
    bad_containers: list[tuple[dict[str, Any], str]] = [
        ({"network": "base", "ip": "10.1.0.9"}, "not in the subnet"),
        ({"network": "base", "ip": "10.96.0.9"}, "already in use"),
        ({"network": "base", "ip": "10.96.0.1"}, "reserved"),
        ({"ip": "172.17.0.9"}, "user-defined"),
        ({"ports": ["99999:80"]}, "invalid port"),
        ({"ports": ["80:80/sctp"]}, "invalid protocol"),
        ({"ports": ["1.2.3:80:80"]}, "invalid IP"),
        ({"ports": ["8080:80", "8080:81"]}, "twice"),
        ({"dns": ["nameserver"]}, "--dns"),
        ({"add_hosts": ["noip"]}, "--add-host"),
        ({"network_aliases": ["bad alias"]}, "alias"),
    ]
    for params, message in bad_containers:
        with pytest.raises(errors.InvalidArgument, match=message):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], **params})
    with pytest.raises(errors.NotFound, match="network nosuch not found"):
        d.call("container.create", {"image": "busybox", "cmd": ["true"], "network": "nosuch"})
    assert [c["id"] for c in d.call("container.list", {"all": True})] == [taken]
    with pytest.raises(errors.FailedPrecondition, match="active endpoints"):
        d.call("network.delete", {"id": "base"})
    after = d.call("network.list")
    assert [n["name"] for n in after] == [n["name"] for n in before]
    d.call("container.delete", {"id": taken})
    assert d.tug("network", "prune").stdout.decode().split() == ["Deleted", "Networks:", "base"]
    assert [n["name"] for n in d.call("network.list")] == ["bridge", "host", "none"]
    # An address of the host's (here: of tugd's namespace) is never shadowed by a network.
    subprocess.run(
        ["ip", "-n", d.netns, "link", "add", "tbh0", "type", "veth", "peer", "name", "tbh1"], check=True
    )
    subprocess.run(["ip", "-n", d.netns, "addr", "add", "172.18.5.1/24", "dev", "tbh0"], check=True)
    with pytest.raises(errors.InvalidArgument, match=r"overlaps the host.s 172\.18\.5\.0/24 on tbh0"):
        d.call("network.create", {"name": "x", "subnet": "172.18.0.0/16"})
    d.call("network.create", {"name": "auto"})
    assert d.call("network.inspect", {"id": "auto"})["subnet"] == "172.19.0.0/16"  # 172.18/16 skipped


def test_cli_network_commands(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    nid = d.tug("network", "create", "--subnet", "10.60.0.0/24", "--gateway", "10.60.0.254", "clinet").stdout
    listing = d.tug("network", "ls").stdout.decode()
    assert "clinet" in listing and "10.60.0.0/24" in listing and nid.decode()[:12] in listing
    info = json.loads(d.tug("network", "inspect", "clinet").stdout)
    assert info[0]["gateway"] == "10.60.0.254"
    d.tug("run", "--network", "clinet", "--name", "c1", "busybox", "true")
    assert d.call("container.inspect", {"id": "c1"})["networks"]["clinet"]["ip"] == "10.60.0.1"
    res = d.tug("network", "rm", "clinet", check=False)
    assert res.returncode == 1 and b"active endpoints" in res.stderr
    d.tug("rm", "c1")
    d.tug("network", "rm", "clinet")
    assert b"clinet" not in d.tug("network", "ls").stdout
    out = d.tug("events", "--since", "10m", "--until", "0s", "--filter", "type=network", "--format", "json")
    events = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(e["action"], e["name"]) for e in events] == [("create", "clinet"), ("destroy", "clinet")]


def test_the_host_network_is_untouched_without_a_namespace(daemon: Any) -> None:
    """The ordinary test tugd runs in the host's namespace with --default-network none: its
    containers get runc's empty namespace and nothing of ours appears on the host."""
    host_links = netns_links_of_host()
    cid, _ = run(daemon, ["ip", "-o", "link"])
    assert "eth0" not in output(daemon, cid)[0].decode()
    none_id = daemon.call("network.inspect", {"id": "none"})["id"]
    assert d_networks(daemon, cid) == {"none": {"network_id": none_id}}
    ours = [n for n in netns_links_of_host() if n.startswith(("tv", "tb-")) and n not in host_links]
    assert ours == []


def netns_links_of_host() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


def d_networks(d: Any, cid: str) -> dict[str, Any]:
    nets: dict[str, Any] = d.call("container.inspect", {"id": cid})["networks"]
    return nets


# ------------------------------------------------------------------ the pure parts, no tugd


def test_parse_port_forms() -> None:
    from supervisor.network.ipam import Port, parse_port

    assert parse_port("8080:80") == Port("", 8080, 80, "tcp")
    assert parse_port("127.0.0.1:8080:80/udp") == Port("127.0.0.1", 8080, 80, "udp")
    assert parse_port("0.0.0.0:8080:80") == Port("", 8080, 80, "tcp")
    assert parse_port("80") == Port("", 0, 80, "tcp")
    assert parse_port("127.0.0.1::80") == Port("127.0.0.1", 0, 80, "tcp")
    for bad in ("", "x:80", "8080:0", "8080:65536", "80/icmp", "[::1]:80:80", "a:b:c:d"):
        with pytest.raises(errors.InvalidArgument):
            parse_port(bad)


def test_allocator_skips_reserved_and_taken_addresses() -> None:
    from supervisor.network.ipam import allocate, exposed_ports

    assert allocate("10.0.0.0/29", "", "10.0.0.1", set()) == "10.0.0.2"
    assert allocate("10.0.0.0/29", "", "10.0.0.1", {"10.0.0.2", "10.0.0.3"}) == "10.0.0.4"
    assert allocate("10.0.0.0/24", "10.0.0.128/30", "10.0.0.1", set()) == "10.0.0.129"
    taken = {f"10.0.0.{i}" for i in range(2, 7)}
    with pytest.raises(errors.InvalidArgument, match="no address left"):
        allocate("10.0.0.0/29", "", "10.0.0.1", taken)
    with pytest.raises(errors.InvalidArgument, match="reserved"):
        allocate("10.0.0.0/29", "", "10.0.0.1", set(), "10.0.0.7")  # the broadcast address
    assert [p.container_port for p in exposed_ports({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}})] == [
        53,
        80,
    ]


def test_hosts_and_resolv_conf_text() -> None:
    from supervisor.network import files

    ef = files.EtcFiles(
        hostname="h",
        own=[files.HostsEntry("10.0.0.2", ["h", "name", "h"])],
        peers=[files.HostsEntry("10.0.0.3", ["peer", "alias"])],
        extra=[files.HostsEntry("192.0.2.1", ["db"])],
        dns=["192.0.2.53"],
    )
    hosts = files.hosts_text(ef)
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    assert hosts.endswith("10.0.0.2\th name\n10.0.0.3\tpeer alias\n192.0.2.1\tdb\n")
    assert files.resolv_text(ef).startswith("nameserver 192.0.2.53\n")
    assert "127.0.1.1\tnobody" in files.hosts_text(files.EtcFiles(hostname="nobody"))


def test_write_in_place_keeps_the_inode(tmp_path: Any) -> None:
    from supervisor.network.files import write_in_place

    path = str(tmp_path / "hosts")
    write_in_place(path, "a long first version\n")
    inode = os.stat(path).st_ino
    write_in_place(path, "short\n")
    assert os.stat(path).st_ino == inode
    with open(path) as f:
        assert f.read() == "short\n"


def test_nft_ruleset_text() -> None:
    from supervisor.network import nft

    rs = nft.Ruleset(
        bridges=[
            nft.BridgeRules("tb-a", "10.1.0.0/24"),
            nft.BridgeRules("tb-b", "10.2.0.0/24", internal=True),
        ],
        forwards=[
            nft.Forward("", 8080, "tcp", "10.1.0.2", 80),
            nft.Forward("127.0.0.1", 53, "udp", "10.1.0.3", 53),
        ],
    )
    text = rs.render("tugboat-0a1b2c3d")
    assert text.startswith("table ip tugboat-0a1b2c3d {") and "table ip6 tugboat-0a1b2c3d {" in text
    assert "fib daddr type local tcp dport 8080 dnat to 10.1.0.2:80" in text
    assert "ip daddr 127.0.0.1 udp dport 53 dnat to 10.1.0.3:53" in text
    assert 'ip saddr 10.1.0.0/24 oifname != "tb-a" masquerade' in text
    assert "10.2.0.0/24" not in text  # internal: no NAT out
    assert 'iifname "tb-a" oifname "tb-*" oifname != "tb-a" drop' in text


def test_run_flags_become_create_params() -> None:
    from supervisor.cli import main as cli

    argv = [
        "run", "--network", "app", "--ip", "10.1.0.5", "--network-alias", "db", "--dns", "192.0.2.53",
        "--add-host", "gw:192.0.2.1", "-p", "8080:80", "-p", "127.0.0.1::53/udp", "-P", "busybox", "true",
    ]  # fmt: skip
    params = cli.create_params(cli.build_parser(argv).parse_args(argv))
    assert {k: v for k, v in params.items() if k not in ("image", "cmd")} == {
        "network": "app",
        "ip": "10.1.0.5",
        "network_aliases": ["db"],
        "dns": ["192.0.2.53"],
        "add_hosts": ["gw:192.0.2.1"],
        "ports": ["8080:80", "127.0.0.1::53/udp"],
        "publish_all": True,
    }
    plain = cli.create_params(cli.build_parser(["run", "busybox"]).parse_args(["run", "busybox"]))
    assert plain == {"image": "busybox"}


def test_the_cli_never_imports_pyroute2(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    code = (
        "import sys\n"
        "from supervisor.cli.main import main\n"
        f"S = {d.socket!r}\n"
        "assert main(['--socket', S, 'network', 'create', 'n1']) == 0\n"
        "assert main(['--socket', S, 'run', '--network', 'n1', '-p', '80', 'busybox', 'true']) == 0\n"
        "assert main(['--socket', S, 'network', 'ls']) == 0\n"
        "assert 'pyroute2' not in sys.modules, 'pyroute2 imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_unknown_default_network_is_one_clear_line() -> None:
    """``tugd --default-network NAME`` for a network that does not exist: exit status 2 and one
    line naming it, not a traceback of task groups. It fails on the store's records, before any
    bridge, namespace or socket exists (so this runs on the host's network safely)."""
    import shutil
    import tempfile

    from .conftest import TUGD

    base = tempfile.mkdtemp(prefix="tb", dir="/tmp")  # short: the socket path must fit
    try:
        proc = subprocess.run(
            [TUGD, "--root", f"{base}/root", "--state", f"{base}/s",
             "--default-network", "nosuchnet", "--metrics-address", "off"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "NOTIFY_SOCKET": ""},
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == ["tugd: --default-network nosuchnet: no such network"]
        assert not os.path.exists(f"{base}/s/tugd.sock")
    finally:
        shutil.rmtree(base)


def test_a_bridge_deleted_behind_tugds_back_is_made_again(make_daemon: Any) -> None:
    """tugd sets a bridge up once and keeps its index: a bridge deleted by someone else since
    fails the next wiring, which sets the bridge up anew and wires again."""
    d = make_daemon(netns=True)
    d.call("network.create", {"name": "gone", "subnet": "10.89.0.0/24"})
    bridge = d.call("network.inspect", {"id": "gone"})["bridge"]
    start(d, ["sleep", "1000"], network="gone")  # the bridge is set up, its index kept
    subprocess.run(["ip", "-n", d.netns, "link", "del", bridge], check=True)
    assert bridge not in links(d, "tb-")
    cid, result = run(d, ["ping", "-c", "1", "-W", "2", "10.89.0.1"], network="gone")
    assert result["exit_code"] == 0, output(d, cid)
    assert bridge in links(d, "tb-")


def test_forwards_added_to_the_table_are_what_a_rebuild_makes(make_daemon: Any) -> None:
    """A ``-p`` start adds its rules to the table as it stands (one small transaction); the
    table is then what the rebuild at the next start makes of the store, and a removal rebuilds
    it without them."""
    d = make_daemon(netns=True)
    first = start(d, ["sleep", "1000"], ports=["18092:80"])  # the bridge's rules are in by now
    second = start(d, ["sleep", "1000"], ports=["127.0.0.1:18093:80/udp", "18094:81"])

    def rules() -> list[str]:
        return sorted(line.strip() for line in nft_rules(d).splitlines() if "dnat to" in line)

    added = rules()
    assert len(added) == 6 and sum("dport 18093" in r and "udp" in r for r in added) == 2
    d.restart()
    assert rules() == added
    d.call("container.delete", {"id": second, "force": True})  # the exit: rebuilt without them
    assert rules() == [r for r in added if "dport 18092 " in r]
    d.call("container.delete", {"id": first, "force": True})
    assert rules() == []
