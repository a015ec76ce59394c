"""tugd: argv -> Config -> anyio.run(main). Nothing else."""

from __future__ import annotations

import argparse
import logging
import sys

from tugwire import crilog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tugd", description="Tugboat's container supervisor daemon")
    parser.add_argument("--root", default="/var/lib/tugboat", help="data root (default %(default)s)")
    parser.add_argument("--state", default="/run/tugboat", help="state root (default %(default)s)")
    parser.add_argument("--socket", default="", help="API socket (default <state>/tugd.sock)")
    parser.add_argument("--runtime", default="runc", help="OCI runtime: runc, crun, or a path")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument(
        "--shim-birth",
        default="template",
        choices=["template", "exec"],
        help="fork shims from a pre-imported template (default) or exec each",
    )
    parser.add_argument(
        "--group",
        default=None,
        help="group allowed on the socket (default: tugboat, if it exists; '' for root only)",
    )
    parser.add_argument("--log-max-size", type=int, default=crilog.DEFAULT_MAX_SIZE)
    parser.add_argument("--log-max-files", type=int, default=crilog.DEFAULT_MAX_FILES)
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1:9323",
        help="HOST:PORT to serve Prometheus metrics on (GET /metrics), or 'off' (default %(default)s)",
    )
    parser.add_argument(
        "--runtime-timeout",
        type=float,
        default=60.0,
        help="deadline in seconds of every runtime (runc) call; a hung runc is killed (default %(default)s)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="a registry to reach over plain HTTP (repeatable; loopback ones always are)",
    )
    parser.add_argument(
        "--registry-mirror",
        action="append",
        default=[],
        metavar="[REGISTRY=]URL",
        help="a mirror of docker.io (http://HOST[:PORT] or https://...), or with REGISTRY= of "
        "that registry (registry.k8s.io=http://127.0.0.1:5000), tried before it; repeatable, "
        "in order (as dockerd's registry-mirrors, containerd's hosts.toml)",
    )
    parser.add_argument(
        "--default-network",
        default="bridge",
        help="network of containers created without --network: bridge, none, host or a name "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--default-address-pool",
        action="append",
        default=[],
        metavar="base=CIDR,size=N",
        help="where subnets of networks without --subnet come from, in order (repeatable; default "
        "docker's: 172.17-31.0.0/16, then 192.168.0.0/16 in /20s)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove this root's bridges, nft table and network namespaces from the host, then "
        "exit (refused while containers exist or its tugd runs)",
    )
    parser.add_argument(
        "--rebuild-store",
        action="store_true",
        help="set tugboat.db aside (renamed with the time) and rebuild it from what is on disk, then "
        "start as usual; the event history is lost (docs/design.md, 'Store and rebuild')",
    )
    parser.add_argument(
        "--pod-network",
        choices=["builtin", "cni"],
        default="builtin",
        help="pod networking: a Tugboat bridge network (builtin), or CNI plugins (default %(default)s)",
    )
    parser.add_argument(
        "--cni-conf-dir",
        default="/etc/cni/net.d",
        help="CNI mode: where the network configuration is, the first *.conflist, *.conf or *.json "
        "in lexical order (default %(default)s)",
    )
    parser.add_argument(
        "--cni-bin-dir",
        action="append",
        default=[],
        help="CNI mode: a directory of plugins, searched in order (repeatable; default /opt/cni/bin, "
        "then /usr/lib/cni)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s tugd %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import anyio

    from .app import AlreadyRunning, ListenError
    from .app import main as app_main
    from .config import Config, ConfigError
    from .storecheck import StartupError
    from .systemd import ActivationError

    if args.group:  # named on the command line: it must exist (a typo would lock its members out)
        import grp

        try:
            grp.getgrnam(args.group)
        except KeyError:
            print(f"tugd: --group {args.group}: no such group", file=sys.stderr)
            return 2
    try:
        cfg = Config(
            root=args.root,
            state=args.state,
            socket=args.socket,
            runtime=args.runtime,
            backend=args.backend,
            shim_birth=args.shim_birth,
            group="tugboat" if args.group is None else args.group,
            log_max_size=args.log_max_size,
            log_max_files=args.log_max_files,
            metrics_address=args.metrics_address,
            default_network=args.default_network,
            address_pools=tuple(args.default_address_pool),
            insecure_registries=tuple(args.insecure_registry),
            registry_mirrors=tuple(args.registry_mirror),
            runtime_timeout=args.runtime_timeout,
            rebuild_store=args.rebuild_store,
            pod_network=args.pod_network,
            cni_conf_dir=args.cni_conf_dir,
            cni_bin_dirs=tuple(args.cni_bin_dir) or ("/opt/cni/bin", "/usr/lib/cni"),
        ).validated()
    except ConfigError as exc:
        print(f"tugd: {exc}", file=sys.stderr)
        return 2
    if args.cleanup:
        from .network.host import cleanup

        return cleanup(cfg)
    from . import failpoints

    try:
        failpoints.arm_from_environment()  # TUGD_FAILPOINTS: tests only (docs/reliability.md)
    except failpoints.FailpointError as exc:
        print(f"tugd: {exc}", file=sys.stderr)
        return 2
    from tugwire.errors import InvalidArgument

    # Every failure to start is one line and exit status 2 (supervisor/storecheck.py).
    startup = (AlreadyRunning, ActivationError, ListenError, StartupError)
    try:
        anyio.run(app_main, cfg, backend=cfg.backend)
    except startup as exc:
        print(f"tugd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        # What fails inside the task groups: a start-up error, or a setting that only the store
        # can check (``--default-network NAME`` names a network that does not exist).
        leaves = _leaves(group)
        if not leaves or not all(isinstance(e, (InvalidArgument, *startup)) for e in leaves):
            raise
        for leaf in leaves[:1]:  # one line: the first cause
            print(f"tugd: {leaf.message if isinstance(leaf, InvalidArgument) else leaf}", file=sys.stderr)
        return 2
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    sys.exit(main())
