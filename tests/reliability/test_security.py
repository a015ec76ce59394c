"""Docker's default security profile, proven by real busybox containers trying what it forbids:
capabilities, seccomp, no-new-privileges, masked and read-only paths; and what ``--privileged``,
``--cap-add``, ``--cap-drop`` and ``--security-opt`` change. Also: a container cannot see or reach
tugd's socket or any shim's."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from supervisor import security
from tugwire import errors
from tugwire.syncclient import Client

from ..conftest import needs_root, needs_runc
from ..helpers import output, run

pytestmark = [pytest.mark.reliability]


def integration(fn: Any) -> Any:
    """Marks a test that runs a real tugd."""
    return pytest.mark.integration(needs_root(needs_runc(fn)))


# One shell script that reports what the container may do, one ``key=value`` line each.
PROBE = r"""
status() { grep "^$1:" /proc/self/status | cut -f2; }
echo "capeff=$(status CapEff)"
echo "capbnd=$(status CapBnd)"
echo "nnp=$(status NoNewPrivs)"
echo "seccomp=$(status Seccomp)"
mkdir -p /mnt/t
mount -t tmpfs x /mnt/t 2>/dev/null; echo "mount=$?"
echo "masked=$(stat -c '%F %t:%T' MASKED)"
echo "masked_bytes=$(head -c 16 MASKED 2>/dev/null | wc -c)"
echo "procsys=$(awk '$5 == "/proc/sys" {print $6}' /proc/self/mountinfo | cut -d, -f1)"
echo x 2>/dev/null > /proc/sys/kernel/hostname; echo "procsys_write=$?"
unshare -U true 2>/dev/null; echo "unshare=$?"
touch /tmp/f; chown 1:1 /tmp/f 2>/dev/null; echo "chown=$?"
ip link set lo mtu 1400 2>/dev/null; echo "netadmin=$?"
mkdir /tmp/d 2>/dev/null; echo "mkdir=$?"
"""


# /proc/kcore where the kernel has one (CONFIG_PROC_KCORE), else another of docker's masked files.
MASKED = next(
    (p for p in ("/proc/kcore", "/proc/timer_list", "/proc/keys") if os.path.exists(p)), "/proc/kcore"
)


def probe(d: Any, **opts: Any) -> dict[str, str]:
    cid, result = run(d, ["sh", "-c", PROBE.replace("MASKED", MASKED)], **opts)
    assert result["exit_code"] == 0, result
    out, err = output(d, cid)
    d.call("container.delete", {"id": cid})
    facts = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert "mkdir" in facts, (out, err)
    return facts


def mask(caps: list[str]) -> int:
    return sum(1 << security.ALL_CAPS.index(c) for c in caps)


def all_caps_mask() -> int:
    """Every capability this host allows (our bounding set: tugd runs as we do, as root)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))


# ------------------------------------------------------------------------- with real containers


@integration
def test_default_profile_forbids_what_docker_forbids(daemon: Any) -> None:
    facts = probe(daemon)
    assert int(facts["capeff"], 16) == mask(security.DEFAULT_CAPS)
    assert int(facts["capbnd"], 16) == mask(security.DEFAULT_CAPS)
    assert facts["nnp"] == "1"
    assert facts["seccomp"] == "2"  # filtered
    assert facts["mount"] != "0"  # no CAP_SYS_ADMIN, and mount(2) is not in the allow list
    # /proc/kcore (or the masked file this kernel has) is masked: /dev/null (char 1:3) is
    # mounted over it, nothing to read.
    assert facts["masked"] == "character special file 1:3"
    assert facts["masked_bytes"] == "0"
    assert facts["procsys"] == "ro"
    assert facts["procsys_write"] != "0"
    assert facts["unshare"] != "0"  # unshare(2) needs CAP_SYS_ADMIN in the profile
    assert facts["chown"] == "0"  # CAP_CHOWN is a default
    assert facts["netadmin"] != "0"  # CAP_NET_ADMIN is not
    assert facts["mkdir"] == "0"


@integration
def test_privileged_lifts_every_restriction(daemon: Any) -> None:
    facts = probe(daemon, privileged=True)
    assert int(facts["capeff"], 16) == all_caps_mask()
    assert facts["seccomp"] == "0"
    assert facts["nnp"] == "0"
    assert facts["mount"] == "0"
    assert facts["masked"].startswith("regular")  # the real one: not masked
    if MASKED != "/proc/kcore":  # kcore itself needs CAP_SYS_RAWIO, which is there: readable
        assert facts["masked_bytes"] != "0"
    assert facts["procsys"] == ""  # no read-only mount over /proc/sys
    assert facts["procsys_write"] == "0"  # its own UTS namespace's hostname, through /proc/sys
    assert facts["unshare"] == "0"
    assert facts["netadmin"] == "0"


