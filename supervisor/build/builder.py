"""The step executor of ``tug build`` and its cache.

A build keeps its state -- the base image, the layers made so far, the image config, the history,
the ARGs in scope -- and carries out one instruction at a time:

- metadata steps (ENV, WORKDIR, USER, CMD, ENTRYPOINT, LABEL, EXPOSE, STOPSIGNAL, SHELL,
  HEALTHCHECK) change the config and add a history entry with ``empty_layer: true``;
- RUN runs in a Tugboat container (:mod:`.runner`) whose root is an overlay of the base image's
  snapshots and the layers made so far, under a fresh upper dir; the upper dir, with overlayfs'
  whiteouts, becomes the step's layer (:mod:`.layers`), unless the step changed nothing;
- COPY and ADD copy from the build context (read by path: tugd runs on the client's host) into a
  fresh directory that becomes the step's layer.

Every step is looked up in the build cache first (table ``build_cache``): the key is a hash of the
state before the step (the base image, the diff ids of the layers so far, the config), the
instruction after substitution, and for COPY/ADD a hash of the content it copies (paths, modes,
owners, bytes), for RUN the build args in scope. The value is the step's result (layer
descriptor, config, history entry), so a rebuild with nothing changed runs no RUN and copies
nothing: each step is one SQLite lookup, then one ``commit_image``.

Everything a build makes on disk lives under ``<root>/builds/<id>/`` (layer dirs and tars, the
overlay work dirs) and goes when the build ends, however it ends; a tugd that dies mid-build
removes leftovers at its next start.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import errors, fsutil
from tugwire.errors import InvalidArgument, NotFound, RuntimeFailed, TugError
from tugwire.timefmt import rfc3339

from .. import spec
from ..config import Config
from ..images import Images, chain_ids
from ..images.manifests import host_platform, parse_platform
from ..shims import ShimLauncher
from ..store import ImageRecord, Store
from ..streams import Feed, run_feed
from . import layers, metadata, runner
from .context import BuildContext
from .dockerfile import (
    NOT_TRIGGERS,
    Dockerfile,
    DockerfileError,
    Instruction,
    expand,
    expand_words,
    parse,
    parse_trigger,
    split_stages,
)
from .dockerignore import DockerIgnore
from .prepare import prepare_builds
from .stages import mounted_rootfs

if TYPE_CHECKING:
    from ..registry import RegistryService

MAX_DOCKERFILE = 1 << 20
# Build args docker accepts without an ARG instruction (proxies): never a warning.
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")
PREDEFINED_ARGS = frozenset(_PROXIES) | frozenset(n.lower() for n in _PROXIES)

Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class BuildEvent:
    """One thing a build reports: ``step`` (``{step, total, instruction}``), ``status``
    (``{message}``) or ``output`` (``{stream, data}``, the data base64)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class BuildResult:
    """A built image: its id, the tag given (if any), the steps run and how many were cached."""

    id: str
    ref: str | None
    steps: int
    cached: int


@dataclass
class Layer:
    """A layer made (or taken from the cache) in this build."""

    diff_id: str
    digest: str  # the uncompressed tar in the content store: the same bytes as the diff
    size: int
    dir: str | None = None  # the layer in overlayfs' format, once needed as a lower dir


@dataclass
class State:
    base: ImageRecord | None = None
    base_lowers: list[str] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    args: dict[str, str | None] = field(default_factory=dict)  # ARGs declared after FROM
    cmd_set: bool = False

    def identity(self) -> str:
        """What the next step's cache key starts from: the parent, as docker keys by it."""
        body = {
            "base": self.base.id if self.base else "scratch",
            "layers": [layer.diff_id for layer in self.layers],
            "config": self.config,
        }
        return _sha(json.dumps(body, sort_keys=True))

    def variables(self) -> dict[str, str]:
        """What ``$VAR`` means in an instruction: the ARGs with a value, then the ENV (which wins)."""
        out = {k: v for k, v in self.args.items() if v is not None}
        out.update(env_dict(self.config.get("Env") or []))
        return out


@dataclass(frozen=True)
class Options:
    context: str
    dockerfile: str
    tag: str | None
    build_args: dict[str, str]
    no_cache: bool
    network: str = "none"
    target: str | None = None  # the stage (``AS`` name) to build and stop at


