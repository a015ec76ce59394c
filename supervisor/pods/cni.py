"""Pod networking by CNI (the Container Network Interface, spec 1.0), as containerd runs it:
the network configuration is the first ``*.conflist``, ``*.conf`` or ``*.json`` file of the
configuration directory in lexical order (default ``/etc/cni/net.d``; a ``.conf`` is one plugin),
the plugins are executables found in the bin directories (``/opt/cni/bin``, ``/usr/lib/cni``:
Debian's ``containernetworking-plugins``), run in the chain's order for ADD and CHECK (each given
the previous one's result as ``prevResult``) and in reverse for DEL.

Every pod's attachment is cached on disk, ``<state>/cni/<pod id>.json``: the configuration and
the arguments it was added with, written *before* ADD (so a tugd killed in the middle of ADD
finds what to DEL at its next start), then the result once ADD succeeded. DEL runs from the
cache (the configuration the pod was added with, its result as ``prevResult``) and removes it;
without a cache there is nothing to DEL. DEL is idempotent per the spec: a second one, or one
after a crash, succeeds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import anyio

from tugwire import fsutil
from tugwire.errors import RuntimeFailed

from ..failpoints import failpoint

log = logging.getLogger("tugboat.pods.cni")

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
IFNAME = "eth0"
EXTENSIONS = (".conflist", ".conf", ".json")
PLUGIN_TIMEOUT = 60.0  # seconds one plugin call may take


class NotReady(Exception):
    """No valid CNI configuration (or a plugin it names is missing): the message says why."""


@dataclass(frozen=True)
class NetConf:
    """A network configuration list: its file, name, version and plugin configurations."""

    path: str
    name: str
    version: str
    plugins: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "cniVersion": self.version, "plugins": self.plugins}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetConf:
        return cls(str(d["path"]), str(d["name"]), str(d["cniVersion"]), list(d["plugins"]))


@dataclass(frozen=True)
class PodArgs:
    """Who the attachment is for: the pod's id (``CNI_CONTAINERID``), its network namespace,
    kubelet's metadata (``CNI_ARGS``) and its port mappings (the ``portMappings`` capability)."""

    id: str
    netns: str
    name: str = ""
    namespace: str = ""
    uid: str = ""
    port_mappings: list[dict[str, Any]] = field(default_factory=list)

    def cni_args(self) -> str:
        return ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={self.namespace}",
                f"K8S_POD_NAME={self.name}",
                f"K8S_POD_INFRA_CONTAINER_ID={self.id}",
                f"K8S_POD_UID={self.uid}",
            ]
        )


