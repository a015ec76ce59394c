"""The container half of the CRI RuntimeService, a translation of tugd's ``container.*`` methods.

What kubelet relies on (docs/cri.md, "Containers"): a container belongs to a pod (tugd records
``pod_id``; ``container.list``'s ``pod`` filter selects by it) and joins the pod's namespaces by
path, under the pod's cgroup parent, its CRI log at ``<pod log_directory>/<log_path>``; labels
and annotations come back exactly as given; Stop and Remove of an unknown or removed container
succeed; every other call on an unknown id is ``NOT_FOUND``; ExecSync past its timeout is
``DEADLINE_EXCEEDED`` and the process is killed. The CRI's metadata (name, attempt) is kept in
tugd's container name, ``k8s_<name>_<pod id, 16>_<attempt>``, unique per pod as the CRI asks.
Nothing is kept here.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import grpc.aio

from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound
from tugwire.timefmt import parse_rfc3339

from .errors import rpc
from .gen import api_pb2
from .images import check_reference, qualified
from .tugd import Tugd

Context = grpc.aio.ServicerContext[Any, Any]

NAME_PREFIX = "k8s"
POD_PART = 16  # characters of the pod's id in a container's name
EXEC_OUTPUT_LIMIT = 16 << 20  # bytes of each stream ExecSync keeps (containerd's limit)

STATE = {
    "created": api_pb2.CONTAINER_CREATED,
    "running": api_pb2.CONTAINER_RUNNING,
    "paused": api_pb2.CONTAINER_RUNNING,
    "exited": api_pb2.CONTAINER_EXITED,
}
STATE_NAMES = {  # a CRI state filter -> tugd's states
    api_pb2.CONTAINER_CREATED: {"created"},
    api_pb2.CONTAINER_RUNNING: {"running", "paused"},
    api_pb2.CONTAINER_EXITED: {"exited"},
    api_pb2.CONTAINER_UNKNOWN: {"unknown"},
}
PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}
PROPAGATION_BACK = {v: k for k, v in PROPAGATION.items()}
GROUPS_POLICY = {api_pb2.Merge: "merge", api_pb2.Strict: "strict"}
POD_FILES = {"hosts": "/etc/hosts", "resolv.conf": "/etc/resolv.conf", "hostname": "/etc/hostname"}


def container_name(pod_id: str, metadata: api_pb2.ContainerMetadata) -> str:
    """tugd's name of a CRI container: its metadata and its pod, unique as the CRI asks."""
    if not metadata.name:
        raise InvalidArgument("a container needs a name (metadata.name)", field="metadata")
    return f"{NAME_PREFIX}_{metadata.name}_{pod_id[:POD_PART]}_{metadata.attempt}"


def metadata_of(name: str) -> api_pb2.ContainerMetadata:
    """The CRI metadata back from tugd's name (a name of another shape is taken whole)."""
    prefix, _, rest = name.partition("_")
    parts = rest.rsplit("_", 2)
    if prefix == NAME_PREFIX and len(parts) == 3 and parts[2].isdigit():
        return api_pb2.ContainerMetadata(name=parts[0], attempt=int(parts[2]))
    return api_pb2.ContainerMetadata(name=name)


def ns_time(value: str | None) -> int:
    """Nanoseconds since the epoch of tugd's RFC 3339 time; 0 for none."""
    if not value:
        return 0
    try:
        return parse_rfc3339(value)
    except ValueError:
        return 0