def env_dict(env: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reworded(exc: TugError, message: str) -> TugError:
    """The same kind of error (its class in the closed set) with a message that says more."""
    cls = next(c for c in type(exc).__mro__ if c in errors.ALL)
    return cls(message, **exc.details)


class BuildFailed(RuntimeFailed):
    """A RUN step exited non-zero: ``data.step``, ``data.instruction``, ``data.exit_code``."""


class Builder:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        images: Images,
        launcher: ShimLauncher,
        registry: RegistryService | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.images = images
        self.launcher = launcher
        self.registry = registry  # FROM pulls an image that is not here through it
        self.dir = prepare_builds(cfg, store)  # no build runs before the builder exists

    # ------------------------------------------------------------------------------ the verb

    def options(
        self,
        *,
        context: str,
        dockerfile: str | None = None,
        tag: str | None = None,
        build_args: dict[str, str] | None = None,
        no_cache: bool = False,
        network: str | None = None,
        target: str | None = None,
    ) -> Options:
        """A build's options, checked (InvalidArgument): ``context`` an absolute path to a
        directory, ``dockerfile`` relative to it (default ``Dockerfile``), ``tag`` a valid
        reference, build arg names identifiers, ``network`` ``none`` (default) or ``host``,
        ``target`` the name of a stage (checked against the Dockerfile when the build starts)."""
        if not os.path.isabs(context):
            raise InvalidArgument(f"the build context must be an absolute path: {context!r}", field="context")
        if not os.path.isdir(context):
            raise InvalidArgument(f"the build context {context} is not a directory", field="context")
        dockerfile = os.path.normpath(os.path.join(context, dockerfile or "Dockerfile"))
        if tag is not None:
            _check_tag(tag)
        build_args = dict(build_args or {})
        for key in build_args:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", key):
                raise InvalidArgument(f"invalid build arg name {key!r}", field="build_args")
        network = network or "none"
        if network not in ("none", "host"):
            raise InvalidArgument(
                f"a build's RUN steps run with network none or host, not {network!r}", field="network"
            )
        if target is not None and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.-]*", target):
            raise InvalidArgument(f"invalid build target {target!r}: want a stage name", field="target")
        return Options(context, dockerfile, tag, build_args, no_cache, network, target or None)

    def build(self, opts: Options) -> contextlib.AbstractAsyncContextManager[Feed[BuildEvent, BuildResult]]:
        """Parse the Dockerfile, run every step, commit and tag, in the ``async with``: iterating
        the :class:`~supervisor.streams.Feed` gives its :class:`BuildEvent` items, then ``result``
        its :class:`BuildResult`. Cancelled (leaving early, or the caller cancelled), the RUN
        container is killed and removed and nothing is tagged."""

        async def op(send: Callable[[BuildEvent], Awaitable[None]]) -> BuildResult:
            async def emit(method: str, params: dict[str, Any]) -> None:
                await send(BuildEvent(method.rsplit(".", 1)[-1], params))

            out = await self.run(opts, emit)
            return BuildResult(str(out["id"]), out["ref"], int(out["steps"]), int(out["cached"]))

        return run_feed(op)

    async def run(self, opts: Options, emit: Emit) -> dict[str, Any]:
        try:
            with open(opts.dockerfile, "rb") as f:
                raw = f.read(MAX_DOCKERFILE + 1)
        except FileNotFoundError:
            raise NotFound(f"no Dockerfile at {opts.dockerfile}", field="dockerfile") from None
        except IsADirectoryError:
            raise InvalidArgument(f"{opts.dockerfile} is a directory", field="dockerfile") from None
        if len(raw) > MAX_DOCKERFILE:
            raise InvalidArgument("the Dockerfile is larger than 1 MiB", field="dockerfile")
        dockerfile = parse(raw.decode("utf-8-sig", errors="replace"))  # a BOM is no instruction
        ignore = DockerIgnore.load(opts.context)
        work = os.path.join(self.dir, secrets.token_hex(8))
        os.makedirs(work, mode=0o700)
        try:
            return await _Build(
                self, opts, dockerfile.instructions, dockerfile.escape, ignore, work, emit
            ).run()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(fsutil.remove_tree, work)

    async def pull(self, ref: str) -> ImageRecord:
        """Pull ``ref`` from its registry, as ``image.pull`` does (the same credentials and
        transport policy), publishing the ``pull`` event."""
        if self.registry is None:
            raise NotFound(f"image {ref} not found locally; run tug pull {ref} first", field="dockerfile")
        from ..registry import PullRequest

        async with self.registry.pull(PullRequest(ref)) as transfer:
            async for _ in transfer:
                pass  # a build shows no layer progress
        return transfer.result.record

    # -------------------------------------------------------------------------------- cache

    def cache_get(self, key: str) -> dict[str, Any] | None:
        row = self.store.db.execute("SELECT result FROM build_cache WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        result: dict[str, Any] = json.loads(row[0])
        layer = result.get("layer")
        if layer and not os.path.exists(self.images.blobs.path(layer["digest"])):
            return None  # its blob was collected since: a miss
        return result

    def cache_put(self, key: str, result: dict[str, Any]) -> None:
        self.store.db.execute(
            "INSERT OR REPLACE INTO build_cache (key, result, created) VALUES (?,?,?)",
            (key, json.dumps(result, sort_keys=True), rfc3339()),
        )


def _check_tag(tag: str) -> None:
    try:
        from tugwire import imageref

        imageref.parse(tag)
    except ImportError:  # pragma: no cover - before the reference module exists
        from tugwire import names

        names.parse_ref(tag)
    except InvalidArgument as exc:
        raise InvalidArgument(exc.message, field="tag") from None


class _Build:
    """One build in progress."""

    def __init__(
        self,
        builder: Builder,
        opts: Options,
        instructions: list[Instruction],
        escape: str,
        ignore: DockerIgnore,
        work: str,
        emit: Emit,
    ) -> None:
        self.b = builder
        self.opts = opts
        self.instructions = instructions
        self.escape = escape
        self.ignore = ignore
        self.ctx = BuildContext(opts.context, ignore)
        self.work = work
        self.emit = emit
        self.state = State()
        self.meta, self.stages = split_stages(Dockerfile(instructions, escape))
        self.done: list[State] = []  # the stages built so far, by index
        self.stage_index = -1  # the stage being built
        self.meta_args: dict[str, str | None] = {}  # ARGs before FROM
        self.used_args: set[str] = set()
        self.seen_from = False
        self.cached = 0
        self.counter = 0
        self.lease: Any = None  # the image store's GC lease, held while the build runs

    def step_id(self) -> str:
        """The ` ---> ID` docker's classic builder prints after a step: the base image's after
        FROM, else the state's identity (tugd commits no image per step: an id to compare
        builds by, not one to run; the last step's is the image's)."""
        st = self.state
        if st.base is not None and not st.history:
            return st.base.id.removeprefix("sha256:")[:12]
        return st.identity()[:12]

    async def status(self, message: str) -> None:
        await self.emit("image.build.status", {"message": message})

    def _path(self, prefix: str) -> str:
        self.counter += 1
        return os.path.join(self.work, f"{prefix}{self.counter}")

    def target_index(self) -> int:
        """The last stage to build: the one ``--target`` names, else the last one."""
        if not self.opts.target:
            return len(self.stages) - 1
        for stage in self.stages:
            if stage.name == self.opts.target.lower():
                return stage.index
        raise InvalidArgument(
            f"failed to reach build target {self.opts.target} in Dockerfile", field="target"
        )

    async def run(self) -> dict[str, Any]:
        # Every stage up to the target is built, in order (the classic builder's rule); the
        # last one built is the image.
        todo = self.stages[: self.target_index() + 1]
        steps = [*self.meta, *(inst for stage in todo for inst in stage.instructions)]
        total = len(steps)
        # A lease keeps the image store's garbage collection off the blobs and snapshots this
        # build uses (its base images', and the layers it makes or takes from the cache).
        with self.b.images.leases.hold() as self.lease:
            n = 0
            for inst in self.meta:
                n += 1
                await self.emit("image.build.step", {"step": n, "total": total, "instruction": str(inst)})
                await self.step(n, inst)
            for stage in todo:
                for inst in stage.instructions:
                    n += 1
                    await self.emit("image.build.step", {"step": n, "total": total, "instruction": str(inst)})
                    await self.step(n, inst)
                    if n < total:
                        await self.status(f" ---> {self.step_id()}")
                self.done.append(self.state)
            unused = sorted(set(self.opts.build_args) - self.used_args - PREDEFINED_ARGS)
            if unused:
                await self.status(f"[Warning] One or more build-args {unused} were not consumed")
            rec = await self.commit()
        short = rec.id.removeprefix("sha256:")[:12]
        await self.status(f" ---> {short}")
        await self.status(f"Successfully built {short}")
        if self.opts.tag:
            await self.status(f"Successfully tagged {self.opts.tag}")
        return {"id": rec.id, "ref": self.opts.tag, "steps": total, "cached": self.cached}

    # --------------------------------------------------------------------------------- steps

    async def step(self, n: int, inst: Instruction) -> None:
        kw = inst.keyword
        if kw == "ARG":
            self.arg(inst)
            return
        if kw == "FROM":
            await self.from_(n, inst)
            return
        if not self.seen_from:
            raise DockerfileError(f"{kw} before FROM", inst.line)
        if kw == "COPY" and "from" in inst.flags:
            # COPY --from: the sources are read from another stage's root, or an image's, as
            # from a build context (mounted read-only for the step).
            value = expand(inst.flags["from"], self.state.variables(), self.escape)
            lowers = await self.from_lowers(inst, value)
            async with mounted_rootfs(lowers, self._path("from-")) as root:
                await self.step_in(n, inst, BuildContext(root, DockerIgnore([]), rootfs=True))
            return
        await self.step_in(n, inst, self.ctx)

    async def step_in(self, n: int, inst: Instruction, source: BuildContext) -> None:
        """A step other than ARG and FROM; COPY and ADD read from ``source``."""
        kw = inst.keyword
        st = self.state
        variables = st.variables()
        extra: Any = None
        text = str(inst)
        sources: list[tuple[str, str]] = []
        if kw in ("COPY", "ADD"):
            words = (
                inst.exec_form
                if inst.exec_form is not None
                else expand_words(inst.rest, variables, self.escape)
            )
            if inst.exec_form is not None:
                words = [expand(w, variables, self.escape) for w in words]
            if len(words) < 2:
                raise DockerfileError(f"{kw} requires at least two arguments: SOURCE... DEST", inst.line)
            flags = {k: expand(v, variables, self.escape) for k, v in inst.flags.items()}
            sources = source.sources(inst, words[:-1])
            extra = {
                "content": await anyio.to_thread.run_sync(source.content_hash, sources),
                "flags": flags,
            }
            text = f"{kw} {json.dumps(flags, sort_keys=True)} {json.dumps(words)}"
        elif kw == "RUN":
            in_scope = {k: v for k, v in st.args.items() if v is not None}
            self.used_args.update(st.args)
            extra = {"args": in_scope}
        else:
            extra = (
                {"vars": variables}
                if kw in ("ENV", "LABEL", "WORKDIR", "USER", "EXPOSE", "STOPSIGNAL", "VOLUME")
                else None
            )
        key = _sha(json.dumps([st.identity(), text, extra], sort_keys=True))
        if not self.opts.no_cache:
            hit = self.b.cache_get(key)
            if hit is not None:
                self.apply(hit)
                self.cached += 1
                await self.status(" ---> Using cache")
                return
        if kw == "RUN":
            result = await self.run_step(n, inst)
        elif kw in ("COPY", "ADD"):
            result = await self.copy_step(inst, words[-1], sources, flags, source)
        else:
            result = self.metadata_step(inst, variables)
        self.b.cache_put(key, {k: v for k, v in result.items() if k != "_dir"})
        self.apply(result)

    def apply(self, result: dict[str, Any]) -> None:
        """Take a step's result (fresh or from the cache) into the state."""
        st = self.state
        st.config = copy.deepcopy(result["config"])
        st.cmd_set = bool(result.get("cmd_set", st.cmd_set))
        st.history.append(dict(result["history"]))
        layer = result.get("layer")
        if layer:
            self.lease.add(layer["digest"])
            st.layers.append(Layer(layer["diff_id"], layer["digest"], int(layer["size"]), result.get("_dir")))

    def result(
        self, inst: Instruction, config: dict[str, Any], layer: dict[str, Any] | None
    ) -> dict[str, Any]:
        history: dict[str, Any] = {"created": rfc3339(), "created_by": str(inst)}
        if layer is None:
            history["empty_layer"] = True
        return {"config": config, "history": history, "layer": layer, "cmd_set": self.state.cmd_set}

    def arg(self, inst: Instruction) -> None:
        scope = self.state.args if self.seen_from else self.meta_args
        variables = (
            self.state.variables()
            if self.seen_from
            else {k: v for k, v in self.meta_args.items() if v is not None}
        )
        for word in expand_words(inst.rest, variables, self.escape):
            name, eq, default = word.partition("=")
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise DockerfileError(f"invalid ARG name {name!r}", inst.line)
            if name in self.opts.build_args:
                value: str | None = self.opts.build_args[name]
                self.used_args.add(name)
            elif eq:
                value = default
            elif self.seen_from:
                value = self.meta_args.get(name)  # a global ARG brought into the stage
            else:
                value = None
            scope[name] = value

    async def from_(self, n: int, inst: Instruction) -> None:
        """A stage begins: from an image (pulled if not here), ``scratch``, or an earlier
        stage by its name; then the base's ONBUILD triggers run, as docker does."""
        self.seen_from = True
        self.stage_index += 1
        variables = {k: v for k, v in self.meta_args.items() if v is not None}
        words = expand_words(inst.rest, variables, self.escape)
        if len(words) == 3 and words[1].lower() == "as":
            words = words[:1]
        if len(words) != 1:
            raise DockerfileError("FROM takes an image and optionally AS NAME", inst.line)
        ref = words[0]
        if inst.flags.get("platform"):
            self.check_platform(inst, expand(inst.flags["platform"], variables, self.escape))
        self.state = st = State()
        earlier = self.earlier_stage(ref)
        if earlier is not None:
            st.base, st.base_lowers = earlier.base, list(earlier.base_lowers)
            st.layers = list(earlier.layers)
            st.config = copy.deepcopy(earlier.config)
            st.history = [dict(h) for h in earlier.history]
            st.cmd_set = earlier.cmd_set
        elif ref == "scratch":
            st.config = {}
            return
        else:
            resolved = await self.image(ref, "")
            st.base = resolved.record
            st.config = copy.deepcopy(resolved.config)
            st.base_lowers = await self.unpacked(resolved.record)
        triggers = list(st.config.get("OnBuild") or [])
        if triggers:
            st.config["OnBuild"] = None  # the triggers run here and are not inherited
            await self.status(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}")
            for text in triggers:
                trigger = parse_trigger(str(text), inst.line)
                if trigger.keyword in NOT_TRIGGERS:
                    raise DockerfileError(f"{trigger.keyword} isn't allowed as an ONBUILD trigger", inst.line)
                await self.step(n, trigger)

    @staticmethod
    def check_platform(inst: Instruction, value: str) -> None:
        """``FROM --platform=``: empty (``$BUILDPLATFORM`` is not set by the classic builder)
        or the host's; a build for another platform is refused (no emulation here)."""
        if not value:
            return
        try:
            wanted = parse_platform(value)
        except InvalidArgument as exc:
            raise DockerfileError(f"FROM --platform={value}: {exc.message}", inst.line) from None
        if wanted[:2] != parse_platform(host_platform())[:2]:
            raise DockerfileError(
                f"FROM --platform={value}: only the host's platform ({host_platform()}) can be built",
                inst.line,
            )

    def earlier_stage(self, name: str) -> State | None:
        """The state of a stage built before this one and named ``name`` (its ``AS``)."""
        for stage in self.stages[: self.stage_index]:
            if stage.name is not None and stage.name == name.lower():
                return self.done[stage.index]
        return None

    async def image(self, ref: str, what: str) -> Any:
        """The image ``ref`` (a ResolvedImage), pulled when it is not here."""
        try:
            return self.b.images.resolve(ref)
        except NotFound:
            await self.status(f"Pulling {ref} (not found locally)")
            try:
                await self.b.pull(ref)
                return self.b.images.resolve(ref)
            except TugError as exc:
                raise reworded(
                    exc, f"{what}image {ref} not found locally, and pulling it failed: {exc.message}"
                ) from exc

    async def unpacked(self, rec: ImageRecord) -> list[str]:
        """The snapshot dirs of an image (top first), held by this build's lease."""
        for desc in rec.manifest.get("layers", []):
            self.lease.add(desc["digest"])
        for chain in chain_ids(rec.config.get("rootfs", {}).get("diff_ids", [])):
            self.lease.add(chain)
        return await self.b.images.ensure_unpacked(rec)

    async def from_lowers(self, inst: Instruction, value: str) -> list[str]:
        """The root of ``COPY --from=value`` as lower dirs (top first): an earlier stage by its
        number or name, else an image (pulled if not here)."""
        if value.isdigit():
            index = int(value)
            if index >= self.stage_index:
                raise DockerfileError(
                    f"COPY --from={value}: stage {index} is not built before this one "
                    f"(this is stage {self.stage_index}; a stage copies from earlier ones only)",
                    inst.line,
                )
            return await self.lowers(self.done[index])
        earlier = self.earlier_stage(value)
        if earlier is not None:
            return await self.lowers(earlier)
        if any(stage.name == value.lower() for stage in self.stages[self.stage_index :]):
            raise DockerfileError(
                f"COPY --from={value}: the stage {value} is not built before this one "
                "(a stage copies from earlier ones only)",
                inst.line,
            )
        try:
            resolved = await self.image(value, f"COPY --from={value}: ")
        except TugError as exc:
            if exc.message.startswith("COPY --from"):
                raise
            raise reworded(exc, f"COPY --from={value}: {exc.message}") from exc
        return await self.unpacked(resolved.record)

    def metadata_step(self, inst: Instruction, variables: dict[str, str]) -> dict[str, Any]:
        config, self.state.cmd_set = metadata.apply(
            inst, self.state.config, variables, self.escape, cmd_set=self.state.cmd_set
        )
        return self.result(inst, config, None)

    def shell(self) -> list[str]:
        """What runs the shell form of RUN, CMD and ENTRYPOINT: SHELL's, else ``/bin/sh -c``."""
        return metadata.shell(self.state.config)

    # -------------------------------------------------------------------------------- lowers

    async def lowers(self, state: State | None = None) -> list[str]:
        """The lower dirs for a step (of this stage, or of ``state``'s), top first: the layers
        made (extracted from their blobs when they came from the cache), then the base image's
        snapshots."""
        st = state or self.state
        out: list[str] = []
        for layer in st.layers:
            if layer.dir is None:
                target = self._path("cached-")
                os.mkdir(target, 0o755)
                await anyio.to_thread.run_sync(
                    layers.tar_to_dir, self.b.images.blobs.path(layer.digest), target
                )
                layer.dir = target
            out.append(layer.dir)
        return [*reversed(out), *st.base_lowers]

    async def commit_layer(self, directory: str) -> dict[str, Any] | None:
        """The layer of ``directory`` into the content store; None if it holds nothing."""
        if layers.is_empty_dir(directory):
            return None
        tar_path = self._path("layer-") + ".tar"
        diff_id, size, _count = await anyio.to_thread.run_sync(layers.dir_to_tar, directory, tar_path)
        with open(tar_path, "rb") as f:
            digest, _size = await anyio.to_thread.run_sync(self.b.images.blobs.put_stream, f)
        self.lease.add(digest)
        os.unlink(tar_path)
        assert digest == diff_id
        return {"diff_id": diff_id, "digest": digest, "size": size}

    # ----------------------------------------------------------------------------------- RUN

    async def run_step(self, n: int, inst: Instruction) -> dict[str, Any]:
        st = self.state
        args = inst.exec_form if inst.exec_form is not None else [*self.shell(), inst.rest]
        if not args:
            raise DockerfileError("RUN requires a command", inst.line)
        env = list(st.config.get("Env") or [])
        names = {e.partition("=")[0] for e in env}
        env += [f"{k}={v}" for k, v in st.args.items() if v is not None and k not in names]
        lower = await self.lowers()
        if not lower:
            empty = self._path("empty-")
            os.mkdir(empty, 0o755)
            lower = [empty]
        upper = self._path("upper-")
        work = self._path("work-")
        os.mkdir(upper, 0o755)
        os.mkdir(work, 0o700)

        async def output(stream: str, data: bytes) -> None:
            await self.emit("image.build.output", {"stream": stream, "data": base64.b64encode(data).decode()})

        await self.status(" ---> Running in a build container")
        try:
            code = await runner.run_step(
                self.b.cfg,
                self.b.launcher,
                args=list(args),
                env=env,
                workdir=st.config.get("WorkingDir") or "/",
                user=st.config.get("User") or "",
                lower=lower,
                upper=upper,
                work=work,
                on_output=output,
                label=self.opts.tag or "",
                network=self.opts.network,
            )
        except TugError as exc:
            raise reworded(exc, f"step {n} ({inst}): {exc.message}") from exc
        finally:
            fsutil.remove_tree(work)
        if code != 0:
            shown = json.dumps(list(args)) if inst.exec_form is not None else " ".join(args)
            raise BuildFailed(
                f"step {n}: the command '{shown}' returned a non-zero code: {code}",
                verb="RUN",
                status=code,
                step=n,
                instruction=str(inst),
                exit_code=code,
            )
        layer = await self.commit_layer(upper)
        result = self.result(inst, copy.deepcopy(st.config), layer)
        if layer is not None:
            result["_dir"] = upper
        else:
            fsutil.remove_tree(upper)
        return result

    # ------------------------------------------------------------------------------ COPY/ADD

    async def copy_step(
        self,
        inst: Instruction,
        dest: str,
        sources: list[tuple[str, str]],
        flags: dict[str, str],
        source: BuildContext,
    ) -> dict[str, Any]:
        st = self.state
        lowers = await self.lowers()
        uid, gid = self.chown(inst, flags.get("chown"), lowers)
        chmod: int | None = None
        if "chmod" in flags:
            if not re.fullmatch(r"[0-7]{3,4}", flags["chmod"]):
                raise DockerfileError(
                    f"invalid --chmod={flags['chmod']}: want an octal mode like 755", inst.line
                )
            chmod = int(flags["chmod"], 8)
        is_dir_dest = dest.endswith("/") or dest in (".", "")
        dest = os.path.normpath(os.path.join(st.config.get("WorkingDir") or "/", dest))
        if len(sources) > 1 and not is_dir_dest:
            raise DockerfileError(
                f"when using {inst.keyword} with more than one source file, the destination must be a "
                "directory and end with a /",
                inst.line,
            )
        layer_dir = self._path("copy-")
        os.mkdir(layer_dir, 0o755)
        await anyio.to_thread.run_sync(
            source.copy_all, inst, sources, dest, is_dir_dest, layer_dir, lowers, uid, gid, chmod
        )
        layer = await self.commit_layer(layer_dir)
        result = self.result(inst, copy.deepcopy(st.config), layer)
        result["_dir"] = layer_dir
        return result

    def chown(self, inst: Instruction, value: str | None, lowers: list[str]) -> tuple[int, int]:
        """``--chown=user[:group]``: names from the image's /etc/passwd and /etc/group; without a
        group, the gid is the uid (docker's rule)."""
        if not value:
            return 0, 0
        user, sep, group = value.partition(":")
        try:
            uid, _gid, _ = spec.resolve_user(user, lowers)
            gid = uid
            if sep and group:
                _u, gid, _ = spec.resolve_user(f"0:{group}", lowers)
        except InvalidArgument as exc:
            raise DockerfileError(f"--chown={value}: {exc.message}", inst.line) from None
        return uid, gid

    # -------------------------------------------------------------------------------- commit

    async def commit(self) -> ImageRecord:
        """The image: the base's layers and these, the config, the base's history and these
        steps' (``empty_layer`` for those without a layer)."""
        st = self.state
        # Every step from the cache gives the same state and history as the build that made
        # them: that build's image, if it is still here, is this one (docker's rule too). Then
        # tagging it is all there is to do, with no layer to store or snapshot again.
        key = _sha(json.dumps(["image", st.identity(), st.history], sort_keys=True))
        known = self.b.cache_get(key)
        if known is not None and (rec := self.b.store.get_image(str(known.get("id")))) is not None:
            if self.opts.tag:
                rec = self.b.images.tag(rec.id, self.opts.tag)
            return rec
        tars = [self.b.images.blobs.path(layer.digest) for layer in st.layers]
        rec = await self.b.images.commit_image(
            st.base, tars, copy.deepcopy(st.config), self.opts.tag, [dict(h) for h in st.history]
        )
        self.b.cache_put(key, {"id": rec.id})
        return rec
