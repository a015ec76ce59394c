"""The restart policy's schedule, on trio's MockClock: tugd's own ``Containers`` (real store, real
event bus, real scheduling) with a clock that jumps ahead whenever every task waits, so that an
hour of backoff takes no time and "nothing more happens" is checked for that hour, not for a
second of real sleep.

The restarts fail at once, without processes: the container's image is gone, so ``start`` raises
NotFound, which the policy takes as an exit (with its backoff), as it does in production. The
policy's decisions themselves are tested as pure functions in ``test_policy.py``; the restarts of
real containers in ``test_restart_policy.py``.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from supervisor import shims
from supervisor.config import Config
from supervisor.containers import EXITED, Containers
from supervisor.events import EventBus
from supervisor.images import Images
from supervisor.policy import BACKOFF_INITIAL, BACKOFF_MAX
from supervisor.records import ContainerSettings, RunState
from supervisor.store import ContainerRecord, Store
from tugwire.timefmt import rfc3339

HOUR = 3600.0


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """trio, on a clock that jumps to the next deadline as soon as every task waits."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


class Tugd:
    """The part of tugd that schedules restarts, in this process, in ``tmp_path``."""

    def __init__(self, containers: Containers, store: Store) -> None:
        self.containers = containers
        self.store = store
        self.restarts: list[float] = []  # the fake clock's time of each restart by the policy
        self.t0 = anyio.current_time()

    def add(self, restart: str, exit_code: int) -> str:
        """A container that exited with ``exit_code`` and whose image is gone."""
        cid = secrets.token_hex(32)
        self.store.insert_container(
            ContainerRecord(
                id=cid,
                name=f"c{cid[:6]}",
                image="gone",
                image_id="sha256:" + "0" * 64,
                created_at=rfc3339(),
                settings=ContainerSettings(restart=restart),
                run=RunState(EXITED, exit_code=exit_code),
            )
        )
        return cid

    def delays(self) -> list[float]:
        """The time between two restarts (the first: from the start of tugd)."""
        times = [self.t0, *self.restarts]
        return [round(b - a, 6) for a, b in itertools.pairwise(times)]

    def inspect(self, cid: str) -> dict[str, Any]:
        rec = self.store.get_container(cid)
        assert rec is not None
        return self.containers.inspect(rec)


@pytest.fixture
async def tugd(tmp_path: Any) -> AsyncIterator[Tugd]:
    cfg = Config(root=str(tmp_path / "root"), state=str(tmp_path / "st"), default_network="none")
    os.makedirs(cfg.root)
    os.makedirs(cfg.state)
    store = Store(cfg.db_path)
    try:
        async with anyio.create_task_group() as tg:
            holder: list[Tugd] = []
            containers = Containers(
                cfg,
                store,
                Images(cfg, store),
                shims.ExecLauncher(cfg.shim_timeout),  # never used: no start gets that far
                EventBus(store),
                tg,
                on_restart=lambda: holder[0].restarts.append(anyio.current_time()),
            )
            holder.append(Tugd(containers, store))
            yield holder[0]
            tg.cancel_scope.cancel()
    finally:
        store.close()


@pytest.mark.anyio
async def test_on_failure_n_backs_off_doubling_then_never_again(tugd: Tugd) -> None:
    cid = tugd.add("on-failure:3", exit_code=1)
    await tugd.containers.recover()  # a restart that was pending when tugd stopped
    await anyio.sleep(HOUR)  # on the fake clock: an hour passes at once (three restarts, then none)
    assert tugd.delays() == [0.1, 0.2, 0.4]
    info = tugd.inspect(cid)
    assert info["restart_count"] == 3 and not info["restarting"]
    assert info["state"] == "exited" and "restart failed: the image of container" in info["reason"]


@pytest.mark.anyio
async def test_always_doubles_up_to_the_cap_and_stop_cancels_the_pending_one(tugd: Tugd) -> None:
    cid = tugd.add("always", exit_code=0)
    await tugd.containers.recover()  # ``always``: started again at once when tugd starts
    want = [0.0] + [BACKOFF_INITIAL * 2**i for i in range(10)] + [BACKOFF_MAX, BACKOFF_MAX]
    await anyio.sleep(sum(want) + 1)  # on the fake clock: to just after the 13th restart
    assert tugd.delays() == pytest.approx(want)
    info = tugd.inspect(cid)
    assert info["restarting"]
    count = info["restart_count"]
    await tugd.containers.stop(cid, 0)
    assert not tugd.inspect(cid)["restarting"]
    await anyio.sleep(HOUR)  # on the fake clock: an hour passes at once, and nothing happens in it
    assert tugd.inspect(cid)["restart_count"] == count
    assert len(tugd.restarts) == count


@pytest.mark.anyio
async def test_on_failure_leaves_a_clean_exit_alone_for_an_hour(tugd: Tugd) -> None:
    cid = tugd.add("on-failure", exit_code=0)
    await tugd.containers.recover()
    await anyio.sleep(HOUR)  # on the fake clock: an hour passes at once, and nothing happens in it
    assert tugd.restarts == []
    assert tugd.inspect(cid)["restart_count"] == 0 and not tugd.inspect(cid)["restarting"]
