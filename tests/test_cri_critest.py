"""critest (cri-tools v1.37.0's CRI validation suite, a ginkgo test binary built by
scripts/install-cri-tools.sh from the Go module proxy) against a real tug-cri and tugd.

Only what tug-cri can pass today runs here: the Runtime info spec for the version (the pod
specs, in a network namespace, are in tests/test_cri_pods.py). The Image Manager specs pull
registry.k8s.io and gcr.io images, which need the local look-alikes and a registry mirror map in
tugd (docs/cri.md, "What is next"). The suite grows here as tug-cri does."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, critest_path, make_tug_cri

__all__ = ["critest_path", "make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [pytest.mark.integration, needs_root, needs_runc, pytest.mark.timeout(3600)]  # builds critest


def test_critest_runtime_version_spec_passes(make_daemon: Any, make_tug_cri: Any, critest_path: str) -> None:
    d = make_daemon(image=False)
    cri: TugCri = make_tug_cri(d)
    r = subprocess.run(
        [
            critest_path,
            "--runtime-endpoint",
            cri.endpoint,
            "--image-endpoint",
            cri.endpoint,
            "--ginkgo.focus",
            r"Runtime info runtime should support returning runtime info runtime should return version info",
            "--ginkgo.no-color",
        ],
        capture_output=True,
        timeout=600,
        cwd=d.base,  # critest looks for a crictl.yaml beside itself and in its directory
        stdin=subprocess.DEVNULL,
    )
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"{out[-4000:]}\n{r.stderr.decode(errors='replace')[-2000:]}"
    assert "Ran 1 of " in out and "SUCCESS! -- 1 Passed | 0 Failed" in out, out[-4000:]
