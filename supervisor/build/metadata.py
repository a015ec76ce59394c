"""The metadata instructions of a build (ENV, LABEL, WORKDIR, USER, SHELL, HEALTHCHECK, CMD,
ENTRYPOINT, EXPOSE, STOPSIGNAL, VOLUME, ONBUILD): each a change of the image config, recorded
as docker records it. Pure functions: the builder keeps the state and the cache."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

from tugwire.errors import InvalidArgument

from .dockerfile import DockerfileError, Instruction, expand, expand_words, healthcheck, key_values

PORT = re.compile(r"^\d{1,5}(?:-\d{1,5})?(?:/(?:tcp|udp|sctp))?$")


def shell(config: dict[str, Any]) -> list[str]:
    """What runs the shell form of RUN, CMD and ENTRYPOINT: SHELL's, else ``/bin/sh -c``."""
    return list(config.get("Shell") or ["/bin/sh", "-c"])


def apply(
    inst: Instruction, config: dict[str, Any], variables: dict[str, str], escape: str, *, cmd_set: bool
) -> tuple[dict[str, Any], bool]:
    """The image config after the metadata instruction ``inst`` (a copy), and whether CMD has
    been set in this build: ``cmd_set`` before it."""
    config = copy.deepcopy(config)
    kw = inst.keyword
    if kw == "ENV":
        env = list(config.get("Env") or [])
        for key, value in key_values(inst, variables, escape):
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
        config["Env"] = env
    elif kw == "LABEL":
        labels = dict(config.get("Labels") or {})
        labels.update(key_values(inst, variables, escape))
        config["Labels"] = labels
    elif kw == "WORKDIR":
        path = expand(inst.rest, variables, escape)
        config["WorkingDir"] = os.path.normpath(os.path.join(config.get("WorkingDir") or "/", path))
    elif kw == "USER":
        user = expand(inst.rest, variables, escape)
        if not user:
            raise DockerfileError("USER requires an argument", inst.line)
        config["User"] = user
    elif kw == "SHELL":
        config["Shell"] = list(inst.exec_form or [])
    elif kw == "VOLUME":
        paths = (
            [expand(w, variables, escape) for w in inst.exec_form]
            if inst.exec_form is not None
            else expand_words(inst.rest, variables, escape)
        )
        if not paths or any(not path.strip() for path in paths):
            raise DockerfileError("VOLUME specified can not be an empty string", inst.line)
        volumes = dict(config.get("Volumes") or {})
        volumes.update({path: {} for path in paths})
        config["Volumes"] = volumes
    elif kw == "ONBUILD":
        config["OnBuild"] = [*(config.get("OnBuild") or []), inst.rest]
    elif kw == "HEALTHCHECK":
        config["Healthcheck"] = healthcheck(inst)
    elif kw in ("CMD", "ENTRYPOINT"):
        command = inst.exec_form if inst.exec_form is not None else [*shell(config), inst.rest]
        if inst.exec_form is None and not inst.rest:
            command = []
        if kw == "CMD":
            config["Cmd"] = command
            cmd_set = True
        else:
            config["Entrypoint"] = command
            if not cmd_set:
                config["Cmd"] = None  # docker: an ENTRYPOINT resets the base image's CMD
    elif kw == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for word in expand_words(inst.rest, variables, escape):
            if not PORT.match(word):
                raise DockerfileError(
                    f"invalid port {word!r} in EXPOSE (want PORT[/tcp|udp|sctp])", inst.line
                )
            ports[word if "/" in word else word + "/tcp"] = {}
        config["ExposedPorts"] = ports
    elif kw == "STOPSIGNAL":
        from ..containers import parse_signal

        signal_name = expand(inst.rest, variables, escape)
        try:
            parse_signal(signal_name)
        except InvalidArgument:
            raise DockerfileError(f"invalid STOPSIGNAL {signal_name!r}", inst.line) from None
        config["StopSignal"] = signal_name
    return config, cmd_set
