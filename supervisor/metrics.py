"""tugd's Prometheus metrics: its own figures, and each running container's, merged at scrape time.

The daemon's figures live in a :class:`prometheus_client.CollectorRegistry` of our own (not the
library's global one): API calls, containers by state, start latency, exits, OOM kills, ... They
are fed by hooks (``Dispatcher.on_call``, ``Containers(on_start_latency=, on_exit=)``) and, for
the counts by state, read from the store at scrape time.

A container's figures (CPU, memory, pids, log and network bytes) are its shim's to report: each
shim reads its own cgroup and formats the text by hand (``shimd/stats.py``). At every scrape tugd
asks all the running containers' shims in parallel, each under a short deadline, and appends what
they answered to its own text, one ``# HELP``/``# TYPE`` per family. A shim that does not answer
in time (stopped, stuck, gone) is left out of that scrape and counted in
``tugboat_shim_scrape_errors_total``: it cannot stall the scrape. See docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable, Iterator
from typing import Protocol

import anyio
import anyio.abc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tugwire import httpserve
from tugwire.errors import TugError

from . import shims
from .containers.state import ACTIVE, State

log = logging.getLogger("tugboat.metrics")

SHIM_DEADLINE = 1.0  # seconds a shim has to answer at scrape time
STATES = tuple(State)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
START_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Source(Protocol):
    """What the scrape reads from the containers (``supervisor.containers.Containers``)."""

    def counts(self) -> dict[str, int]: ...

    def shim_clients(self) -> list[shims.ShimClient]: ...


class _StateCollector(Collector):
    """Containers by state and live shims, read from the store at each scrape."""

    def __init__(self) -> None:
        self.source: Source | None = None

    def describe(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily("tugboat_containers", "Containers by state.", labels=["state"]),
            GaugeMetricFamily("tugboat_shims_live", "Shims alive: containers running or paused."),
        ]

    def collect(self) -> Iterable[Metric]:
        counts = self.source.counts() if self.source is not None else {}
        by_state = GaugeMetricFamily("tugboat_containers", "Containers by state.", labels=["state"])
        for state in STATES:
            by_state.add_metric([state], counts.get(state, 0))
        live = GaugeMetricFamily("tugboat_shims_live", "Shims alive: containers running or paused.")
        live.add_metric([], sum(counts.get(s, 0) for s in ACTIVE))
        return [by_state, live]


class Metrics:
    """The daemon's figures, the hooks that feed them, and the scrape that adds the shims'."""

    def __init__(self, *, version: str, runtime: str, backend: str) -> None:
        # No ``*_created`` series: they double the series and the text format gains nothing by them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = r = CollectorRegistry()
        self.api_requests = Counter(
            "tugboat_api_requests_total",
            "API (JSON-RPC) requests answered, by method and outcome (ok, or the error's kind).",
            ["method", "outcome"],
            registry=r,
        )
        self.api_duration = Histogram(
            "tugboat_api_request_duration_seconds",
            "Time from an API request's arrival to its answer, by method (streams last long).",
            ["method"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self.start_duration = Histogram(
            "tugboat_container_start_duration_seconds",
            "Time to start a container: mount, shim birth, runc run, until it runs.",
            buckets=START_BUCKETS,
            registry=r,
        )
        self.exits = Counter(
            "tugboat_container_exits_total",
            "Container exits seen by this tugd, by exit code (unknown: the shim died without one).",
            ["code"],
            registry=r,
        )
        self.oom_kills = Counter(
            "tugboat_container_oom_kills_total",
            "Container exits that the kernel's OOM killer caused (the cgroup's own counter).",
            registry=r,
        )
        self.restarts = Counter(
            "tugboat_container_restarts_total",
            "Containers restarted by their restart policy.",
            registry=r,
        )
        self.image_pulls = Counter(
            "tugboat_image_pulls_total",
            "Images pulled from a registry (always 0 until image pull lands).",
            registry=r,
        )
        self.image_pull_bytes = Counter(
            "tugboat_image_pull_bytes_total",
            "Bytes of image blobs pulled from a registry (always 0 until image pull lands).",
            registry=r,
        )
        self.shim_scrape_errors = Counter(
            "tugboat_shim_scrape_errors_total",
            "Shims that did not answer a metrics scrape in time (their container was left out).",
            registry=r,
        )
        Info("tugboat_build", "Tugboat's version, Python, runtime and anyio backend.", registry=r).info(
            {
                "version": version,
                "python": platform.python_version(),
                "runtime": os.path.basename(runtime),
                "backend": backend,
            }
        )
        ProcessCollector(registry=r)  # process_*: tugd's own CPU, memory, fds
        self._states = _StateCollector()
        r.register(self._states)

    # --------------------------------------------------------------------------------- hooks

    def observe_call(self, method: str, outcome: str, seconds: float) -> None:
        """``Dispatcher.on_call``: one API request answered."""
        self.api_requests.labels(method, outcome).inc()
        self.api_duration.labels(method).observe(seconds)

    def observe_start(self, seconds: float) -> None:
        """``Containers(on_start_latency=)``: one container started."""
        self.start_duration.observe(seconds)

    def observe_exit(self, code: int | None, oom_killed: bool) -> None:
        """``Containers(on_exit=)``: one exit recorded (``code`` None: not known)."""
        self.exits.labels("unknown" if code is None else str(code)).inc()
        if oom_killed:
            self.oom_kills.inc()

    # -------------------------------------------------------------------------------- scrape

    async def render(self, source: Source, scrape_timeout: float | None = None) -> bytes:
        """The whole exposition: the shims' figures (asked in parallel, each under a deadline)
        merged by family, after the daemon's own. ``scrape_timeout`` (Prometheus sends it in a
        header) shortens the shims' deadline so that the answer comes within it."""
        self._states.source = source
        deadline = SHIM_DEADLINE
        if scrape_timeout is not None:
            deadline = max(0.05, min(SHIM_DEADLINE, scrape_timeout / 2))
        clients = source.shim_clients()
        texts: list[str] = [""] * len(clients)

        async def ask(i: int, shim: shims.ShimClient) -> None:
            try:
                texts[i] = await shim.metrics(timeout=deadline)
            except (TugError, OSError) as exc:
                log.debug("shim at %s: no metrics: %s", shim.dir, exc)
                self.shim_scrape_errors.inc()

        async with anyio.create_task_group() as tg:
            for i, shim in enumerate(clients):
                tg.start_soon(ask, i, shim)
        return generate_latest(self.registry) + merge(texts).encode()

    async def serve(self, listener: anyio.abc.SocketListener, source: Source) -> None:
        """Serve ``GET /metrics`` on ``listener`` until cancelled."""

        async def render(headers: dict[str, str]) -> bytes:
            timeout = None
            raw = headers.get("x-prometheus-scrape-timeout-seconds")
            if raw:
                try:
                    timeout = float(raw)
                except ValueError:
                    timeout = None
            return await self.render(source, timeout)

        await httpserve.serve(listener, render)


def merge(texts: Iterable[str]) -> str:
    """Texts in the exposition format, each with its own ``# HELP``/``# TYPE`` lines, merged into
    one where each family's header appears once, followed by all its samples."""
    headers: dict[str, dict[str, str]] = {}  # family -> {"HELP": line, "TYPE": line}, first seen
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = ""
        for line in _lines(text):
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    headers.setdefault(family, {}).setdefault(parts[1], line)
                    samples.setdefault(family, [])
                continue
            if family and line.startswith(family):
                samples[family].append(line)
    out: list[str] = []
    for family, head in headers.items():
        out.extend(head[kind] for kind in ("HELP", "TYPE") if kind in head)
        out.extend(samples[family])
    return "\n".join(out) + "\n" if out else ""


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        line = line.strip()
        if line:
            yield line