@integration
def test_cap_add_and_cap_drop_change_the_set(daemon: Any) -> None:
    facts = probe(daemon, cap_add=["NET_ADMIN"], cap_drop=["chown"])
    want = [c for c in security.DEFAULT_CAPS if c != "CAP_CHOWN"] + ["CAP_NET_ADMIN"]
    assert int(facts["capeff"], 16) == mask(want)
    assert facts["netadmin"] == "0"  # ip link set lo mtu: allowed now
    assert facts["chown"] != "0"  # chown: refused now
    assert facts["seccomp"] == "2"  # the rest of the profile stays

    facts = probe(daemon, cap_drop=["ALL"], cap_add=["CAP_KILL"])
    assert int(facts["capeff"], 16) == mask(["CAP_KILL"])

    # CAP_SYS_ADMIN also opens the syscalls the profile keeps for it (mount, unshare...), as
    # docker's: the filter is rendered for the container's capabilities.
    facts = probe(daemon, cap_add=["SYS_ADMIN"])
    assert facts["seccomp"] == "2"
    assert facts["mount"] == "0"

    # The same through the CLI's flags.
    chown = ["busybox", "sh", "-c", "touch /f && chown 1 /f"]
    assert daemon.tug("run", "--rm", *chown).returncode == 0
    assert daemon.tug("run", "--rm", "--cap-drop", "CHOWN", *chown, check=False).returncode != 0
    assert daemon.tug("run", "--rm", "--cap-drop", "ALL", "--cap-add", "chown", *chown).returncode == 0
    mount = ["busybox", "sh", "-c", "mkdir -p /m && mount -t tmpfs x /m"]
    assert daemon.tug("run", "--rm", *mount, check=False).returncode != 0
    assert daemon.tug("run", "--rm", "--privileged", *mount).returncode == 0
    bad = daemon.tug("run", "--rm", "--cap-add", "NOPE", "busybox", "true", check=False)
    assert bad.returncode != 0 and b"unknown capability" in bad.stderr


@integration
def test_exec_runs_with_the_containers_profile(daemon: Any) -> None:
    from ..helpers import start

    cid = start(daemon, ["sleep", "1000"], cap_add=["NET_ADMIN"])
    with Client(daemon.socket) as c:
        rid = c.send(
            "container.exec",
            {"id": cid, "cmd": ["grep", "-E", "^(CapEff|NoNewPrivs|Seccomp):", "/proc/self/status"]},
        )
        chunks = []
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                assert msg["result"]["exit_code"] == 0, msg
                break
            if msg.get("method") == "container.exec.output":
                import base64

                chunks.append(base64.b64decode(msg["params"]["data"]))
    lines = dict(line.split(":", 1) for line in b"".join(chunks).decode().splitlines())
    assert int(lines["CapEff"].strip(), 16) == mask([*security.DEFAULT_CAPS, "CAP_NET_ADMIN"])
    assert lines["NoNewPrivs"].strip() == "1"
    assert lines["Seccomp"].strip() == "2"
    daemon.call("container.delete", {"id": cid, "force": True})


@integration
def test_security_opt_no_new_privileges_and_seccomp(daemon: Any, tmp_path: Any) -> None:
    facts = probe(daemon, security_opt=["no-new-privileges=false"])
    assert facts["nnp"] == "0"
    assert facts["seccomp"] == "2"

    facts = probe(daemon, security_opt=["seccomp=unconfined"])
    assert facts["seccomp"] == "0"
    assert facts["unshare"] == "0"  # a user namespace needs no capability once unfiltered
    assert facts["mount"] != "0"  # still no CAP_SYS_ADMIN
    assert facts["nnp"] == "1"

    # A profile of one's own, from a file, through the CLI: everything allowed but mkdir.
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile))
    res = daemon.tug(
        "run", "--rm", "--security-opt", f"seccomp={path}", "busybox", "sh", "-c", "mkdir /tmp/x", check=False
    )
    assert res.returncode != 0
    assert b"Permission denied" in res.stderr  # errnoRet 13: EACCES, the profile's own answer
    res = daemon.tug("run", "--rm", "busybox", "sh", "-c", "mkdir /tmp/x && echo made")
    assert res.stdout == b"made\n"


@integration
def test_bad_security_options_are_refused_and_change_nothing(daemon: Any, tmp_path: Any) -> None:
    bad: list[dict[str, Any]] = [
        {"cap_add": ["NOT_A_CAP"]},
        {"cap_drop": ["CAP_"]},
        {"cap_add": [1]},
        {"security_opt": ["apparmor"]},
        {"security_opt": ["no-new-privileges=maybe"]},
        {"security_opt": ["seccomp=" + "{"]},
        {"security_opt": ["seccomp=[]"]},
        {"security_opt": ["seccomp=" + json.dumps({"defaultAction": "SCMP_ACT_NOPE"})]},
        {
            "security_opt": [
                "seccomp="
                + json.dumps(
                    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "ALLOW"}]}
                )
            ]
        },
        {"security_opt": ["seccomp=" + "[" * 100000]},
        {"privileged": "yes"},
        {"security_opt": "no-new-privileges"},
    ]
    for params in bad:
        with pytest.raises(
            (errors.InvalidArgument, errors.InvalidParams),
            match=r"capabilit|security option|seccomp|privileged|security_opt|cap_",
        ):
            daemon.call("container.create", {"image": "busybox", "cmd": ["true"], **params})
    assert daemon.call("container.list", {"all": True}) == []
    res = daemon.tug(
        "run", "--security-opt", f"seccomp={tmp_path}/missing.json", "busybox", "true", check=False
    )
    assert res.returncode != 0
    assert b"cannot read seccomp profile" in res.stderr
    assert daemon.call("container.list", {"all": True}) == []