def seccomp_option(sc: api_pb2.LinuxContainerSecurityContext) -> str:
    """tugd's ``seccomp``: ``default`` (RuntimeDefault), ``unconfined``, or a profile's path
    (Localhost). Without a profile, the deprecated path field decides; without either,
    unconfined, as containerd and CRI-O do (kubelet sends RuntimeDefault when it wants it)."""
    if sc.HasField("seccomp"):
        kind = sc.seccomp.profile_type
        if kind == api_pb2.SecurityProfile.RuntimeDefault:
            return "default"
        if kind == api_pb2.SecurityProfile.Unconfined:
            return "unconfined"
        ref = sc.seccomp.localhost_ref
        if not ref.startswith("/"):
            raise InvalidArgument(
                f"seccomp Localhost profile {ref!r} must be an absolute path", field="seccomp"
            )
        return ref
    old = sc.seccomp_profile_path
    if old in ("runtime/default", "docker/default"):
        return "default"
    if old.startswith("localhost/"):
        return old[len("localhost/") :]
    if old in ("", "unconfined"):
        return "unconfined"
    raise InvalidArgument(f"unknown seccomp profile {old!r}", field="seccomp")


async def namespaces_for(
    tugd: Tugd, pod: dict[str, Any], sc: api_pb2.LinuxContainerSecurityContext
) -> dict[str, str]:
    """The namespaces a container of ``pod`` joins (tugd's ``namespaces``): the pod's by path,
    the host's (NODE), or the target container's PID namespace (TARGET)."""
    paths = pod.get("namespaces") or {}
    opts = sc.namespace_options
    host_net = bool((pod.get("network") or {}).get("host")) or opts.network == api_pb2.NODE
    out: dict[str, str] = {}
    if host_net:
        out["network"] = out["uts"] = "host"
    else:
        for kind in ("network", "uts"):
            if not paths.get(kind):
                raise FailedPrecondition(f"pod {pod['id']} has no {kind} namespace: it is not ready")
            out[kind] = str(paths[kind])
    if opts.ipc == api_pb2.NODE:
        out["ipc"] = "host"
    elif paths.get("ipc"):
        out["ipc"] = str(paths["ipc"])
    elif (pod.get("namespace_options") or {}).get("ipc") == "node":
        out["ipc"] = "host"
    pod_pid = (pod.get("namespace_options") or {}).get("pid")
    if opts.pid == api_pb2.NODE:
        out["pid"] = "host"
    elif opts.pid == api_pb2.POD:
        # POD is the enum's zero value: a config that says nothing asks for it. The pod's PID
        # namespace when it has one; a pod that was not made to share one (kubelet's default,
        # pid: container) leaves the container its own; one that asked and has none is refused.
        if paths.get("pid"):
            out["pid"] = str(paths["pid"])
        elif pod_pid == "node":
            out["pid"] = "host"
        elif pod_pid == "pod":
            raise FailedPrecondition(f"pod {pod['id']} has no PID namespace of its own to share")
    elif opts.pid == api_pb2.TARGET:
        target = await tugd.call("container.inspect", {"id": opts.target_id})
        if not target.get("pid"):
            raise FailedPrecondition(f"the target container {opts.target_id} is not running")
        out["pid"] = f"/proc/{int(target['pid'])}/ns/pid"
    return out


