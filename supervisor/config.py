"""tugd's configuration: one frozen dataclass, validated once at start."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from tugwire import crilog, httpserve, shimapi

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    root: str = "/var/lib/tugboat"
    state: str = "/run/tugboat"
    socket: str = ""  # default: <state>/tugd.sock
    runtime: str = "runc"  # a name on PATH or a path; resolved to a path by validated()
    backend: str = "asyncio"
    shim_birth: str = "template"  # or "exec": a cold `tug-shim start` per container
    group: str = "tugboat"  # a group that may use the socket, if it exists
    log_max_size: int = crilog.DEFAULT_MAX_SIZE
    log_max_files: int = crilog.DEFAULT_MAX_FILES
    shim_timeout: float = 60.0  # a shim's birth (runc run) and its calls
    runtime_timeout: float = 60.0  # the deadline of every runtime (runc) call a shim makes
    metrics_address: str = "127.0.0.1:9323"  # HOST:PORT of GET /metrics; "" (or "off"): none
    insecure_registries: tuple[str, ...] = ()  # HOST[:PORT] spoken to over plain HTTP (auth.py)
    # Mirrors of docker.io tried in order before it (--registry-mirror, as dockerd's
    # registry-mirrors): SCHEME://HOST[:PORT] each (auth.check_mirror). Given as REGISTRY=URL
    # (auth.check_mirror_entry), a mirror of another registry: validated() moves those into
    # registry_mirror_map, (registry, url) pairs in order.
    registry_mirrors: tuple[str, ...] = ()
    registry_mirror_map: tuple[tuple[str, str], ...] = ()
    default_network: str = "bridge"  # of containers created without --network (supervisor/network)
    # Where subnets of networks without --subnet come from, in order: "base=CIDR,size=N" each
    # (--default-address-pool); empty: docker's default-address-pools (network/host.py).
    address_pools: tuple[str, ...] = ()
    # Pod networking (supervisor/pods): "builtin" (a Tugboat bridge network) or "cni" (the first
    # configuration of cni_conf_dir, its plugins from cni_bin_dirs: supervisor/pods/cni.py).
    pod_network: str = "builtin"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/opt/cni/bin", "/usr/lib/cni")
    rebuild_store: bool = False  # --rebuild-store: make tugboat.db again from disk (supervisor/rebuild.py)
    extra: dict[str, str] = field(default_factory=dict)

    def validated(self) -> Config:
        root = os.path.abspath(self.root)
        state = os.path.abspath(self.state)
        sock = os.path.abspath(self.socket or os.path.join(state, "tugd.sock"))
        runtime = self.runtime
        resolved = runtime if os.sep in runtime else shutil.which(runtime)
        if not resolved or not os.access(resolved, os.X_OK):
            raise ConfigError(f"runtime {runtime!r} not found (install the runc package)")
        if self.backend not in ("asyncio", "trio"):
            raise ConfigError(f"unknown backend {self.backend!r}")
        if not 0 < self.runtime_timeout <= 3600:
            raise ConfigError(
                f"--runtime-timeout must be within (0, 3600] seconds, not {self.runtime_timeout:g}"
            )
        if self.shim_birth not in ("template", "exec"):
            raise ConfigError(f"unknown shim birth {self.shim_birth!r}")
        metrics_address = "" if self.metrics_address.strip() in ("", "off") else self.metrics_address.strip()
        if metrics_address:
            try:
                httpserve.parse_address(metrics_address)
            except httpserve.AddressError as exc:
                raise ConfigError(f"--metrics-address: {exc}") from None
        from tugwire.errors import InvalidArgument

        from .auth import DOCKER_HUB, check_host, check_mirror_entry

        try:
            insecure = tuple(check_host(h) for h in self.insecure_registries)
        except InvalidArgument as exc:
            raise ConfigError(f"--insecure-registry: {exc.message}") from None
        try:
            entries = [check_mirror_entry(m) for m in self.registry_mirrors]
            entries += [check_mirror_entry(f"{r}={u}") for r, u in self.registry_mirror_map]
        except InvalidArgument as exc:
            raise ConfigError(f"--registry-mirror: {exc.message}") from None
        mirrors = tuple(dict.fromkeys(u for r, u in entries if r == DOCKER_HUB))
        mirror_map = tuple(dict.fromkeys((r, u) for r, u in entries if r != DOCKER_HUB))
        from .network.host import parse_pool

        try:
            pools = tuple(str(parse_pool(p)) for p in self.address_pools)
        except InvalidArgument as exc:
            raise ConfigError(f"--default-address-pool: {exc.message}") from None
        if self.pod_network not in ("builtin", "cni"):
            raise ConfigError(f"--pod-network must be builtin or cni, not {self.pod_network!r}")
        if not self.cni_bin_dirs:
            raise ConfigError("--cni-bin-dir: at least one directory")
        longest = os.path.join(state, "shims", "0" * 64, shimapi.SOCKET)
        for path in (sock, longest):
            if len(path.encode()) > SOCKET_PATH_MAX:
                raise ConfigError(
                    f"path too long for a Unix socket ({len(path)} > {SOCKET_PATH_MAX}): {path}; "
                    "choose a shorter --state"
                )
        return Config(
            root=root,
            state=state,
            socket=sock,
            runtime=os.path.abspath(resolved),
            backend=self.backend,
            shim_birth=self.shim_birth,
            group=self.group,
            log_max_size=self.log_max_size,
            log_max_files=self.log_max_files,
            # The shim's own deadline for runc must end before tugd stops waiting for the shim.
            shim_timeout=max(self.shim_timeout, self.runtime_timeout + 10),
            runtime_timeout=self.runtime_timeout,
            metrics_address=metrics_address,
            insecure_registries=insecure,
            registry_mirrors=mirrors,
            registry_mirror_map=mirror_map,
            default_network=self.default_network,
            address_pools=pools,
            pod_network=self.pod_network,
            cni_conf_dir=os.path.abspath(self.cni_conf_dir),
            cni_bin_dirs=tuple(os.path.abspath(d) for d in self.cni_bin_dirs),
            rebuild_store=self.rebuild_store,
            extra=dict(self.extra),
        )

    # Layout of the two roots.
    @property
    def runtime_root(self) -> str:
        return os.path.join(self.state, "runc")

    @property
    def shims_dir(self) -> str:
        return os.path.join(self.state, "shims")

    @property
    def template_socket(self) -> str:
        return os.path.join(self.state, "shim-template.sock")

    @property
    def db_path(self) -> str:
        return os.path.join(self.root, "tugboat.db")

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def blobs_dir(self) -> str:
        return os.path.join(self.root, "blobs", "sha256")

    @property
    def auth_path(self) -> str:
        """Registry credentials (``tug login``): mode 0600, see supervisor/auth.py."""
        return os.path.join(self.root, "auth.json")

    @property
    def snapshots_dir(self) -> str:
        return os.path.join(self.root, "snapshots")

    def shim_dir(self, cid: str) -> str:
        return os.path.join(self.shims_dir, cid)

    def container_dir(self, cid: str) -> str:
        return os.path.join(self.containers_dir, cid)
