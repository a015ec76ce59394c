"""Docker's ``--format`` templates: the subset of Go's ``text/template`` docker's docs use.

Text and ``{{ }}`` actions (``{{-``/``-}}`` trim spaces); pipelines of commands joined by ``|``;
a command is a field chain (``.``, ``.A.B``, ``$``, ``$x.A``), a literal (``"s"``, raw strings in
backquotes, numbers, ``true``/``false``/``nil``), a parenthesised pipeline, or a function with its
arguments. Control: ``if``/``else if``/``else``/``end``, ``range`` (with ``$v :=`` or ``$k, $v :=``,
and ``else``), ``with``. Functions: Go's ``index len eq ne lt le gt ge not and or print printf
println`` and docker's ``json join lower upper title split truncate pad``. A field of a dict that
is missing prints ``<no value>``; a callable field is called with the arguments that follow it
(docker's ``{{.Label "k"}}``). Values print as Go's ``%v`` does (``map[a:b]``, ``[x y]``,
``<nil>``). Anything else is a :class:`TemplateError` naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tugwire.errors import InvalidArgument


class TemplateError(InvalidArgument):
    """A template that cannot be parsed or run, with docker's kind of message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="format")


NO_VALUE = "<no value>"


class _Missing:
    """A missing map key: prints ``<no value>``, is false, and has no fields."""

    def __repr__(self) -> str:
        return NO_VALUE


MISSING: Any = _Missing()


# ----------------------------------------------------------------------------------- lexing

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<var>\$[A-Za-z0-9_]*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[|(),])
    )""",
    re.VERBOSE,
)


@dataclass
class _Tok:
    kind: str
    text: str


def _lex_action(src: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = _TOKEN.match(src, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"template: unexpected {src[pos:].strip()[:20]!r} in command")
        kind = m.lastgroup or ""
        text = m.group(kind)
        # a field right after a token without space is a chain on it: ``$x.A``, ``(...).A``
        if kind == "field" and out and m.start(kind) == pos and out[-1].kind in ("var", "close"):
            out.append(_Tok("chain", text))
        elif kind == "punct":
            out.append(_Tok({"|": "pipe", "(": "open", ")": "close", ",": "comma"}[text], text))
        else:
            out.append(_Tok(kind, text))
        pos = m.end()
    return out


# ----------------------------------------------------------------------------------- parsing


@dataclass
class _Cmd:
    args: list[
        Any
    ]  # operands: ("field", names), ("var", name, names), ("lit", v), ("pipe", Pipe), ("fn", name)


@dataclass
class _Pipe:
    decl: list[str]
    cmds: list[_Cmd]


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Branch:
    kind: str  # if, range, with
    pipe: _Pipe
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def parse(src: str) -> list[Any]:
    """The tree of template ``src``; TemplateError on what it cannot parse."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if parts and parts[-1][0] == "trim":
            text = text.lstrip(" \t\r\n")
            parts.pop()
        parts.append(("text", text))
        body = m.group(2).strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise TemplateError("template: unclosed comment")
        else:
            parts.append(("action", body))
        if m.group(3):
            parts.append(("trim", ""))
        pos = m.end()
    rest = src[pos:]
    if parts and parts[-1][0] == "trim":
        parts.pop()
        rest = rest.lstrip(" \t\r\n")
    if "{{" in rest:
        raise TemplateError("template: unclosed action")
    parts.append(("text", rest))
    nodes, stop = _parse_list(parts, 0, ())
    if stop < len(parts):
        raise TemplateError(f"template: unexpected {{{{{parts[stop][1]}}}}}")
    return nodes


