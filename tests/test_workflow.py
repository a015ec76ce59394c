"""The notes' whole image workflow, end to end, as a user runs it: build an image from a
Dockerfile, push it to a local registry (a real docker-registry), remove it locally, pull it back,
run it and check its output."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .test_registry import Registry, needs_registry, open_registry, remote_digest

pytestmark = [pytest.mark.integration, pytest.mark.registry, needs_root, needs_runc, needs_registry]
__all__ = ["open_registry"]  # the fixture, used by name

DOCKERFILE = """\
FROM busybox
RUN echo "built by RUN" > /built && mkdir /app
COPY greeting.txt /app/
CMD ["sh", "-c", "cat /built /app/greeting.txt"]
"""


def test_build_push_remove_pull_run(make_daemon: Any, open_registry: Registry, backend: str) -> None:
    d = make_daemon(backend)
    ctx = os.path.join(d.base, "ctx")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    with open(os.path.join(ctx, "greeting.txt"), "w") as f:
        f.write("hello from the context\n")
    ref = f"{open_registry.host}/workflow/app-{backend}:1"

    d.tug("build", "-t", ref, ctx, timeout=120)
    built = json.loads(d.tug("image", "inspect", ref).stdout)
    assert d.tug("run", "--rm", ref).stdout == b"built by RUN\nhello from the context\n"

    out = d.tug("push", ref).stdout.decode()
    assert out.startswith(f"{ref}: digest: {built['digest']} (")
    assert remote_digest(ref) == built["digest"]  # what the registry serves, as skopeo sees it

    d.tug("rmi", ref)
    assert d.tug("image", "inspect", ref, check=False).returncode == 1

    assert d.tug("pull", "-q", ref).stdout.decode() == f"{ref}\n"
    pulled = json.loads(d.tug("image", "inspect", ref).stdout)
    assert (pulled["id"], pulled["digest"], pulled["layers"]) == (
        built["id"],
        built["digest"],
        built["layers"],
    )
    r = d.tug("run", "--rm", ref)
    assert r.stdout == b"built by RUN\nhello from the context\n"
    # And on a tugd that never saw it (not even its busybox base): every blob from the registry.
    fresh = make_daemon(backend, image=False)
    fresh.tug("pull", "-q", ref)
    assert fresh.tug("run", "--rm", ref).stdout == b"built by RUN\nhello from the context\n"
