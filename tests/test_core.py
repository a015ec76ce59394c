"""The typed core and its front door (issue 13): the composition root builds every service and
the JSON-RPC adapters register every documented method over it; the core's streams (a
transfer's coalesced progress, a build's unbuffered feed, the event bus's iterator) behave as
their contracts say; the image verbs publish their events; and the import rule holds."""

from __future__ import annotations

import ast
import io
import os
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from supervisor import events as ev
from supervisor.config import Config
from supervisor.images import Images
from supervisor.images.ops import ImageService, ImportRequest, RemoveRequest, TagRequest
from supervisor.registry import run_transfer
from supervisor.store import Store
from supervisor.streams import run_feed
from tugwire.errors import FailedPrecondition, NotFound

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# ----------------------------------------------------------------------- composition and door


def documented_methods() -> set[str]:
    """Every method docs/api.md gives a heading (``### `a.b`, `a.c` ``)."""
    out: set[str] = set()
    for line in (REPO / "docs" / "api.md").read_text().splitlines():
        if line.startswith("### "):
            out.update(re.findall(r"`([a-z_]+\.[a-z_.]+)`", line))
    return out


@pytest.mark.anyio
async def test_the_core_builds_every_service_and_the_api_serves_every_documented_method(
    tmp_path: Path,
) -> None:
    from supervisor import shims
    from supervisor.api import Api
    from supervisor.core import Core

    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    os.makedirs(cfg.root)
    os.makedirs(cfg.state)
    store = Store(cfg.db_path)
    try:
        async with anyio.create_task_group() as tg:
            core = Core.build(cfg, store, shims.ExecLauncher(cfg.shim_timeout), tg)
            assert core.containers.images is core.images  # one of each, shared
            assert core.registry.images is core.images and core.builder.images is core.images
            assert core.image_service.bus is core.bus and core.containers.bus is core.bus
            assert core.networks is core.containers.networks
            methods = set(Api(core).dispatcher.methods)
            missing = documented_methods() - methods
            assert not missing, f"documented but not served: {sorted(missing)}"
            assert len(documented_methods()) > 40
            info = core.system.info()
            assert info.root == cfg.root and info.images == 0
            tg.cancel_scope.cancel()
    finally:
        store.close()


# ---------------------------------------------------------------------------------- streams


@pytest.mark.anyio
async def test_a_transfer_coalesces_its_progress_and_gives_the_last_state_of_each_layer() -> None:
    finished = anyio.Event()

    async def op(transfer: Any) -> str:
        for n in range(100):
            transfer.update({"id": "a", "n": n})
            transfer.update({"id": "b", "n": n})
        finished.set()
        return "the record"

    async with run_transfer(op) as transfer:
        await finished.wait()  # a reader slower than the transfer
        got = [event async for event in transfer]
    assert got == [{"id": "a", "n": 99}, {"id": "b", "n": 99}]
    assert transfer.result == "the record"


@pytest.mark.anyio
async def test_a_transfer_raises_its_failure_as_itself_and_goes_on_when_the_reader_leaves() -> None:
    async def failing(transfer: Any) -> str:
        transfer.update({"id": "a", "n": 1})
        await anyio.lowlevel.checkpoint()
        raise NotFound("no such manifest")

    got: list[dict[str, Any]] = []
    with pytest.raises(NotFound, match="no such manifest"):
        async with run_transfer(failing) as transfer:
            got += [event async for event in transfer]
    assert got == [{"id": "a", "n": 1}]  # what it reported before it failed is not lost

    async def slow(transfer: Any) -> str:
        for n in range(5):
            transfer.update({"id": "a", "n": n})
            await anyio.lowlevel.checkpoint()
        return "done anyway"

    async with run_transfer(slow) as transfer:
        async for _ in transfer:
            break  # the client went away: the transfer still completes
    assert transfer.result == "done anyway"


@pytest.mark.anyio
async def test_a_feed_is_unbuffered_in_order_and_raises_a_failure_as_itself() -> None:
    sent = [0]

    async def op(emit: Any) -> str:
        for n in range(1, 6):
            await emit(n)
            sent[0] = n
        return "built"

    got = []
    async with run_feed(op) as feed:
        async for n in feed:
            assert sent[0] <= n  # the operation never runs ahead of its reader
            got.append(n)
            await anyio.sleep(0.01)
    assert got == [1, 2, 3, 4, 5]
    assert feed.result == "built"

    async def failing(emit: Any) -> str:
        await emit("step 1")
        raise FailedPrecondition("RUN failed")

    got_steps: list[str] = []
    with pytest.raises(FailedPrecondition, match="RUN failed"):
        async with run_feed(failing) as feed2:
            got_steps += [s async for s in feed2]
    assert got_steps == ["step 1"]