def load(conf_dir: str) -> NetConf:
    """The first valid network configuration of ``conf_dir`` in lexical order (as containerd
    and libcni's ``ConfFiles``); NotReady saying why there is none."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(EXTENSIONS))
    except FileNotFoundError:
        raise NotReady(f"no CNI configuration directory {conf_dir}") from None
    except OSError as exc:
        raise NotReady(f"cannot read the CNI configuration directory {conf_dir}: {exc.strerror}") from None
    problems = []
    for name in names:
        path = os.path.join(conf_dir, name)
        try:
            return parse(path)
        except NotReady as exc:
            problems.append(str(exc))
    if problems:
        raise NotReady("no valid CNI configuration: " + "; ".join(problems))
    raise NotReady(f"no CNI configuration (*.conflist, *.conf, *.json) in {conf_dir}")


def parse(path: str) -> NetConf:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as exc:
        raise NotReady(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise NotReady(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise NotReady(f"{path}: not a JSON object")
    if "plugins" not in doc:  # a single network configuration (.conf): a list of one
        if not path.endswith((".conf", ".json")):
            raise NotReady(f"{path}: a .conflist needs 'plugins'")
        doc = {"cniVersion": doc.get("cniVersion", ""), "name": doc.get("name", ""), "plugins": [doc]}
    name, version, plugins = doc.get("name"), doc.get("cniVersion"), doc.get("plugins")
    if not isinstance(name, str) or not name:
        raise NotReady(f"{path}: no network 'name'")
    if not isinstance(version, str) or not version:
        raise NotReady(f"{path}: no 'cniVersion'")
    if not isinstance(plugins, list) or not plugins:
        raise NotReady(f"{path}: no 'plugins'")
    for p in plugins:
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise NotReady(f"{path}: a plugin without a 'type'")
        if "/" in p["type"]:
            raise NotReady(f"{path}: plugin type {p['type']!r} is not a name")
    return NetConf(path, name, version, plugins)


def find_plugin(kind: str, bin_dirs: tuple[str, ...]) -> str:
    for d in bin_dirs:
        path = os.path.join(d, kind)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise NotReady(f"CNI plugin {kind!r} not found in {':'.join(bin_dirs)}")


class Cni:
    """CNI for the pods of one tugd: its configuration directory, plugin directories and result
    cache."""

    def __init__(self, conf_dir: str, bin_dirs: tuple[str, ...], cache_dir: str) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.cache_dir = cache_dir

    def status(self) -> tuple[NetConf | None, str]:
        """The configuration a new pod would get and "" if every plugin is there; else None and
        why not."""
        try:
            conf = load(self.conf_dir)
            for p in conf.plugins:
                find_plugin(p["type"], self.bin_dirs)
        except NotReady as exc:
            return None, str(exc)
        return conf, ""

    # -------------------------------------------------------------------------- the cache

    def _cache(self, pid: str) -> str:
        return os.path.join(self.cache_dir, f"{pid}.json")

    def cached(self, pid: str) -> dict[str, Any] | None:
        try:
            with open(self._cache(pid), "rb") as f:
                d = json.loads(f.read())
        except (FileNotFoundError, ValueError):
            return None
        return d if isinstance(d, dict) else None

    def cached_ids(self) -> set[str]:
        try:
            return {n[: -len(".json")] for n in os.listdir(self.cache_dir) if n.endswith(".json")}
        except FileNotFoundError:
            return set()

    def _write(self, pid: str, entry: dict[str, Any]) -> None:
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        fsutil.write_atomic(self._cache(pid), json.dumps(entry, sort_keys=True).encode(), mode=0o600)

    # ------------------------------------------------------------------------------ verbs

    async def add(self, args: PodArgs) -> tuple[NetConf, dict[str, Any]]:
        """ADD of the whole chain: the configuration and the final result. Cached first (an
        ADD interrupted by a crash is DELeted at the next start), its result after. On failure,
        the chain is DELeted and the cache removed (kept if that DEL fails: tried again at the
        next start, unless the plugin refused it as it refused the ADD)."""
        conf, why = await anyio.to_thread.run_sync(self.status)
        if conf is None:
            raise RuntimeFailed(f"CNI is not ready: {why}")
        entry = {"conf": conf.to_json(), "args": _args_json(args), "result": None}
        await anyio.to_thread.run_sync(self._write, args.id, entry)
        try:
            result = await self._chain("ADD", conf, args, None)
        except BaseException as failed:
            with anyio.CancelScope(shield=True):
                try:
                    await self.delete(args.id, args.netns)
                except RuntimeFailed as exc:
                    if _same_refusal(failed, exc):  # the plugin refuses the configuration itself
                        log.warning("pod %s: CNI DEL refused as ADD was: %s", args.id[:12], exc.message)
                        await anyio.to_thread.run_sync(self.forget, args.id)
                    else:  # the cache stays: the next start tries again
                        log.warning("pod %s: CNI DEL after a failed ADD: %s", args.id[:12], exc.message)
            raise
        entry["result"] = result
        await anyio.to_thread.run_sync(self._write, args.id, entry)
        return conf, result

    async def check(self, pid: str, netns: str) -> None:
        """CHECK of the chain against the cached result: RuntimeFailed if a plugin finds the
        pod's network is not as it made it."""
        entry = self.cached(pid)
        if entry is None or entry.get("result") is None:
            raise RuntimeFailed(f"pod {pid[:12]} has no CNI result to check")
        args = _args_from(entry["args"], netns)
        await self._chain("CHECK", NetConf.from_json(entry["conf"]), args, entry["result"])

    async def delete(self, pid: str, netns: str) -> None:
        """DEL of the chain the pod was added with (its cache), in reverse, each plugin given the
        cached result; then the cache removed. Nothing cached: nothing to do. ``netns`` "" when
        the namespace is gone (plugins then release what they hold outside it)."""
        entry = await anyio.to_thread.run_sync(self.cached, pid)
        if entry is None:
            return
        conf = NetConf.from_json(entry["conf"])
        args = _args_from(entry["args"], netns)
        await self._chain("DEL", conf, args, entry.get("result"))
        await anyio.to_thread.run_sync(self.forget, pid)

    def forget(self, pid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._cache(pid))

    async def _chain(
        self, command: str, conf: NetConf, args: PodArgs, prev: dict[str, Any] | None
    ) -> dict[str, Any]:
        plugins = list(reversed(conf.plugins)) if command == "DEL" else conf.plugins
        result: dict[str, Any] = prev or {}
        for plugin in plugins:
            netconf = dict(plugin)
            netconf["name"], netconf["cniVersion"] = conf.name, conf.version
            if command == "ADD":
                if result:  # the previous plugin's result; none for the first
                    netconf["prevResult"] = result
            elif prev is not None:  # CHECK and DEL: the chain's cached result
                netconf["prevResult"] = prev
            runtime = _runtime_config(plugin, args)
            if runtime:
                netconf["runtimeConfig"] = runtime
            else:
                netconf.pop("runtimeConfig", None)
            out = await self._exec(plugin["type"], command, args, netconf)
            if command == "ADD":
                result = out
                failpoint("pod.cni.add.after_plugin")
        return result

    async def _exec(self, kind: str, command: str, args: PodArgs, netconf: dict[str, Any]) -> dict[str, Any]:
        try:
            path = find_plugin(kind, self.bin_dirs)
        except NotReady as exc:
            raise RuntimeFailed(f"CNI {command}: {exc}") from None
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": args.id,
            "CNI_NETNS": args.netns,
            "CNI_IFNAME": IFNAME,
            "CNI_PATH": ":".join(self.bin_dirs),
            "CNI_ARGS": args.cni_args(),
        }
        stdin = json.dumps(netconf).encode()
        try:
            with anyio.fail_after(PLUGIN_TIMEOUT):
                proc = await anyio.run_process([path], input=stdin, env=env, check=False)
        except TimeoutError:
            raise RuntimeFailed(
                f"CNI plugin {kind} ({path}) {command} took more than {PLUGIN_TIMEOUT:g} s: killed",
                plugin=kind,
                command=command,
            ) from None
        except OSError as exc:
            raise RuntimeFailed(
                f"CNI plugin {kind} ({path}) {command}: {exc}", plugin=kind, command=command
            ) from None
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            message, error = _error_message(kind, path, command, proc.returncode, out, proc.stderr)
            raise RuntimeFailed(message, plugin=kind, command=command, cni_error=error)
        if command != "ADD":
            return {}
        try:
            result = json.loads(out)
        except ValueError:
            bad = out[:200]
            raise RuntimeFailed(f"CNI plugin {kind} ({path}) ADD: its result is not JSON: {bad!r}") from None
        if not isinstance(result, dict):
            raise RuntimeFailed(f"CNI plugin {kind} ({path}) ADD: its result is not a JSON object")
        return result