def _parse_list(parts: list[tuple[str, str]], i: int, stops: tuple[str, ...]) -> tuple[list[Any], int]:
    nodes: list[Any] = []
    while i < len(parts):
        kind, text = parts[i]
        if kind == "text":
            if text:
                nodes.append(_Text(text))
            i += 1
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else"):
            if word not in stops and not (word == "else" and "else" in stops):
                raise TemplateError(f"template: unexpected {{{{{word}}}}}")
            return nodes, i
        if word in ("if", "range", "with"):
            node, i = _parse_branch(parts, i, word, text[len(word) :])
            nodes.append(node)
            continue
        if word in ("define", "template", "block", "break", "continue"):
            raise TemplateError(f"template: {{{{{word}}}}} is not supported by tug's --format")
        nodes.append(_Action(_parse_pipe(_lex_action(text))))
        i += 1
    if stops:
        raise TemplateError("template: unexpected EOF (an {{if}}, {{range}} or {{with}} without {{end}})")
    return nodes, i


def _parse_branch(parts: list[tuple[str, str]], i: int, kind: str, rest: str) -> tuple[_Branch, int]:
    branch = _Branch(kind, _parse_pipe(_lex_action(rest), allow_decl=kind == "range"))
    branch.body, i = _parse_list(parts, i + 1, ("end", "else"))
    text = parts[i][1]
    if text.split(None, 1)[0] == "else":
        tail = text[4:].strip()
        if tail.startswith("if ") and kind == "if":
            sub, i = _parse_branch(parts, i, "if", tail[2:])
            branch.orelse = [sub]
            return branch, i
        if tail:
            raise TemplateError(f"template: unexpected {{{{else {tail}}}}}")
        branch.orelse, i = _parse_list(parts, i + 1, ("end",))
    return branch, i + 1


def _parse_pipe(toks: list[_Tok], allow_decl: bool = False) -> _Pipe:
    decl: list[str] = []
    for n in (1, 2):
        shape = [t.kind for t in toks[: 2 * n]]
        want = ["var", "decl"] if n == 1 else ["var", "comma", "var", "decl"]
        if shape == want:
            decl = [t.text for t in toks[: 2 * n] if t.kind == "var"]
            toks = toks[2 * n :]
            break
    if decl and not allow_decl and len(decl) > 1:
        raise TemplateError("template: too many declarations")
    pipe, pos = _parse_cmds(toks, 0)
    if pos != len(toks):
        raise TemplateError(f"template: unexpected {toks[pos].text!r} in command")
    pipe.decl = decl
    if not pipe.cmds:
        raise TemplateError("template: missing value for command")
    return pipe


def _parse_cmds(toks: list[_Tok], pos: int) -> tuple[_Pipe, int]:
    cmds: list[_Cmd] = []
    args: list[Any] = []
    while pos < len(toks):
        t = toks[pos]
        if t.kind == "close":
            break
        pos += 1
        if t.kind == "pipe":
            if not args:
                raise TemplateError("template: missing command before |")
            cmds.append(_Cmd(args))
            args = []
        elif t.kind == "open":
            sub, pos = _parse_cmds(toks, pos)
            if pos >= len(toks) or toks[pos].kind != "close":
                raise TemplateError("template: unclosed left paren")
            pos += 1
            args.append(("pipe", sub))
        elif t.kind == "chain":
            if not args:
                raise TemplateError(f"template: unexpected {t.text}")
            args[-1] = ("chain", args[-1], t.text.split(".")[1:])
        elif t.kind == "field":
            args.append(("field", [] if t.text == "." else t.text.split(".")[1:]))
        elif t.kind == "var":
            args.append(("var", t.text, []))
        elif t.kind == "str":
            args.append(("lit", json.loads(t.text) if "\\" not in t.text else _go_unquote(t.text)))
        elif t.kind == "raw":
            args.append(("lit", t.text[1:-1]))
        elif t.kind == "num":
            args.append(("lit", float(t.text) if "." in t.text else int(t.text)))
        elif t.kind == "ident":
            if t.text in ("true", "false"):
                args.append(("lit", t.text == "true"))
            elif t.text == "nil":
                args.append(("lit", None))
            elif t.text in FUNCS:
                args.append(("fn", t.text))
            else:
                raise TemplateError(f'template: function "{t.text}" not defined')
        else:
            raise TemplateError(f"template: unexpected {t.text!r} in command")
    if args:
        cmds.append(_Cmd(args))
    elif cmds:
        raise TemplateError("template: missing command after |")
    return _Pipe([], cmds), pos


