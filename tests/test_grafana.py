"""The Grafana dashboards: well formed, and every panel's query accepted by a real Prometheus that
scrapes a real tugd running containers, naming only metrics that tugd really exports."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tugwire import errors

from .conftest import REPO, needs_prometheus, needs_root, needs_runc
from .helpers import run, start

GRAFANA = os.path.join(REPO, "grafana")
DASHBOARDS = sorted(
    os.path.join(GRAFANA, "dashboards", f) for f in os.listdir(os.path.join(GRAFANA, "dashboards"))
)
METRIC = re.compile(r"\b(?:tugboat|process)_[a-z0-9_]+\b")
VARIABLE = re.compile(r"\$\{?(\w+)")


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        dash: dict[str, Any] = json.load(f)
    return dash


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, query) of every panel target."""
    for panel in panels(dash):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def resolve(expr: str, values: dict[str, str]) -> str:
    """What Grafana sends for a query: its variables replaced by values."""
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, expr
    return expr


def test_dashboards_are_well_formed() -> None:
    assert [os.path.basename(p) for p in DASHBOARDS] == ["tugboat-container.json", "tugboat-host.json"]
    uids = set()
    for path in DASHBOARDS:
        dash = load(path)
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        assert dash["title"].startswith("Tugboat / ") and dash["schemaVersion"] >= 36
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), path
        for panel in panels(dash):
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                used = set(VARIABLE.findall(target["expr"])) - {"__rate_interval", "__interval", "__range"}
                assert used <= set(variables), (panel["title"], used)
    container = load(os.path.join(GRAFANA, "dashboards", "tugboat-container.json"))
    variable = {v["name"]: v for v in container["templating"]["list"]}["container"]
    assert variable["query"]["query"].startswith("label_values(tugboat_container_")
    assert all("$container" in expr for _t, expr in targets(container))


def test_provisioning_files_point_at_the_dashboards() -> None:
    with open(os.path.join(GRAFANA, "provisioning", "datasources", "prometheus.yaml")) as f:
        datasource = f.read()
    assert "apiVersion: 1" in datasource and "type: prometheus" in datasource
    with open(os.path.join(GRAFANA, "provisioning", "dashboards", "tugboat.yaml")) as f:
        provider = f.read()
    assert "apiVersion: 1" in provider and "type: file" in provider
    path = re.search(r"^\s+path: (\S+)$", provider, re.M)
    assert path is not None
    with open(os.path.join(GRAFANA, "README.md")) as f:
        assert path.group(1) in f.read()  # the README says where to put the dashboards


@pytest.mark.integration
@needs_root
@needs_runc
@needs_prometheus
def test_every_panel_query_runs_on_prometheus(make_daemon: Any, make_prometheus: Any) -> None:
    d = make_daemon()
    run(d, ["sh", "-c", "exit 2"], name="failed")
    start(d, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"], name="web", memory=64 << 20)
    with pytest.raises(errors.NotFound):
        d.call("container.inspect", {"id": "missing"})
    instance = f"127.0.0.1:{d.metrics_port}"
    prom = make_prometheus([instance])
    # A few scrapes, so that rates over the interval below have points to work with.
    prom.wait_for(f'count_over_time(up{{instance="{instance}"}}[1m])', lambda v: v >= 4)
    names = set(prom.api("label/__name__/values")["data"])
    values = {
        "instance": instance,
        "container": "web",
        "datasource": "unused",
        "__rate_interval": "30s",
        "__interval": "5s",
        "__range": "5m",
    }
    checked = 0
    for path in DASHBOARDS:
        dash = load(path)
        for title, expr in targets(dash):
            query = resolve(expr, values)
            answer = prom.api("query", query=query)
            assert answer["status"] == "success", (path, title, query, answer)
            used = METRIC.findall(expr)
            assert used, (title, expr)
            missing = [m for m in used if m not in names]
            assert not missing, f"{os.path.basename(path)} / {title}: {missing} not exported"
            # And the query finds series: its label matchers fit what tugd labels.
            assert answer["data"]["result"], (path, title, query)
            checked += 1
        for variable in dash["templating"]["list"]:
            if variable["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert m is not None, variable
            selector = resolve(m.group(1), values)
            found = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
            assert found["status"] == "success", found
            assert values[variable["name"]] in found["data"], (variable["name"], found)
    assert checked >= 30