def create_params(
    request: api_pb2.CreateContainerRequest, pod: dict[str, Any], namespaces: dict[str, str]
) -> dict[str, Any]:
    """``container.create``'s params of a CreateContainer, for ``pod`` (tugd's ``pod.inspect``)."""
    cfg = request.config
    sc = cfg.linux.security_context
    res = cfg.linux.resources
    image = check_reference(cfg.image.image)
    params: dict[str, Any] = {
        "image": image,
        "name": container_name(pod["id"], cfg.metadata),
        "pod_id": pod["id"],
        "cmd": list(cfg.args),
        "env": [f"{kv.key}={_text(kv.value)}" for kv in cfg.envs],
        "labels": dict(cfg.labels),
        "annotations": {**cfg.annotations, **({STDIN_ONCE: "true"} if cfg.stdin and cfg.stdin_once else {})},
        "tty": cfg.tty,
        "stdin": cfg.stdin,
        "namespaces": namespaces,
        "read_only": sc.readonly_rootfs,
        "privileged": sc.privileged,
        "cap_add": list(sc.capabilities.add_capabilities),
        "cap_drop": list(sc.capabilities.drop_capabilities),
        "no_new_privileges": sc.no_new_privs,
        "seccomp": seccomp_option(sc),
        "supplemental_groups": list(sc.supplemental_groups),
        "supplemental_groups_policy": GROUPS_POLICY.get(sc.supplemental_groups_policy, "merge"),
        "sysctls": dict(request.sandbox_config.linux.sysctls),
    }
    if cfg.command:
        params["entrypoint"] = list(cfg.command)
    if cfg.working_dir:
        params["workdir"] = cfg.working_dir
    if sc.HasField("run_as_user"):
        params["run_as_user"] = sc.run_as_user.value
    if sc.run_as_username:
        params["run_as_username"] = sc.run_as_username
    if sc.HasField("run_as_group"):
        params["run_as_group"] = sc.run_as_group.value
    if sc.masked_paths:
        params["masked_paths"] = list(sc.masked_paths)
    if sc.readonly_paths:
        params["readonly_paths"] = list(sc.readonly_paths)
    parent = pod.get("cgroup_parent") or request.sandbox_config.linux.cgroup_parent
    if parent:
        params["cgroup_parent"] = parent
    params.update(resource_params(res))
    log_directory = pod.get("log_directory") or request.sandbox_config.log_directory
    if cfg.log_path and log_directory:
        params["log_directory"] = log_directory
        params["log_path"] = os.path.join(log_directory, cfg.log_path)
    if cfg.stop_signal != api_pb2.RUNTIME_DEFAULT:
        params["stop_signal"] = api_pb2.Signal.Name(cfg.stop_signal)
    volumes = []
    for m in cfg.mounts:
        if m.HasField("image") and m.image.image:  # an image volume (KEP-4639): tugd mounts it
            volumes.append(
                {
                    "type": "image",
                    "image": m.image.image,
                    "target": m.container_path,
                    "readonly": m.readonly,  # false is refused: an image volume is read-only
                    **({"subpath": m.image_sub_path} if m.image_sub_path else {}),
                }
            )
            continue
        if m.uidMappings or m.gidMappings:
            raise InvalidArgument("ID-mapped mounts are not supported by tugd", field="mounts")
        if m.recursive_read_only and (not m.readonly or m.propagation != api_pb2.PROPAGATION_PRIVATE):
            raise InvalidArgument(
                f"the recursive read-only mount {m.container_path} must be read-only, propagation private",
                field="mounts",
            )
        volumes.append(
            {
                "source": m.host_path,
                "destination": m.container_path,
                "readonly": m.readonly,
                "propagation": PROPAGATION.get(m.propagation, "rprivate"),
                **({"recursive_readonly": True} if m.recursive_read_only else {}),
            }
        )
    taken = {v.get("destination") or v.get("target") for v in volumes}
    for name, dest in POD_FILES.items():  # the pod's /etc files, as containerd mounts them
        source = (pod.get("files") or {}).get(name)
        if source and dest not in taken and not (name == "hostname" and namespaces.get("uts") == "host"):
            volumes.append({"source": source, "destination": dest, "readonly": sc.readonly_rootfs})
    params["volumes"] = volumes
    return params