def _go_unquote(text: str) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text[1:-1].encode().decode("unicode_escape")
    return str(value)


# --------------------------------------------------------------------------------- values


def go_str(value: Any) -> str:
    """``value`` as Go's ``%v`` prints it."""
    if value is MISSING:
        return NO_VALUE
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) or abs(value) >= 1e21 else str(int(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(value[k])}" for k in sorted(value, key=str)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    return str(value)


def truthy(value: Any) -> bool:
    """Go's template truth: false, 0, nil, and empty strings, lists and maps are false."""
    if value is MISSING or value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def go_json(value: Any) -> str:
    """Go's ``json.Marshal``: compact, ``<``, ``>`` and ``&`` escaped."""
    if value is MISSING:
        value = None
    text = json.dumps(_go_order(value), separators=(",", ":"), ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _is_struct(value: dict[Any, Any]) -> bool:
    """Whether a dict stands for one of docker's Go structs (a key an exported field name,
    ``State``, ``ExitCode``; an event's ``status`` beside its ``Type``) rather than a Go map
    (``Labels``: ``{"tier": "front"}``): a guess, as JSON keeps no types."""
    return any(isinstance(k, str) and k[:1].isupper() and k.isidentifier() for k in value)


def _go_order(value: Any) -> Any:
    """``value`` with Go's key order: a struct's fields as declared, a map's keys sorted; a
    row's methods (``Label``) left out."""
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if not callable(v)]
        if not _is_struct(value):
            items.sort(key=lambda kv: str(kv[0]))
        return {k: _go_order(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_go_order(v) for v in value]
    return value


def _missing(value: dict[Any, Any]) -> Any:
    """What a missing key of ``value`` gives: a Go ``map[string]string`` (docker's labels and
    attributes) its zero value ``""``, anything else ``<no value>``."""
    if isinstance(value, _Header) or (
        not _is_struct(value) and all(isinstance(v, str) for v in value.values())
    ):
        return ""
    return MISSING


def _title(s: Any) -> str:
    return re.sub(r"(^|(?<=\s))(\w)", lambda m: m.group(2).upper(), str(s))


def _truncate(s: Any, n: Any) -> str:
    text = str(s)
    return text[: int(n)] if len(text) > int(n) else text


def _pad(s: Any, left: Any, right: Any) -> str:
    return " " * int(left) + str(s) + " " * int(right)


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, dict):
            item = item[key] if key in item else _missing(item)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or not 0 <= key < len(item):
                raise TemplateError(f"error calling index: index out of range: {key}")
            item = item[key]
        else:
            raise TemplateError(f"error calling index: cannot index {go_str(item)}")
    return item


def _len(item: Any) -> int:
    if not isinstance(item, (dict, list, tuple, str)):
        raise TemplateError(f"error calling len: len of {go_str(item)}")
    return len(item)


def _cmp(op: Callable[[Any, Any], bool], name: str) -> Callable[..., bool]:
    def compare(a: Any, *bs: Any) -> bool:
        if not bs:
            raise TemplateError(f"wrong number of args for {name}: want at least 2")
        if name == "eq":
            return any(a == b for b in bs)
        b = bs[0]
        if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise TemplateError(f"error calling {name}: incompatible types for comparison")
        return op(a, b)

    return compare


def _printf(fmt: Any, *args: Any) -> str:
    out = []
    it = iter(args)
    for m in re.finditer(r"%(?:([-+ 0#]*\d*(?:\.\d+)?)([vsdqtfx%]))|[^%]+|%", str(fmt)):
        if m.group(2) is None:
            out.append(m.group(0))
            continue
        verb, flags = m.group(2), m.group(1) or ""
        if verb == "%":
            out.append("%")
            continue
        value = next(it, MISSING)
        if verb == "q":
            out.append(json.dumps(go_str(value), ensure_ascii=False))
        elif verb in "dfx" and isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(("%" + flags + verb) % value)
        else:
            out.append(("%" + flags + "s") % go_str(value))
    return "".join(out)


FUNCS: dict[str, Callable[..., Any]] = {
    "json": go_json,
    "join": lambda items, sep: str(sep).join(go_str(i) for i in (items or [])),
    "lower": lambda s: go_str(s).lower(),
    "upper": lambda s: go_str(s).upper(),
    "title": lambda s: _title(go_str(s)),
    "split": lambda s, sep: go_str(s).split(str(sep)) if sep else list(go_str(s)),
    "truncate": _truncate,
    "pad": _pad,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "print": lambda *a: "".join(go_str(x) for x in a),
    "printf": _printf,
    "index": _index,
    "len": _len,
    "not": lambda a: not truthy(a),
    "and": lambda *a: next((x for x in a if not truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if truthy(x)), a[-1]),
    "eq": _cmp(lambda a, b: a == b, "eq"),
    "ne": _cmp(lambda a, b: a != b, "ne"),
    "lt": _cmp(lambda a, b: a < b, "lt"),
    "le": _cmp(lambda a, b: a <= b, "le"),
    "gt": _cmp(lambda a, b: a > b, "gt"),
    "ge": _cmp(lambda a, b: a >= b, "ge"),
}


# ------------------------------------------------------------------------------- execution


class Template:
    """A parsed template; :meth:`render` runs it on one value."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.tree = parse(src)

    def render(self, dot: Any) -> str:
        out: list[str] = []
        _run(self.tree, dot, {"$": dot}, out)
        return "".join(out)


def _run(nodes: list[Any], dot: Any, env: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Action):
            value = _pipe(node.pipe, dot, env)
            if not node.pipe.decl:
                out.append(go_str(value))
        elif node.kind == "if":
            _run(node.body if truthy(_pipe(node.pipe, dot, env)) else node.orelse, dot, env, out)
        elif node.kind == "with":
            value = _pipe(node.pipe, dot, env)
            if truthy(value):
                _run(node.body, value, env, out)
            else:
                _run(node.orelse, dot, env, out)
        else:
            _range(node, dot, env, out)


def _range(node: _Branch, dot: Any, env: dict[str, Any], out: list[str]) -> None:
    value = _pipe(_Pipe([], node.pipe.cmds), dot, env)
    if isinstance(value, dict):
        items = [(k, value[k]) for k in sorted(value, key=str)]
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    elif value is None or value is MISSING:
        items = []
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [(i, i) for i in range(value)]
    else:
        raise TemplateError(f"range can't iterate over {go_str(value)}")
    if not items:
        _run(node.orelse, dot, env, out)
        return
    for key, item in items:
        inner = dict(env)
        if len(node.pipe.decl) == 1:
            inner[node.pipe.decl[0]] = item
        elif len(node.pipe.decl) == 2:
            inner[node.pipe.decl[0]], inner[node.pipe.decl[1]] = key, item
        _run(node.body, item, inner, out)


def _pipe(pipe: _Pipe, dot: Any, env: dict[str, Any]) -> Any:
    value: Any = MISSING
    for i, cmd in enumerate(pipe.cmds):
        value = _cmd(cmd, dot, env, [value] if i else [])
    if pipe.decl:
        env[pipe.decl[-1]] = value
    return value


def _cmd(cmd: _Cmd, dot: Any, env: dict[str, Any], piped: list[Any]) -> Any:
    head, rest = cmd.args[0], cmd.args[1:]
    if head[0] == "fn":
        args = [_operand(a, dot, env) for a in rest] + piped
        try:
            return FUNCS[head[1]](*args)
        except TemplateError:
            raise
        except (TypeError, ValueError, IndexError) as exc:
            raise TemplateError(f"error calling {head[1]}: {exc}") from None
    if head[0] in ("field", "chain", "var") and (rest or piped):
        # a method field with arguments: docker's ``{{.Label "k"}}``
        value = _operand(head, dot, env, call_args=[_operand(a, dot, env) for a in rest] + piped)
        return value
    if rest or piped:
        raise TemplateError(f"template: can't give argument to non-function {_describe(head)}")
    return _operand(head, dot, env)


def _describe(arg: Any) -> str:
    if arg[0] == "lit":
        return go_str(arg[1])
    return str(arg[0])


def _operand(arg: Any, dot: Any, env: dict[str, Any], call_args: list[Any] | None = None) -> Any:
    kind = arg[0]
    if kind == "lit":
        return arg[1]
    if kind == "pipe":
        return _pipe(arg[1], dot, env)
    if kind == "fn":
        return FUNCS[arg[1]]()
    if kind == "field":
        return _fields(dot, arg[1], call_args)
    if kind == "var":
        if arg[1] not in env:
            raise TemplateError(f"template: undefined variable: {arg[1]}")
        return _fields(env[arg[1]], arg[2], call_args)
    return _fields(_operand(arg[1], dot, env), arg[2], call_args)


def _fields(value: Any, names: list[str], call_args: list[Any] | None) -> Any:
    for i, name in enumerate(names):
        if value is MISSING or value is None:
            raise TemplateError(f"template: nil pointer evaluating .{'.'.join(names[: i + 1])}")
        if isinstance(value, dict):
            value = value[name] if name in value else _missing(value)
        else:
            attr = getattr(value, name, None) if not name.startswith("_") else None
            if attr is None:
                raise TemplateError(f"template: can't evaluate field {name} in type {type(value).__name__}")
            value = attr
        last = i == len(names) - 1
        if callable(value) and not isinstance(value, type):
            value = value(*(call_args or [])) if last else value()
            if last:
                return value
    if call_args:
        raise TemplateError(f"template: can't give argument to non-function .{'.'.join(names)}")
    return value


# ---------------------------------------------------------------------------- docker's --format


def prepare(fmt: str) -> tuple[bool, str]:
    """Docker's pre-processing of ``--format``: ``table`` prefix, ``\\t`` and ``\\n`` escapes."""
    table = fmt.startswith("table")
    if table:
        fmt = fmt[len("table") :]
    fmt = fmt.strip(" ")
    return table, fmt.replace("\\t", "\t").replace("\\n", "\n")


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's ``tabwriter`` (minwidth 10, tabwidth 1, padding 3, spaces), as docker's tables."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    widths: list[int] = []

    def write(line0: int, line1: int) -> None:
        for line in lines[line0:line1]:
            cells = [
                cell + " " * (widths[j] - len(cell)) if j < len(widths) and j < len(line) - 1 else cell
                for j, cell in enumerate(line)
            ]
            out.append("".join(cells))

    def fmt(line0: int, line1: int) -> None:
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write(line0, this)
            line0 = this
            width = minwidth
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            fmt(line0, this)
            widths.pop()
            line0 = this
        write(line0, line1)

    fmt(0, len(lines))
    return "\n".join(out)


def render_all(fmt: str, rows: list[Any], header: dict[str, str] | None = None) -> str:
    """Docker's formatter: each row through the template, a newline after each; with ``table``,
    a header row first (``header`` maps fields to column names) and columns aligned."""
    table, src = prepare(fmt)
    tmpl = Template(src)
    parts = []
    if table and header is not None:
        parts.append(tmpl.render(_Header(header)) + "\n")
    parts.extend(tmpl.render(row) + "\n" for row in rows)
    text = "".join(parts)
    return tabwrite(text) if table else text


class _Header(dict[str, Any]):
    """The header row: every field is its column name (docker's ``SubHeaderContext``)."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__(names)
        self["Label"] = lambda name="": " ".join(str(name).split(".")).upper()