@integration
def test_a_container_cannot_see_or_reach_tugboats_sockets(daemon: Any) -> None:
    from ..helpers import start

    other = start(daemon, ["sleep", "1000"])  # a second container: its shim's socket exists
    shim_sock = os.path.join(daemon.state, "shims", other, "shim.sock")
    assert os.path.exists(shim_sock)
    script = (
        "echo sockets=$(find / -xdev -type s 2>/dev/null | wc -l);"
        f"ls {daemon.state} >/dev/null 2>&1; echo state=$?;"
        f"grep -c -e '{daemon.state}' -e '{daemon.root}' /proc/net/unix; echo unix=$?;"
        f"grep -c -e '{daemon.state}' /proc/self/mountinfo; echo mounts=$?"
    )
    cid, result = run(daemon, ["sh", "-c", script])
    assert result["exit_code"] == 0
    out, _ = output(daemon, cid)
    facts = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert facts["sockets"] == "0"  # no socket file at all in its filesystem
    assert facts["state"] != "0"  # tugd's state dir (sockets of tugd and shims) is not there
    assert facts["unix"] == "1"  # grep found none: no socket of tugd or a shim in its network ns
    assert facts["mounts"] == "1"  # and nothing of the state dir is mounted in
    daemon.call("container.delete", {"id": other, "force": True})


# --------------------------------------------------------------------------- units (no tugd)


def test_capability_arithmetic_matches_dockers() -> None:
    default = security.DEFAULT_CAPS
    assert security.capabilities(False, [], []) == default
    every = security.available_caps()
    assert mask(every) == all_caps_mask()
    assert security.capabilities(True, [], ["ALL"]) == every
    assert security.capabilities(False, ["ALL"], ["CAP_CHOWN"]) == [c for c in every if c != "CAP_CHOWN"]
    assert security.capabilities(False, ["CAP_KILL"], ["ALL"]) == ["CAP_KILL"]
    # An add wins over a drop of the same name.
    assert "CAP_NET_ADMIN" in security.capabilities(False, ["CAP_NET_ADMIN"], ["CAP_NET_ADMIN"])
    assert security.cap_name("net_admin") == security.cap_name("CAP_NET_ADMIN") == "CAP_NET_ADMIN"


def test_seccomp_rendering_follows_caps_and_arch() -> None:
    def allowed(rendered: dict[str, Any]) -> set[str]:
        return {
            n
            for r in rendered["syscalls"]
            if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
            for n in r["names"]
        }

    plain = security.render_seccomp(security.DEFAULT_SECCOMP, security.DEFAULT_CAPS, "x86_64")
    assert plain["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert plain["defaultAction"] == "SCMP_ACT_ERRNO"
    names = allowed(plain)
    assert {"read", "write", "arch_prctl", "chroot", "ptrace"} <= names
    assert not {"mount", "unshare", "keyctl", "reboot", "bpf", "kexec_load", "swapon"} & names
    assert any(r["names"] == ["clone3"] and r["errnoRet"] == 38 for r in plain["syscalls"])
    admin = security.render_seccomp(
        security.DEFAULT_SECCOMP, [*security.DEFAULT_CAPS, "CAP_SYS_ADMIN"], "x86_64"
    )
    assert {"mount", "unshare", "setns", "clone"} <= allowed(admin)
    assert not any(r["names"] == ["clone3"] and r["action"] == "SCMP_ACT_ERRNO" for r in admin["syscalls"])
    arm = security.render_seccomp(security.DEFAULT_SECCOMP, security.DEFAULT_CAPS, "aarch64")
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in allowed(arm)
    assert "set_tls" in allowed(arm)


def test_parse_security_options() -> None:
    sec = security.parse(False, [], [], [])
    assert sec == {
        "privileged": False,
        "caps": security.DEFAULT_CAPS,
        "no_new_privileges": True,
        "seccomp": "default",
    }
    assert security.parse(False, [], [], ["no-new-privileges:false"])["no_new_privileges"] is False
    assert security.parse(False, [], [], ["no-new-privileges"])["no_new_privileges"] is True
    assert security.parse(True, [], [], [])["seccomp"] == "unconfined"
    assert security.parse(True, [], [], ["seccomp=builtin"])["seccomp"] == "default"
    assert security.parse(False, [], [], ["apparmor=unconfined", "label=disable"])["seccomp"] == "default"