def _error_message(kind: str, path: str, command: str, code: int, out: str, err: bytes) -> tuple[str, str]:
    """The message of a plugin's error (spec: a JSON object with ``code``, ``msg``, ``details``
    on stdout), with its JSON (its stderr when it gave none), and the error itself."""
    head = f"CNI plugin {kind} ({path}) {command} failed (exit status {code})"
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "msg" in doc:
        msg = str(doc["msg"]) + (f": {doc['details']}" if doc.get("details") else "")
        return f"{head}: {msg} (error {json.dumps(doc, sort_keys=True)})", msg
    text = (out or err.decode(errors="replace").strip())[-500:] or "no output"
    return f"{head}: {text}", text


def _same_refusal(add: BaseException, delete: RuntimeFailed) -> bool:
    """Whether DEL failed as ADD did: the same plugin, the same error (a configuration the
    plugin refuses outright, as host-local an invalid subnet: it made nothing, and no DEL will
    ever succeed). Then the cache is dropped, else it would be tried at every start."""
    if not isinstance(add, RuntimeFailed) or add.details.get("command") != "ADD":
        return False
    keys = ("plugin", "cni_error")
    return all(add.details.get(k) == delete.details.get(k) for k in keys) and bool(
        add.details.get("cni_error")
    )


def _runtime_config(plugin: dict[str, Any], args: PodArgs) -> dict[str, Any]:
    """The runtime configuration of the capabilities the plugin declares (only those)."""
    caps = plugin.get("capabilities")
    out: dict[str, Any] = {}
    if isinstance(caps, dict) and caps.get("portMappings") and args.port_mappings:
        out["portMappings"] = args.port_mappings
    return out


def _args_json(args: PodArgs) -> dict[str, Any]:
    return {
        "id": args.id,
        "name": args.name,
        "namespace": args.namespace,
        "uid": args.uid,
        "port_mappings": args.port_mappings,
    }


def _args_from(d: dict[str, Any], netns: str) -> PodArgs:
    return PodArgs(
        id=str(d["id"]),
        netns=netns,
        name=str(d.get("name", "")),
        namespace=str(d.get("namespace", "")),
        uid=str(d.get("uid", "")),
        port_mappings=list(d.get("port_mappings") or []),
    )


def port_mappings(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``portMappings`` capability's entries of a pod's ``ports`` (those with a host port)."""
    out = []
    for p in ports:
        if not p.get("host_port"):
            continue
        entry: dict[str, Any] = {
            "hostPort": p["host_port"],
            "containerPort": p["container_port"],
            "protocol": p.get("protocol") or "tcp",
        }
        if p.get("host_ip"):
            entry["hostIP"] = p["host_ip"]
        out.append(entry)
    return out


def address(result: dict[str, Any] | None) -> tuple[str, int] | None:
    """The pod's address in a CNI result: its first IPv4 one (on ``eth0`` if the result says
    which interface), as (ip, prefix length)."""
    if not result:
        return None
    ifaces = result.get("interfaces") or []
    found = []
    for ip in result.get("ips") or []:
        try:
            iface = ipaddress.ip_interface(str(ip.get("address", "")))
        except ValueError:
            continue
        idx = ip.get("interface")
        on_eth0 = isinstance(idx, int) and 0 <= idx < len(ifaces) and ifaces[idx].get("name") == IFNAME
        found.append((iface.version != 4, not on_eth0, str(iface.ip), iface.network.prefixlen))
    if not found:
        return None
    found.sort()
    return found[0][2], found[0][3]


def loopback_up(netns: str) -> None:
    """The pod's loopback up (containerd runs the ``loopback`` plugin for it). Blocking."""
    from ..network import rtnl
    from ..network.netlink import in_netns

    with in_netns(netns, rtnl.open_socket) as sock:
        sock.batch([rtnl.link_set(index=rtnl.LOOPBACK_INDEX, up=True)])
