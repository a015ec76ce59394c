"""The hand-made rtnetlink requests of a container's wiring (``supervisor/network/rtnl.py``),
against the real kernel, in namespaces the test makes (nothing touches the host's network)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from supervisor.network import netlink, rtnl

from .conftest import make_test_netns, needs_root

pytestmark = [pytest.mark.network, needs_root]


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    names: list[str] = []
    try:
        yield make_test_netns(names), make_test_netns(names)
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
    found: list[dict[str, object]] = json.loads(out or "[]")
    return found


def test_a_veth_wired_into_another_namespace_in_three_batches(two_netns: tuple[str, str]) -> None:
    outer, inner = (f"/run/netns/{n}" for n in two_netns)
    with netlink.in_netns(outer, rtnl.open_socket) as host:
        host.batch([rtnl.link_del("tbnobody")])  # deleting what is not there is fine
        with pytest.raises(OSError, match="No such device") as info:
            host.batch([rtnl.link_set("tbnobody", up=True)])
        assert info.value.errno == errno.ENODEV
        with pytest.raises(OSError, match="tbnobody"):
            host.link_index("tbnobody")
        fd = os.open(inner, os.O_RDONLY)
        try:
            host.batch([rtnl.veth_add("tv0test", "eth3", fd, "02:42:0a:0b:0c:0d", 1400)])
        finally:
            os.close(fd)
        host.batch([rtnl.link_set("tv0test", up=True, alias="tugboat test")])
        (link,) = ip_json(two_netns[0], "link", "show", "tv0test")
        assert link["mtu"] == 1400 and link["ifalias"] == "tugboat test"
        with netlink.in_netns(inner, rtnl.open_socket) as sock:
            eth = sock.link_index("eth3")
            sock.batch(
                [
                    rtnl.link_set(index=rtnl.LOOPBACK_INDEX, up=True),
                    rtnl.addr_add(eth, "10.66.0.2", 24),
                    rtnl.link_set(index=eth, up=True),
                    rtnl.default_route("10.66.0.1", eth),
                    rtnl.addr_add(eth, "fd66::2", 64, netlink.IFA_F_NODAD),
                ]
            )
            with pytest.raises(OSError, match="exists") as info:  # the same address twice
                sock.batch([rtnl.addr_add(eth, "10.66.0.2", 24)])
            assert info.value.errno == errno.EEXIST
        (eth3,) = ip_json(two_netns[1], "addr", "show", "eth3")
        assert eth3["address"] == "02:42:0a:0b:0c:0d" and eth3["mtu"] == 1400
        addrs = {(a["local"], a["prefixlen"]) for a in eth3["addr_info"]}  # type: ignore[attr-defined]
        assert {("10.66.0.2", 24), ("fd66::2", 64)} <= addrs
        routes = ip_json(two_netns[1], "route", "show", "default")
        assert routes[0]["gateway"] == "10.66.0.1" and routes[0]["dev"] == "eth3"
        # One batch deletes by name whatever of several names exists; the peer goes along.
        host.batch([rtnl.link_del(f"tv{i}test") for i in range(10)])
    assert ip_json(two_netns[0], "link", "show", "type", "veth") == []
    assert ip_json(two_netns[1], "link", "show", "type", "veth") == []


def test_nft_in_process_and_the_tool_agree(
    two_netns: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nft.run`` through libnftables, and through the ``nft`` tool where the library does not
    load: the same output, status and errors, in a namespace of the test's."""
    from supervisor.network import nft

    ns = f"/run/netns/{two_netns[0]}"
    rules = nft.Ruleset(
        [nft.BridgeRules("tb-000000000001", "10.67.0.0/24")], [nft.Forward("", 18080, "tcp", "10.67.0.2", 80)]
    )

    def session() -> list[tuple[int, str]]:
        nft.apply("tugboat-test", rules)
        out = [nft.run(["list", "tables"]), nft.run(["list", "chain", "ip", "tugboat-test", "prerouting"])]
        out.append(nft.run(["list", "table", "ip", "nosuchtable"]))
        # Forwards added to the table as it stands: the same table as a rebuild with them.
        more = [nft.Forward("127.0.0.1", 18081, "udp", "10.67.0.3", 53)]
        assert nft.add_forwards("tugboat-test", more)
        out.append(nft.run(["list", "table", "ip", "tugboat-test"]))
        nft.apply("tugboat-test", nft.Ruleset(rules.bridges, rules.forwards + more))
        assert nft.run(["list", "table", "ip", "tugboat-test"]).stdout.decode() == out[-1].stdout.decode()
        nft.apply("tugboat-test", None)
        assert not nft.add_forwards("tugboat-test", more)  # no table: nothing done
        out.append(nft.run(["list", "tables"]))
        return [(r.returncode, (r.stdout or r.stderr).decode()) for r in out]

    in_process = netlink.in_netns(ns, session)
    assert nft._library() is not None  # the library is what ran
    monkeypatch.setattr(nft, "_lib", None)
    monkeypatch.setattr(nft, "_lib_tried", True)
    assert netlink.in_netns(ns, session) == in_process
    assert in_process[0] == (0, "table ip tugboat-test\ntable ip6 tugboat-test\n")
    assert "tcp dport 18080 dnat to 10.67.0.2:80" in in_process[1][1]
    assert in_process[2][0] == 1 and "No such file or directory" in in_process[2][1]
    assert in_process[3][1].count("ip daddr 127.0.0.1 udp dport 18081 dnat to 10.67.0.3:53") == 2
    assert in_process[4] == (0, "")