def resource_params(res: api_pb2.LinuxContainerResources) -> dict[str, Any]:
    """tugd's limits (``container.create`` and ``container.update``) of LinuxContainerResources:
    a zero is "not set" (the proto's default), but the OOM score adjustment is always given
    (tugd raises it to its own when it may not lower it). Hugepage limits are dropped: this host's
    cgroups have no hugetlb controller (docs/cri.md)."""
    out: dict[str, Any] = {"oom_score_adj": res.oom_score_adj}
    if res.memory_limit_in_bytes > 0:
        out["memory"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes > 0 or res.memory_swap_limit_in_bytes == -1:
        out["memory_swap"] = res.memory_swap_limit_in_bytes
    if res.cpu_quota > 0 or res.cpu_quota == -1:
        out["cpu_quota"] = res.cpu_quota
        if res.cpu_period > 0:
            out["cpu_period"] = res.cpu_period
    if res.cpu_shares > 0:
        out["cpu_shares"] = res.cpu_shares
    if res.cpuset_cpus:
        out["cpuset_cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        out["cpuset_mems"] = res.cpuset_mems
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def resources_message(config: dict[str, Any]) -> api_pb2.LinuxContainerResources:
    """The LinuxContainerResources of tugd's settings (``container.inspect``'s ``config``)."""
    linux = api_pb2.LinuxContainerResources()
    if config.get("memory"):
        linux.memory_limit_in_bytes = int(config["memory"])
    if config.get("memory_swap"):
        linux.memory_swap_limit_in_bytes = int(config["memory_swap"])
    if config.get("cpu_quota") is not None:
        linux.cpu_period = int(config.get("cpu_period") or 100_000)
        linux.cpu_quota = int(config["cpu_quota"])
    elif config.get("cpus"):
        linux.cpu_period = 100_000
        linux.cpu_quota = int(float(config["cpus"]) * 100_000)
    if config.get("cpu_shares"):
        linux.cpu_shares = int(config["cpu_shares"])
    if config.get("cpuset_cpus"):
        linux.cpuset_cpus = str(config["cpuset_cpus"])
    if config.get("cpuset_mems"):
        linux.cpuset_mems = str(config["cpuset_mems"])
    if config.get("oom_score_adj") is not None:
        linux.oom_score_adj = int(config["oom_score_adj"])
    for key, value in (config.get("unified") or {}).items():
        linux.unified[key] = str(value)
    return linux


def user_message(config: dict[str, Any]) -> api_pb2.ContainerUser | None:
    """PID 1's uid, gid and supplemental groups as tugd resolved them at create (None for a
    container of a tugd that did not record them)."""
    user = config.get("process_user")
    if not user:
        return None
    return api_pb2.ContainerUser(
        linux=api_pb2.LinuxContainerUser(
            uid=int(user["uid"]),
            gid=int(user["gid"]),
            supplemental_groups=[int(g) for g in user.get("additional_gids") or []],
        )
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def image_spec(info: dict[str, Any]) -> api_pb2.ImageSpec:
    image = str(info.get("image") or "")
    return api_pb2.ImageSpec(image=qualified(image) if image and not image.startswith("sha256:") else image)


def container_message(info: dict[str, Any]) -> api_pb2.Container:
    """A CRI Container from tugd's ``container.list`` entry."""
    return api_pb2.Container(
        id=info["id"],
        pod_sandbox_id=info.get("pod_id") or "",
        metadata=metadata_of(info["name"]),
        image=image_spec(info),
        image_ref=info.get("image_id") or "",
        image_id=info.get("image_id") or "",
        state=STATE.get(info.get("state") or "", api_pb2.CONTAINER_UNKNOWN),
        created_at=ns_time(info.get("created_at")),
        labels=info.get("labels") or {},
        annotations=user_annotations(info),
    )


def status_message(info: dict[str, Any]) -> api_pb2.ContainerStatus:
    """A CRI ContainerStatus from tugd's ``container.inspect``."""
    state = info.get("state") or ""
    config = info.get("config") or {}
    reason = message = ""
    exit_code = 0
    if state == "exited":
        exit_code = int(info.get("exit_code") or 0)
        reason = "OOMKilled" if info.get("oom_killed") else "Completed" if exit_code == 0 else "Error"
    elif state == "unknown":
        reason, message = "Unknown", str(info.get("reason") or "")
    mounts = [
        api_pb2.Mount(
            container_path=v["destination"],
            host_path=v["source"],
            readonly=bool(v.get("readonly")),
            propagation=PROPAGATION_BACK.get(v.get("propagation") or "rprivate", api_pb2.PROPAGATION_PRIVATE),
            recursive_read_only=bool(v.get("recursive_readonly")),
        )
        if v.get("type") != "image"
        else api_pb2.Mount(
            container_path=v["destination"],
            readonly=True,
            image=api_pb2.ImageSpec(image=v["image"], image_ref=v.get("image_id") or ""),
            image_sub_path=v.get("subpath") or "",
        )
        for v in config.get("volumes") or []
        if v.get("destination") not in POD_FILES.values()
    ]
    status = api_pb2.ContainerStatus(
        id=info["id"],
        metadata=metadata_of(info["name"]),
        state=STATE.get(state, api_pb2.CONTAINER_UNKNOWN),
        created_at=ns_time(info.get("created_at")),
        started_at=ns_time(info.get("started_at")),
        finished_at=ns_time(info.get("finished_at")) if state in ("exited", "unknown") else 0,
        exit_code=exit_code,
        image=image_spec(info),
        image_ref=info.get("image_id") or "",
        image_id=info.get("image_id") or "",
        reason=reason,
        message=message,
        labels=info.get("labels") or {},
        annotations=user_annotations(info),
        mounts=mounts,
        log_path=str(info.get("log_path") or "") if config.get("log_path") else "",
    )
    sig = str(config.get("stop_signal") or "")
    if sig in api_pb2.Signal.DESCRIPTOR.values_by_name and sig != "RUNTIME_DEFAULT":
        status.stop_signal = api_pb2.Signal.Value(sig)
    status.resources.linux.CopyFrom(resources_message(config))
    user = user_message(config)
    if user is not None:
        status.user.CopyFrom(user)
    return status


def stats_message(
    info: dict[str, Any], sample: dict[str, Any], size_rw: int | None, root: str
) -> api_pb2.ContainerStats:
    """A CRI ContainerStats from tugd's ``container.list`` entry and ``container.stats`` sample."""
    now = time.time_ns()
    out = api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=info["id"],
            metadata=metadata_of(info["name"]),
            labels=info.get("labels") or {},
            annotations=user_annotations(info),
        )
    )
    out.cpu.timestamp = now
    if sample.get("cpu_seconds") is not None:
        out.cpu.usage_core_nano_seconds.value = int(float(sample["cpu_seconds"]) * 1e9)
    if sample.get("cpu_nano_cores") is not None:  # tugd's rate since the previous sample
        out.cpu.usage_nano_cores.value = int(sample["cpu_nano_cores"])
    out.memory.timestamp = now
    if sample.get("memory_working_set") is not None:
        out.memory.working_set_bytes.value = int(sample["memory_working_set"])
    if sample.get("memory_usage") is not None:
        out.memory.usage_bytes.value = int(sample["memory_usage"])
    if sample.get("memory_limit") and sample.get("memory_working_set") is not None:
        out.memory.available_bytes.value = max(
            0, int(sample["memory_limit"]) - int(sample["memory_working_set"])
        )
    out.writable_layer.timestamp = now
    out.writable_layer.fs_id.mountpoint = root
    if size_rw is not None:
        out.writable_layer.used_bytes.value = int(size_rw)
    return out


STDIN_ONCE = "io.tugboat.cri.stdin-once"  # an annotation of tug-cri's own: not shown back


def user_annotations(info: dict[str, Any]) -> dict[str, str]:
    """A container's annotations as its CreateContainer gave them (without tug-cri's own)."""
    return {k: v for k, v in (info.get("annotations") or {}).items() if k != STDIN_ONCE}


def stdin_once(info: dict[str, Any]) -> bool:
    """Made with ``stdin_once``: its stdin closes when the first attach closes its own."""
    return (info.get("annotations") or {}).get(STDIN_ONCE) == "true"


def labels_match(labels: dict[str, str], selector: Any) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class ContainerMethods:
    """The container RPCs of the RuntimeService (a part of :class:`cri.runtime.RuntimeService`)."""

    tugd: Tugd

    async def _pod(self, pod_id: str) -> dict[str, Any]:
        if not pod_id:
            raise InvalidArgument("no pod given (pod_sandbox_id is empty)", field="pod_sandbox_id")
        pod: dict[str, Any] = await self.tugd.call("pod.inspect", {"id": pod_id})
        return pod

    @rpc
    async def CreateContainer(
        self, request: api_pb2.CreateContainerRequest, context: Context
    ) -> api_pb2.CreateContainerResponse:
        """Create the container in its pod: the pod's namespaces, cgroup parent and log directory
        from ``pod.inspect``; the image by id or name; the security context as given."""
        pod = await self._pod(request.pod_sandbox_id)
        namespaces = await namespaces_for(self.tugd, pod, request.config.linux.security_context)
        params = create_params(request, pod, namespaces)
        created = await self.tugd.call("container.create", params)
        return api_pb2.CreateContainerResponse(container_id=created["id"])

    async def _inspect(self, cid: str) -> dict[str, Any]:
        if not cid:
            raise InvalidArgument("no container given (container_id is empty)", field="container_id")
        info: dict[str, Any] = await self.tugd.call("container.inspect", {"id": cid})
        return info

    @rpc
    async def StartContainer(
        self, request: api_pb2.StartContainerRequest, context: Context
    ) -> api_pb2.StartContainerResponse:
        info = await self._inspect(request.container_id)
        await self.tugd.call("container.start", {"id": info["id"]})
        return api_pb2.StartContainerResponse()

    @rpc
    async def StopContainer(
        self, request: api_pb2.StopContainerRequest, context: Context
    ) -> api_pb2.StopContainerResponse:
        """The stop signal, SIGKILL after ``timeout`` seconds. An unknown or removed container
        is success (kubelet retries stops)."""
        try:
            await self.tugd.call(
                "container.stop", {"id": request.container_id, "timeout": max(0, request.timeout)}
            )
        except NotFound:
            pass
        return api_pb2.StopContainerResponse()

    @rpc
    async def RemoveContainer(
        self, request: api_pb2.RemoveContainerRequest, context: Context
    ) -> api_pb2.RemoveContainerResponse:
        """Remove the container, killing it if it runs; an unknown one is success."""
        try:
            await self.tugd.call("container.delete", {"id": request.container_id, "force": True})
        except NotFound:
            pass
        return api_pb2.RemoveContainerResponse()

    async def _list(self, cid: str, pod_id: str) -> list[dict[str, Any]]:
        filters: dict[str, list[str]] = {}
        if pod_id:
            filters["pod"] = [pod_id]
        if cid:
            filters["id"] = [cid]
        params: dict[str, Any] = {"all": True, "filters": filters}
        entries: list[dict[str, Any]] = await self.tugd.call("container.list", params)
        return [e for e in entries if e.get("pod_id")]  # the CRI's containers only

    @rpc
    async def ListContainers(
        self, request: api_pb2.ListContainersRequest, context: Context
    ) -> api_pb2.ListContainersResponse:
        """The pods' containers; filters: id (or a prefix), state, pod, labels."""
        f = request.filter
        entries = await self._list(f.id, f.pod_sandbox_id)
        if f.HasField("state"):
            wanted = STATE_NAMES.get(f.state.state, set())
            entries = [e for e in entries if e.get("state") in wanted]
        entries = [e for e in entries if labels_match(e.get("labels") or {}, f.label_selector)]
        return api_pb2.ListContainersResponse(containers=[container_message(e) for e in entries])

    @rpc
    async def ContainerStatus(
        self, request: api_pb2.ContainerStatusRequest, context: Context
    ) -> api_pb2.ContainerStatusResponse:
        """State, reason, exit code, times in ns, image and image_ref, labels and annotations,
        mounts, log path; ``verbose`` adds tugd's ``container.inspect`` as ``info["info"]``."""
        info = await self._inspect(request.container_id)
        out = api_pb2.ContainerStatusResponse(status=status_message(info))
        if request.verbose:
            out.info["info"] = json.dumps(info, sort_keys=True)
        return out

    @rpc
    async def UpdateContainerResources(
        self, request: api_pb2.UpdateContainerResourcesRequest, context: Context
    ) -> api_pb2.UpdateContainerResourcesResponse:
        """Memory (and swap) limit, CPU shares, quota and period, cpusets, the OOM score
        adjustment and ``unified`` through ``container.update``: applied at once (``runc
        update``) and kept for a restart. Hugepage limits are dropped (no hugetlb cgroup here)."""
        info = await self._inspect(request.container_id)
        if request.HasField("linux"):
            params: dict[str, Any] = {"id": info["id"], **resource_params(request.linux)}
            await self.tugd.call("container.update", params)
        return api_pb2.UpdateContainerResourcesResponse()

    @rpc
    async def ReopenContainerLog(
        self, request: api_pb2.ReopenContainerLogRequest, context: Context
    ) -> api_pb2.ReopenContainerLogResponse:
        """The shim opens the log file again at its path (kubelet renamed it); an error, with no
        file made, unless the container runs."""
        info = await self._inspect(request.container_id)
        await self.tugd.call("container.reopen_log", {"id": info["id"]})
        return api_pb2.ReopenContainerLogResponse()

    @rpc
    async def ExecSync(self, request: api_pb2.ExecSyncRequest, context: Context) -> api_pb2.ExecSyncResponse:
        """Run ``cmd`` and answer its output and exit code; past ``timeout`` seconds (0: none) the
        process is killed and the answer is DEADLINE_EXCEEDED."""
        info = await self._inspect(request.container_id)
        params: dict[str, Any] = {"id": info["id"], "cmd": list(request.cmd)}
        if request.timeout > 0:
            params["timeout"] = request.timeout
        out = {"stdout": bytearray(), "stderr": bytearray()}
        async with self.tugd.stream("container.exec", params) as notes:
            async for note in notes:
                buf = out.get(str(note.get("stream")))
                if buf is not None and len(buf) < EXEC_OUTPUT_LIMIT:
                    buf += base64.b64decode(note.get("data") or "")[: EXEC_OUTPUT_LIMIT - len(buf)]
            result = await notes.result()
        if result.get("timed_out"):
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"command {list(request.cmd)!r} timed out after {request.timeout}s and was killed",
            )
        return api_pb2.ExecSyncResponse(
            stdout=bytes(out["stdout"]),
            stderr=bytes(out["stderr"]),
            exit_code=int(result.get("exit_code") or 0),
        )

    async def _stats(self, entries: list[dict[str, Any]]) -> list[api_pb2.ContainerStats]:
        if not entries:
            return []
        root = str((await self.tugd.call("system.info"))["root"])
        sized = await self.tugd.call("container.list", {"all": True, "size": True})
        size_of = {e["id"]: e.get("size_rw") for e in sized}
        out = []
        for e in entries:
            try:
                sample = (await self.tugd.call("container.stats", {"id": e["id"]}))[0]
            except NotFound:
                continue  # removed meanwhile
            out.append(stats_message(e, sample, size_of.get(e["id"]), root))
        return out

    @rpc
    async def ContainerStats(
        self, request: api_pb2.ContainerStatsRequest, context: Context
    ) -> api_pb2.ContainerStatsResponse:
        """CPU (cumulative ns), memory (working set, usage) and the writable layer's bytes."""
        info = await self._inspect(request.container_id)
        entries = await self._list(info["id"], "")
        if not entries:
            raise NotFound(f"no such container: {request.container_id}")
        return api_pb2.ContainerStatsResponse(stats=(await self._stats(entries))[0])

    @rpc
    async def ListContainerStats(
        self, request: api_pb2.ListContainerStatsRequest, context: Context
    ) -> api_pb2.ListContainerStatsResponse:
        """The stats of the running containers that pass the filter (id, pod, labels)."""
        f = request.filter
        entries = [
            e for e in await self._list(f.id, f.pod_sandbox_id) if e.get("state") in ("running", "paused")
        ]
        entries = [e for e in entries if labels_match(e.get("labels") or {}, f.label_selector)]
        return api_pb2.ListContainerStatsResponse(stats=await self._stats(entries))
