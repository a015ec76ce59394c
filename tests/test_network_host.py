"""Networks on a shared host (issue 18): beside a docker0-like bridge, two tugd side by side in
one network namespace the test made, and nothing left behind by ``network rm``/``prune``,
``tug system reset`` or ``tugd --cleanup``."""

from __future__ import annotations

import ipaddress
import subprocess
from typing import Any

import pytest

from supervisor.network import host
from tugwire import errors

from .conftest import TUGD, needs_root, needs_runc, netns_links
from .helpers import start
from .test_network import HTTPD, in_ns, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc]


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def subnet_of(d: Any, network: str = "bridge") -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(d.call("network.inspect", {"id": network})["subnet"])


def tables(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    return out.stdout.split("\n")


def has_table(ns: str, d: Any) -> bool:
    return f"table ip {host.table_name(d.root)}" in tables(ns)


def answers(d: Any, port: int) -> bool:
    res = in_ns(d, "busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/")
    return res.returncode == 0


def cleanup_cli(d: Any) -> subprocess.CompletedProcess[str]:
    """``tugd --cleanup`` for ``d``'s roots, in its namespace."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", TUGD, "--root", d.root, "--state", d.state, "--cleanup"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_tugd_beside_docker0_each_keep_their_subnet_table_and_ports(make_daemon: Any) -> None:
    ns = make_daemon.new_netns()
    docker0 = ipaddress.IPv4Network("172.17.0.0/16")
    ip(ns, "link", "add", "docker0", "type", "bridge")
    ip(ns, "addr", "add", "172.17.0.1/16", "dev", "docker0")
    ip(ns, "link", "set", "docker0", "up")
    a = make_daemon(netns=ns)
    b = make_daemon(netns=ns, backend="trio")  # both backends side by side
    sa, sb = subnet_of(a), subnet_of(b)
    # docker's pools in order: 172.17/16 is docker0's, so 172.18/16, then 172.19/16 (a's bridge
    # was made at a's start, so b saw it).
    assert (sa, sb) == (ipaddress.IPv4Network("172.18.0.0/16"), ipaddress.IPv4Network("172.19.0.0/16"))
    assert not sa.overlaps(sb) and not sa.overlaps(docker0) and not sb.overlaps(docker0)
    user_a = a.call("network.create", {"name": "side"})["id"]
    assert subnet_of(a, user_a) == ipaddress.IPv4Network("172.20.0.0/16")
    wa = start(a, HTTPD, name="wa", ports=["18101:80"])
    wb = start(b, HTTPD, name="wb", ports=["18102:80"])
    ok_a, ok_b = f"hello-from-{wa[:12]}\n", f"hello-from-{wb[:12]}\n"
    assert wait_http(a, "http://127.0.0.1:18101/") == ok_a
    assert wait_http(b, "http://127.0.0.1:18102/") == ok_b
    assert has_table(ns, a) and has_table(ns, b) and "table ip tugboat" not in tables(ns)
    # A port another tugd publishes is refused (a DNAT rule holds no socket to collide with).
    taken = b.call("container.create", {"image": "busybox", "cmd": HTTPD, "ports": ["18101:80"]})["id"]
    with pytest.raises(errors.FailedPrecondition, match=r"published by another tugd \(nft table tugboat-"):
        b.call("container.start", {"id": taken})
    b.call("container.delete", {"id": taken})
    # Each tugd stopped: the other's port and its own container's port keep answering.
    for down, up in ((a, b), (b, a)):
        down.stop()
        assert answers(a, 18101) and answers(b, 18102)
        up.restart()  # the other's restart rebuilds only its own table
        assert answers(a, 18101) and answers(b, 18102)
        down.start()
        assert wait_http(a, "http://127.0.0.1:18101/") == ok_a
        assert wait_http(b, "http://127.0.0.1:18102/") == ok_b
    assert (subnet_of(a), subnet_of(b)) == (sa, sb)  # kept in the store across restarts
    # Clean-up refused while containers exist: through the daemon, and with tugd --cleanup.
    with pytest.raises(errors.FailedPrecondition, match=r"1 container\(s\) exist \(wb\)"):
        b.call("system.reset")
    res = cleanup_cli(b)
    assert res.returncode == 1 and "tugd is running" in res.stderr, res
    b.stop()
    res = cleanup_cli(b)
    assert res.returncode == 1 and "container(s) exist (wb)" in res.stderr, res
    b.start()
    # a's reset through its daemon: its bridges and table go, b's port is untouched.
    a.call("container.delete", {"id": wa, "force": True})
    bridges_a = {n["bridge"] for n in a.call("network.list") if n["bridge"]}
    assert bridges_a <= set(netns_links(ns))
    a.tug("system", "reset")
    assert not bridges_a & set(netns_links(ns))
    assert not has_table(ns, a) and has_table(ns, b)
    assert answers(b, 18102)
    assert subnet_of(a) == sa  # decided once: the definitions stay
    a.stop()
    # b's clean-up with tugd --cleanup, once it has no container and is stopped.
    b.call("container.delete", {"id": wb, "force": True})
    b.stop()
    res = cleanup_cli(b)
    assert res.returncode == 0, res
    assert [n for n in netns_links(ns) if n.startswith(("tb-", "tv"))] == []
    assert "docker0" in netns_links(ns)  # not ours: untouched
    assert not has_table(ns, b) and not any("tugboat" in t for t in tables(ns))
    assert cleanup_cli(b).stdout.strip() == "nothing to remove"


def test_subnets_overlapping_the_host_are_refused_and_rm_prune_remove_bridges(make_daemon: Any) -> None:
    d = make_daemon(netns=True, extra=["--default-address-pool", "base=10.123.0.0/16,size=24"])
    assert subnet_of(d) == ipaddress.IPv4Network("10.123.0.0/24")
    # Another bridge's address (down: no route, the address counts) and a VPN-like route.
    ip(d.netns, "link", "add", "dk0", "type", "bridge")
    ip(d.netns, "addr", "add", "10.123.1.1/24", "dev", "dk0")
    ip(d.netns, "link", "add", "vpn0", "type", "veth", "peer", "name", "vpn1")
    ip(d.netns, "link", "set", "vpn0", "up")
    ip(d.netns, "route", "add", "10.50.0.0/16", "dev", "vpn0")
    before = d.call("network.list")
    with pytest.raises(
        errors.InvalidArgument, match=r"10\.123\.1\.0/25 overlaps the host's 10\.123\.1\.0/24 on dk0"
    ):
        d.call("network.create", {"name": "x", "subnet": "10.123.1.0/25"})
    with pytest.raises(errors.InvalidArgument, match=r"overlaps the host's route 10\.50\.0\.0/16 on vpn0"):
        d.call("network.create", {"name": "x", "subnet": "10.50.3.0/24"})
    with pytest.raises(errors.InvalidArgument, match="overlaps with network bridge"):
        d.call("network.create", {"name": "x", "subnet": "10.123.0.128/25"})
    assert d.call("network.list") == before
    assert [n for n in netns_links(d.netns) if n.startswith("tb-")] == [before[0]["bridge"]]
    # Without --subnet: the next free /24 of the pool, its bridge made at once.
    one = d.call("network.create", {"name": "one"})["id"]
    assert subnet_of(d, one) == ipaddress.IPv4Network("10.123.2.0/24")
    br_one = d.call("network.inspect", {"id": one})["bridge"]
    assert br_one in netns_links(d.netns)
    alias = subprocess.run(
        ["ip", "-n", d.netns, "-o", "link", "show", br_one], capture_output=True, text=True
    )
    assert f"alias {host.link_alias(d.root)}" in alias.stdout
    start(d, ["sleep", "1000"], network="one", ports=["18111:80"])  # the table now has its rules
    d.tug("rm", "-f", d.call("container.list")[0]["id"])
    d.tug("network", "rm", "one")
    assert br_one not in netns_links(d.netns)
    assert br_one not in in_ns(d, "nft", "list", "table", "ip", host.table_name(d.root)).stdout
    two = d.call("network.create", {"name": "two", "subnet": "10.124.0.0/24"})["id"]
    three = d.call("network.create", {"name": "three"})["id"]
    bridges = [d.call("network.inspect", {"id": n})["bridge"] for n in (two, three)]
    assert set(bridges) <= set(netns_links(d.netns))
    assert sorted(d.tug("network", "prune").stdout.decode().split()) == [
        "Deleted",
        "Networks:",
        "three",
        "two",
    ]
    assert not set(bridges) & set(netns_links(d.netns))


def test_the_default_bridge_subnet_is_chosen_on_first_use_and_kept(make_daemon: Any) -> None:
    """With another default network, nothing is made at start; the first container on
    ``bridge`` chooses its subnet (past a host address on 172.17) and makes the bridge."""
    d = make_daemon(netns=True, extra=["--default-network", "none"])
    assert d.call("network.inspect", {"id": "bridge"})["subnet"] == ""
    assert [n for n in netns_links(d.netns) if n.startswith("tb-")] == []
    ip(d.netns, "link", "add", "dk0", "type", "bridge")
    ip(d.netns, "addr", "add", "172.17.0.1/16", "dev", "dk0")
    cid = start(d, ["sleep", "1000"], network="bridge")
    assert subnet_of(d) == ipaddress.IPv4Network("172.18.0.0/16")
    assert d.call("container.inspect", {"id": cid})["networks"]["bridge"]["ip"] == "172.18.0.2"
    bridge = d.call("network.inspect", {"id": "bridge"})["bridge"]
    assert bridge in netns_links(d.netns)
    ip(d.netns, "link", "del", "dk0")
    d.restart()
    assert subnet_of(d) == ipaddress.IPv4Network("172.18.0.0/16")  # decided once: kept
    d.call("container.delete", {"id": cid, "force": True})


def test_a_shared_table_of_an_older_tugd_goes_once_nobody_uses_it(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    old = (
        "table ip tugboat {\n chain forward {\n  type filter hook forward priority filter;\n"
        '  iifname "tb-00000000aaaa" drop\n }\n}\n'
    )
    d.stop()
    subprocess.run(["ip", "netns", "exec", d.netns, "nft", "-f", "-"], input=old, text=True, check=True)
    d.start()  # tb-00000000aaaa is on the host no more: nobody uses the table
    assert "table ip tugboat" not in tables(d.netns)
    # Named bridges still on the host, of someone else: the table stays for its tugd.
    ip(d.netns, "link", "add", "tb-00000000aaaa", "type", "bridge")
    d.stop()
    subprocess.run(["ip", "netns", "exec", d.netns, "nft", "-f", "-"], input=old, text=True, check=True)
    d.start()
    assert "table ip tugboat" in tables(d.netns)
    subprocess.run(["ip", "netns", "exec", d.netns, "nft", "delete", "table", "ip", "tugboat"], check=True)


# ------------------------------------------------------------------ the pure parts, no tugd


def test_pools_are_dockers_in_order() -> None:
    picked = [host.pick_subnet(host.DEFAULT_POOLS, [], [])]
    for _ in range(16):
        picked.append(host.pick_subnet(host.DEFAULT_POOLS, picked, []))
    assert [str(n) for n in picked[:2]] == ["172.17.0.0/16", "172.18.0.0/16"]
    assert [str(n) for n in picked[15:]] == ["192.168.0.0/20", "192.168.16.0/20"]
    vpn = [host.HostNet(ipaddress.IPv4Network("172.16.0.0/12"), "tun0", "route")]
    assert str(host.pick_subnet(host.DEFAULT_POOLS, [], vpn)) == "192.168.0.0/20"
    assert str(vpn[0]) == "the host's route 172.16.0.0/12 on tun0"
    tiny = [host.AddressPool("10.9.0.0/24", 25)]
    with pytest.raises(errors.InvalidArgument, match="no free subnet left"):
        host.pick_subnet(tiny, [ipaddress.IPv4Network("10.9.0.0/24")], [])


def test_pool_option_syntax() -> None:
    assert host.parse_pool("base=10.10.0.0/16,size=24") == host.AddressPool("10.10.0.0/16", 24)
    assert host.parse_pool("base=10.10.0.0/16") == host.AddressPool("10.10.0.0/16", 16)
    for bad in ("10.0.0.0/8", "base=10.0.0.1/8,size=24", "base=10.0.0.0/16,size=8", "base=fd00::/8"):
        with pytest.raises(errors.InvalidArgument, match="address pool"):
            host.parse_pool(bad)
    res = subprocess.run(
        [TUGD, "--root", "/nonexistent/r", "--default-address-pool", "base=10.0.0.0/16,size=99"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--default-address-pool" in res.stderr, res.stderr
    # Instances: one name per root, the same for the same root however it is spelt.
    assert host.table_name("/var/lib/tugboat") == host.table_name("/var/lib/tugboat/")
    assert host.table_name("/var/lib/tugboat") != host.table_name("/var/lib/tugboat2")
    assert host.owns_alias(host.link_alias("/r"), host.instance_id("/r"))
    assert not host.owns_alias(host.link_alias("/r"), host.instance_id("/s"))