@pytest.mark.anyio
async def test_a_feed_left_early_stops_its_operation() -> None:
    cleaned = anyio.Event()

    async def endless(emit: Any) -> str:
        try:
            n = 0
            while True:
                n += 1
                await emit(n)
        finally:
            cleaned.set()

    async with run_feed(endless) as feed:
        async for n in feed:
            if n == 3:
                break
    assert cleaned.is_set()
    with pytest.raises(RuntimeError):
        _ = feed.result


@pytest.mark.anyio
async def test_the_event_iterator_replays_then_ends_at_until(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "t.db"))
    try:
        bus = ev.EventBus(store)
        for i in range(3):
            bus.publish(ev.Event("container", "start", f"c{i}"))
        until = time.time_ns()
        with anyio.fail_after(10):
            async with bus.watch(lambda e: e.id != "c1", since_ns=0, until_ns=until) as events:
                bus.publish(ev.Event("container", "start", "after-until"))
                got = [e.id async for e in events]
        assert got == ["c0", "c2"]
        assert not bus._subs  # unsubscribed on the way out
    finally:
        store.close()


# ------------------------------------------------------------------------------ image verbs


@pytest.fixture
def image_service(tmp_path: Path) -> Iterator[tuple[ImageService, ev.EventBus]]:
    root = str(tmp_path / "root")
    os.makedirs(root)
    store = Store(os.path.join(root, "tugboat.db"))
    try:
        bus = ev.EventBus(store)
        yield ImageService(Images(Config(root=root, state=str(tmp_path / "state")), store), bus), bus
    finally:
        store.close()


def rootfs_tar(path: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.mark.anyio
async def test_the_image_verbs_return_records_and_publish_their_events(
    image_service: tuple[ImageService, ev.EventBus], tmp_path: Path
) -> None:
    service, bus = image_service
    sub = bus.subscribe()
    try:
        rec = await service.import_rootfs(
            ImportRequest(rootfs_tar(tmp_path / "rootfs.tar"), "test/one:1", {"Cmd": ["/hello"]})
        )
        assert rec.names == ["test/one:1"] and rec.config["config"]["Cmd"] == ["/hello"]
        assert service.tag(TagRequest("test/one:1", "test/two")).names == ["test/one:1", "test/two:latest"]
        assert [r.id for r in service.list_images()] == [rec.id]
        assert service.inspect("test/two").id == rec.id
        assert service.remove(RemoveRequest("test/two")) == ["test/two:latest"]
        assert service.remove(RemoveRequest("test/one:1")) == ["test/one:1", rec.id]
        with pytest.raises(NotFound):
            service.inspect(rec.id)
        seen = []
        while True:
            try:
                e = sub.receive.receive_nowait()
            except anyio.WouldBlock:
                break
            seen.append((e.action, e.name))
        assert seen == [
            ("import", "test/one:1"),
            ("tag", "test/two"),
            ("untag", "test/two:latest"),
            ("untag", "test/one:1"),
            ("delete", "test/one:1"),
        ]
    finally:
        sub.close()


@pytest.mark.anyio
async def test_the_container_and_network_services_take_typed_requests(tmp_path: Path) -> None:
    """Below the door the services are called with dataclasses, no JSON-RPC in sight: bad values
    get the same typed errors (and ``field``) the door sends on, and change nothing."""
    from supervisor import shims
    from supervisor.containers.health import HealthRequest
    from supervisor.containers.options import CreateRequest
    from supervisor.core import Core
    from supervisor.execs import ExecRequest
    from supervisor.network.requests import EndpointRequest, NetworkCreateRequest
    from supervisor.verbs import UpdateRequest
    from tugwire.errors import InvalidArgument

    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "state"))
    os.makedirs(cfg.root)
    os.makedirs(cfg.state)
    store = Store(cfg.db_path)
    notes: list[tuple[int, bytes]] = []

    async def sink(kind: int, data: bytes) -> None:
        notes.append((kind, data))

    try:
        async with anyio.create_task_group() as tg:
            core = Core.build(cfg, store, shims.ExecLauncher(cfg.shim_timeout), tg)
            bad_create = [
                (CreateRequest(image="busybox", env=["=x"]), "env"),
                (CreateRequest(image="busybox", workdir="rel"), "workdir"),
                (CreateRequest(image="busybox", memory=1024), "memory"),
                (CreateRequest(image="busybox", restart="always", auto_remove=True), "restart"),
                (CreateRequest(image="busybox", stop_signal="SIGNOPE"), "signal"),
            ]
            for req, fld in bad_create:
                with pytest.raises(InvalidArgument) as exc:
                    await core.containers.create(req)
                assert exc.value.details.get("field") == fld, req
            with pytest.raises(NotFound):  # the values are fine: the image is what is missing
                await core.containers.create(
                    CreateRequest(
                        image="nosuch:image",
                        health=HealthRequest(health_cmd="true"),
                        network=EndpointRequest(network="none"),
                    )
                )
            with pytest.raises(InvalidArgument) as exc:
                await core.networks.create(NetworkCreateRequest(name="n1", driver="macvlan"))
            assert exc.value.details.get("field") == "driver"
            with pytest.raises(InvalidArgument) as exc:
                await core.networks.create(NetworkCreateRequest(name="n1", gateway="10.9.0.1"))
            assert exc.value.details.get("field") == "subnet"
            with pytest.raises(NotFound):
                await core.verbs.update(UpdateRequest(id="nosuch", memory=64 << 20))
            with pytest.raises(NotFound):
                await core.execs.exec(ExecRequest(id="nosuch", cmd=["true"]), sink)
            with pytest.raises(InvalidArgument) as exc:
                await core.execs.exec(ExecRequest(id=None, cmd=["true"]), sink)
            assert exc.value.details.get("field") == "id"
            with pytest.raises(NotFound):
                await core.attach.resize("nosuch", 24, 80)
            assert store.list_containers() == [] and not notes
            assert all(n.name != "n1" for n in core.networks.db.networks())
            tg.cancel_scope.cancel()
    finally:
        store.close()


