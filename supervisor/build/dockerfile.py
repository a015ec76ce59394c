"""The Dockerfile parser: parser directives (``# escape=``), comments, line continuations, the JSON
(exec) form, flags (``--chown=``), and the variable substitution of docker's shell lexer
(``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}``, ``${VAR-word}``, ``${VAR+word}``, quotes
and the escape character).

Pure functions, no I/O: :func:`parse` gives the instructions with their line numbers; the builder
expands the words of each instruction with :func:`expand_words` against the variables in scope when
the step runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tugwire.errors import InvalidArgument

# Instructions the builder carries out, and those it knows but refuses with a clear error.
SUPPORTED = frozenset(
    {
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "CMD",
        "ENTRYPOINT",
        "LABEL",
        "EXPOSE",
        "STOPSIGNAL",
        "SHELL",
        "HEALTHCHECK",
        "VOLUME",
        "ONBUILD",
    }
)
UNSUPPORTED = frozenset({"MAINTAINER"})
# Instructions whose arguments may be a JSON array (the exec form).
JSON_FORMS = frozenset({"RUN", "CMD", "ENTRYPOINT", "COPY", "ADD", "SHELL", "VOLUME"})
# What ONBUILD may not trigger (as docker).
NOT_TRIGGERS = frozenset({"ONBUILD", "FROM", "MAINTAINER"})
# Instructions that take ``--name=value`` flags, and the flags each accepts.
FLAGS: dict[str, frozenset[str]] = {
    "COPY": frozenset({"chown", "chmod", "from"}),
    "ADD": frozenset({"chown", "chmod"}),
    "FROM": frozenset({"platform"}),
    "RUN": frozenset(),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class DockerfileError(InvalidArgument):
    """A Dockerfile that cannot be parsed or built; the message names the line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        prefix = f"Dockerfile line {line}: " if line else "Dockerfile: "
        super().__init__(prefix + message, field="dockerfile")
        self.line = line


@dataclass(frozen=True)
class Instruction:
    """One instruction: ``keyword`` in upper case, ``rest`` the text after the keyword and its flags
    (continuations joined), ``exec_form`` the JSON array when it was one, ``flags`` its
    ``--name=value`` options, ``line`` where it starts (1-based)."""

    keyword: str
    rest: str
    line: int
    exec_form: list[str] | None = None
    flags: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        flags = "".join(f"--{k}={v} " for k, v in self.flags.items())
        body = json.dumps(self.exec_form) if self.exec_form is not None else self.rest
        return f"{self.keyword} {flags}{body}".rstrip()


@dataclass(frozen=True)
class Dockerfile:
    instructions: list[Instruction]
    escape: str = "\\"


