"""critest (cri-tools v1.37.0's CRI validation suite, a ginkgo test binary built by
scripts/install-cri-tools.sh from the Go module proxy) against a real tug-cri and tugd.

tugd, tug-cri, critest and a docker-registry all run in a network namespace the test makes
(critest reaches the pods' ports and tug-cri's streaming server on 127.0.0.1 there). critest's
test images are look-alikes built from busybox by tugd (tests/critest_images.py), served from
that registry through tugd's registry mirror map, so they keep the names critest asks for.
The specs that do not pass are skipped by name below, each with its reason (docs/cri.md,
"critest")."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, critest_path, make_tug_cri
from .critest_images import critest_registry, mirror_args
from .test_registry import needs_registry

__all__ = ["critest_path", "make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [
    pytest.mark.integration,
    pytest.mark.network,
    pytest.mark.registry,
    needs_root,
    needs_runc,
    needs_registry,
    pytest.mark.timeout(3600),  # the first run builds critest
]

# Regular expressions of spec names critest is told to skip, each with why.
SKIPS: dict[str, str] = {
    r"\[Feature:SELinux\]|SELinux": "this host has no SELinux",
    r"AppArmor": "AppArmor is off on this host",
    r"\[NRI\]|NRI": "tug-cri has no NRI (critest needs --nri-socket)",
    r"public image with digest should be pulled and removed": "the digest-pinned image cannot be made again",
}


def run_critest(
    critest: str, cri: TugCri, netns: str, cwd: str, focus: str, skips: list[str], out_path: str, images: str
) -> tuple[int, str]:
    args = [
        "nsenter",
        f"--net=/run/netns/{netns}",
        critest,
        "--runtime-endpoint",
        cri.endpoint,
        "--image-endpoint",
        cri.endpoint,
        "--test-images-file",
        images,
        "--ginkgo.json-report",
        out_path + ".json",
        "--ginkgo.no-color",
        "--ginkgo.timeout",
        "20m",
        "--ginkgo.flake-attempts",
        "1",
    ]
    if focus:
        args += ["--ginkgo.focus", focus]
    if skips:
        args += ["--ginkgo.skip", "|".join(skips)]
    with open(out_path, "wb") as out:
        r = subprocess.run(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
            cwd=cwd,  # critest looks for a crictl.yaml beside itself and in its directory
            stdin=subprocess.DEVNULL,
        )
    with open(out_path, errors="replace") as f:
        return r.returncode, f.read()


def spec_results(report: str) -> dict[str, tuple[str, str]]:
    """critest's JSON report (ginkgo's): spec name -> (state, the skip's or failure's message)."""
    with open(report) as f:
        suites = json.load(f)
    out: dict[str, tuple[str, str]] = {}
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            name = " ".join([*spec.get("ContainerHierarchyTexts", []), spec.get("LeafNodeText", "")])
            why = (spec.get("Failure") or {}).get("Message", "")
            out[name] = (spec.get("State", ""), " ".join(why.split())[:200])
    return out


def shm_segments() -> set[str]:
    """The ids of the host's SysV shared memory segments of 1 MiB (what critest's HostIpc specs
    make with ``ipcmk -M 1048576`` and leave)."""
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {row[1] for row in rows if row[3] == "1048576"}


def write_test_images_file(path: str, registry_host: str) -> str:
    """critest's ``--test-images-file``: the two images it lets one name, here straight from the
    local registry (the others keep their names and come through tugd's mirror map)."""
    with open(path, "w") as f:
        f.write(
            f"defaultTestContainerImage: {registry_host}/e2e-test-images/busybox:1.29-2\n"
            f"webServerTestImage: {registry_host}/e2e-test-images/nginx:1.14-2\n"
        )
    return path


def test_critest_passes(make_daemon: Any, make_tug_cri: Any, critest_path: str) -> None:
    ns = make_daemon.new_netns()
    shm_before = shm_segments()
    try:
        run_all(make_daemon, make_tug_cri, critest_path, ns)
    finally:
        for shmid in shm_segments() - shm_before:
            subprocess.run(["ipcrm", "-m", shmid], check=False)


def run_all(make_daemon: Any, make_tug_cri: Any, critest_path: str, ns: str) -> None:
    with critest_registry(make_daemon, ns) as reg:
        d = make_daemon(netns=ns, image=False, extra=mirror_args(reg))
        cri: TugCri = make_tug_cri(d, netns=True)
        focus = os.environ.get("TUG_CRITEST_FOCUS", "")
        skips = [] if os.environ.get("TUG_CRITEST_NOSKIP") else list(SKIPS)
        images = write_test_images_file(os.path.join(d.base, "images.yaml"), reg.host)
        out_path = os.path.join(d.base, "critest.out")
        code, out = run_critest(critest_path, cri, ns, d.base, focus, skips, out_path, images)
        results = spec_results(out_path + ".json")
        if os.environ.get("TUG_CRITEST_KEEP"):
            with open(os.environ["TUG_CRITEST_KEEP"], "w") as f:
                f.write(out)
            with open(os.environ["TUG_CRITEST_KEEP"] + ".results", "w") as f:
                f.writelines(f"{state}\t{name}\t{why}\n" for name, (state, why) in sorted(results.items()))
    summary = re.search(r"Ran (\d+) of (\d+) Specs.*\n.*(\d+) Passed \| (\d+) Failed.*", out)
    assert code == 0, out[-8000:]
    assert summary is not None, out[-4000:]