# ------------------------------------------------------------------------------ import rule


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports too), absolute."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    package = parts if parts[-1] == "__init__" else parts[:-1]
    if package and package[-1] == "__init__":
        package = package[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def ours(mods: set[str], *prefixes: str) -> set[str]:
    return {m for m in mods if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_import_rule_holds() -> None:
    """tugwire imports nothing of ours; shimd only tugwire; the CLI only tugwire; the core no
    front door; the typed services no JSON-RPC server objects."""
    problems: list[str] = []
    rules = [("tugwire", ("supervisor", "shimd")), ("shimd", ("supervisor",))]
    problems += [
        f"{path.relative_to(REPO)} imports {sorted(bad)}"
        for top, banned in rules
        for path in sorted(REPO.glob(f"{top}/**/*.py"))
        if (bad := ours(imports_of(path), *banned))
    ]
    for path in sorted(REPO.glob("supervisor/cli/**/*.py")):
        bad = ours(imports_of(path), "supervisor", "shimd") - ours(imports_of(path), "supervisor.cli")
        if bad:
            problems.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    doors = ("supervisor.api",)
    for path in sorted(REPO.glob("supervisor/**/*.py")):
        rel = str(path.relative_to(REPO))
        if rel.startswith(("supervisor/api/", "supervisor/cli/")) or rel in (
            "supervisor/app.py",
            "supervisor/__main__.py",
        ):
            continue
        if bad := ours(imports_of(path), *doors):
            problems.append(f"{rel} (the core) imports the front door {sorted(bad)}")
    typed = [
        *REPO.glob("supervisor/images/*.py"),
        *REPO.glob("supervisor/registry/*.py"),
        *(REPO / "supervisor" / name for name in ("events.py", "system.py", "streams.py", "core.py")),
        REPO / "supervisor" / "archive.py",
        REPO / "supervisor" / "build" / "builder.py",
    ]
    problems += [
        f"{path.relative_to(REPO)} (a typed service) imports {sorted(bad)}"
        for path in typed
        if (bad := ours(imports_of(path), "tugwire.jsonrpc"))
    ]
    assert not problems, "\n".join(problems)


def test_no_jsonrpc_below_the_front_doors() -> None:
    """Below the JSON-RPC door the services take typed requests: no module of supervisor/ but
    the door, the root task tree and the CLI imports ``tugwire.jsonrpc`` (except ShimClient,
    whose business is talking JSON-RPC to the shims)."""
    allowed = ("supervisor/api/", "supervisor/cli/", "supervisor/app.py", "supervisor/shims.py")
    checked = 0
    found: list[str] = []
    for path in sorted(REPO.glob("supervisor/**/*.py")):
        rel = str(path.relative_to(REPO))
        if rel.startswith(allowed):
            continue
        checked += 1
        if bad := ours(imports_of(path), "tugwire.jsonrpc"):
            found.append(f"{rel} imports {sorted(bad)}")
    assert checked > 50
    assert not found, "\n".join(found)
    # the network door sits beside the others, not in the core's network package
    assert not (REPO / "supervisor" / "network" / "api.py").exists()