def parse(text: str) -> Dockerfile:
    """Parse a Dockerfile; :class:`DockerfileError` (naming the line) for one that is malformed."""
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # Parser directives: only at the very top, before any comment, blank line or instruction.
    seen: set[str] = set()
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if m is None:
            break
        name = m.group(1).lower()
        if name in seen:
            raise DockerfileError(f"only one {name} parser directive can be used", i + 1)
        seen.add(name)
        if name == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token {m.group(2)!r}: must be ` or \\", i + 1)
            escape = m.group(2)
        i += 1
    instructions: list[Instruction] = []
    while i < len(lines):
        line = lines[i]
        start = i + 1
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        text_parts: list[str] = []
        current = line.lstrip()
        while True:
            body = current.rstrip()
            if body.endswith(escape):
                text_parts.append(body[:-1])
                # Continuation: comment lines and empty lines inside it are dropped (as docker).
                while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                    i += 1
                if i >= len(lines):
                    break
                current = lines[i]
                i += 1
                continue
            text_parts.append(current)
            break
        instructions.append(_instruction("".join(text_parts).strip(), start))
    if not instructions:
        raise DockerfileError("the file is empty (no instructions)")
    if instructions[0].keyword not in ("FROM", "ARG"):
        raise DockerfileError(
            f"the first instruction must be FROM (or ARG), not {instructions[0].keyword}",
            instructions[0].line,
        )
    return Dockerfile(instructions, escape)


def _instruction(text: str, line: int) -> Instruction:
    keyword, _, rest = text.partition(" ")
    if "\t" in keyword:
        keyword, _, more = keyword.partition("\t")
        rest = more + " " + rest
    keyword = keyword.upper()
    rest = rest.strip()
    if keyword in UNSUPPORTED:
        raise DockerfileError(f"{keyword} is not supported by tug build", line)
    if keyword not in SUPPORTED:
        raise DockerfileError(f"unknown instruction: {keyword}", line)
    flags: dict[str, str] = {}
    allowed = FLAGS.get(keyword)
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        name, eq, value = word[2:].partition("=")
        if allowed is None or name not in allowed:
            raise DockerfileError(f"unknown flag for {keyword}: --{name}", line)
        if not eq or not value:
            raise DockerfileError(f"flag --{name} of {keyword} needs a value (--{name}=VALUE)", line)
        flags[name] = value
        rest = after.strip()
    exec_form: list[str] | None = None
    if keyword in JSON_FORMS and rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            parsed = None  # not JSON: the shell form, as docker does
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            exec_form = parsed
    if not rest and keyword not in ("CMD", "ENTRYPOINT", "RUN"):
        raise DockerfileError(f"{keyword} requires at least one argument", line)
    if keyword == "RUN" and not rest:
        raise DockerfileError("RUN requires at least one argument", line)
    if keyword == "SHELL" and not exec_form:
        raise DockerfileError('SHELL requires the JSON form, e.g. SHELL ["/bin/bash", "-c"]', line)
    if keyword == "ONBUILD":
        trigger = parse_trigger(rest, line)
        if trigger.keyword in NOT_TRIGGERS:
            raise DockerfileError(f"{trigger.keyword} isn't allowed as an ONBUILD trigger", line)
    return Instruction(keyword, rest, line, exec_form, flags)


def parse_trigger(text: str, line: int) -> Instruction:
    """The instruction of an ``ONBUILD`` trigger (as the image records it: ``COPY . /app``)."""
    return _instruction(text.strip(), line)


@dataclass(frozen=True)
class Stage:
    """One stage of a Dockerfile: its ``FROM`` and the instructions up to the next one; ``name``
    the ``AS`` name (lower case, as docker), ``index`` its number from 0."""

    index: int
    name: str | None
    instructions: list[Instruction]


def split_stages(df: Dockerfile) -> tuple[list[Instruction], list[Stage]]:
    """The ARGs before the first FROM, and the stages (the ``AS`` names checked: unique, a
    letter first). A stage's name is read from its FROM line without substitution."""
    meta: list[Instruction] = []
    stages: list[Stage] = []
    names: set[str] = set()
    for inst in df.instructions:
        if inst.keyword == "FROM":
            words = inst.rest.split()
            name: str | None = None
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2].lower()
                if not re.fullmatch(r"[a-z][a-z0-9_.-]*", name):
                    raise DockerfileError(
                        f"invalid name for build stage: {words[2]!r}, name can't start with a number "
                        "or contain symbols",
                        inst.line,
                    )
                if name in names:
                    raise DockerfileError(f"duplicate name {words[2]!r} of a build stage", inst.line)
                names.add(name)
            stages.append(Stage(len(stages), name, [inst]))
        elif not stages:
            if inst.keyword != "ARG":
                raise DockerfileError(f"{inst.keyword} before FROM", inst.line)
            meta.append(inst)
        else:
            stages[-1].instructions.append(inst)
    if not stages:
        raise DockerfileError("no FROM instruction")
    return meta, stages


# ------------------------------------------------------------------------------ substitution


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Split ``text`` into words as docker's shell lexer does: on whitespace outside quotes,
    quotes removed, the escape character escaping the next character (inside double quotes only
    before ``"``, ``$`` and itself), ``$VAR`` and ``${...}`` expanded outside single quotes."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            if in_word:
                words.append("".join(word))
                word = []
                in_word = False
            i += 1
            continue
        in_word = True
        if c == escape:
            if i + 1 < n:
                word.append(text[i + 1])
                i += 2
            else:
                word.append(c)
                i += 1
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise DockerfileError(f"unexpected end of text: missing ' in {text!r}")
            word.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise DockerfileError(f'unexpected end of text: missing " in {text!r}')
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == escape and i + 1 < n and text[i + 1] in ('"', "$", escape):
                    word.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _variable(text, i, env, escape)
                    word.append(value)
                else:
                    word.append(c)
                    i += 1
        elif c == "$":
            value, i = _variable(text, i, env, escape)
            word.append(value)
        else:
            word.append(c)
            i += 1
    if in_word:
        words.append("".join(word))
    return words


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """The words of ``text`` (see :func:`expand_words`) joined by single spaces."""
    return " ".join(expand_words(text, env, escape))


def _variable(text: str, i: int, env: Mapping[str, str], escape: str) -> tuple[str, int]:
    """Expand the variable reference at ``text[i] == '$'``; returns (value, next index)."""
    n = len(text)
    if i + 1 >= n:
        return "$", i + 1
    if text[i + 1] == "{":
        depth = 1
        j = i + 2
        while j < n and depth:
            if text[j] == escape:
                j += 2
                continue
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        if depth:
            raise DockerfileError(f"missing '}}' in {text!r}")
        inner = text[i + 2 : j - 1]
        m = _NAME.match(inner)
        if m is None:
            raise DockerfileError(f"bad substitution: ${{{inner}}}")
        name = m.group(0)
        op = inner[len(name) :]
        value = env.get(name)
        if not op:
            return value or "", j
        for modifier in (":-", ":+", "-", "+"):
            if op.startswith(modifier):
                word = expand(op[len(modifier) :], env, escape)
                if modifier == ":-":
                    return (value if value else word), j
                if modifier == ":+":
                    return (word if value else ""), j
                if modifier == "-":
                    return (value if value is not None else word), j
                return (word if value is not None else ""), j
        raise DockerfileError(f"unsupported modifier ({op[:2]}) in substitution ${{{inner}}}")
    m = _NAME.match(text, i + 1)
    if m is None:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def key_values(inst: Instruction, env: Mapping[str, str], escape: str = "\\") -> list[tuple[str, str]]:
    """The pairs of ENV and LABEL: ``K=V K2="v 2"``, or the old form ``K the rest is the value``.
    Every value is expanded against ``env`` as it was before the instruction (as docker)."""
    words = expand_words(inst.rest, env, escape)
    if not words:
        raise DockerfileError(f"{inst.keyword} requires at least one argument", inst.line)
    if "=" not in words[0]:
        # The old form: one key, and the rest of the line is its value.
        if len(words) < 2:
            raise DockerfileError(f"{inst.keyword} {words[0]} must have two arguments", inst.line)
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise DockerfileError(
                f"{inst.keyword} names can not be blank, and each item needs KEY=VALUE: {word!r}", inst.line
            )
        pairs.append((key, value))
    return pairs


def healthcheck(inst: Instruction) -> dict[str, Any]:
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=D ...] CMD ...``, as docker records it
    (durations in nanoseconds), which ``tug run`` then applies."""
    kind, _, command = inst.rest.partition(" ")
    command = command.strip()
    if kind.upper() == "NONE":
        if command or inst.flags:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments", inst.line)
        return {"Test": ["NONE"]}
    if kind.upper() != "CMD" or not command:
        raise DockerfileError("HEALTHCHECK wants NONE or CMD followed by a command", inst.line)
    test: list[str] = ["CMD-SHELL", command]
    if command.startswith("["):
        try:
            parsed = json.loads(command)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(v, str) for v in parsed):
            test = ["CMD", *parsed]
    check: dict[str, Any] = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod"}
    names["start-interval"] = "StartInterval"
    for flag, value in inst.flags.items():
        if flag == "retries":
            if not value.isdigit() or int(value) < 1:
                raise DockerfileError(f"--retries must be a positive integer, not {value!r}", inst.line)
            check["Retries"] = int(value)
            continue
        try:
            ns = duration_ns(value)
        except ValueError as exc:
            raise DockerfileError(f"--{flag}: {exc}", inst.line) from None
        if flag != "start-period" and ns < 1_000_000:
            raise DockerfileError(f"--{flag} must be at least 1ms", inst.line)
        check[names[flag]] = ns
    return check


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def duration_ns(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``500ms``; docker's HEALTHCHECK flags) in nanoseconds."""
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r} (want e.g. 30s, 1m30s, 500ms)")
    return int(total)
