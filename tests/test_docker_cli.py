"""The real docker CLI (``/usr/local/bin/docker``) against ``tug-docker-api`` in front of a real
tugd, real shims and runc (issue 15): exact output, exit codes and states."""

from __future__ import annotations

import json

import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, dapi, make_docker_api

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_version_and_info(dapi: DockerApi) -> None:
    out = dapi.docker(
        "version", "--format", "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Client.APIVersion}}"
    )
    assert out.stdout.split() == ["1.43", "1.24", "1.43"]
    info = json.loads(dapi.docker("info", "--format", "{{json .}}").stdout)
    assert info["Images"] == 1
    assert info["OSType"] == "linux"
    assert info["Containers"] == 0


def test_run_rm_echo(dapi: DockerApi) -> None:
    out = dapi.docker("run", "--rm", "busybox", "echo", "hi")
    assert out.stdout == "hi\n"
    assert out.stderr == ""
    # --rm is done on the server: nothing is listed right after run returns.
    assert dapi.ps_names("-a") == []
