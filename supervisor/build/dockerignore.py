""".dockerignore: the patterns that keep files of the build context out of COPY and ADD.

Docker's rules (its ``patternmatcher``): one pattern a line, ``#`` lines are comments, each pattern
is cleaned (``./a//b/`` is ``a/b``, a leading ``/`` is dropped), ``*`` and ``?`` do not cross
``/``, ``[...]`` is a class, ``**`` matches any number of directories (``**/x`` matches ``x`` at the
top too), ``!pattern`` re-includes. A path is excluded when the last pattern that matches it, or
one of its parent directories, is not a ``!`` pattern.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from tugwire.errors import InvalidArgument


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern[str]
    exclusion: bool  # a ``!`` pattern: matching paths are included again


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of one (cleaned) pattern, matched against whole relative paths."""
    out = ["^"]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "^", "]") else i + 1)
            if end < 0:
                raise InvalidArgument(
                    f".dockerignore: syntax error in pattern {pattern!r}", field="dockerignore"
                )
            body = pattern[i + 1 : end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


def _clean(pattern: str) -> str:
    cleaned = posixpath.normpath(pattern.strip())
    cleaned = cleaned.lstrip("/")
    return "" if cleaned == "." else cleaned


class DockerIgnore:
    """The compiled patterns of one ``.dockerignore``."""

    def __init__(self, lines: list[str]) -> None:
        self.patterns: list[Pattern] = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            cleaned = _clean(line)
            if not cleaned:
                continue
            self.patterns.append(Pattern(cleaned, compile_pattern(cleaned), exclusion))
        self.has_exclusions = any(p.exclusion for p in self.patterns)

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        return cls(text.splitlines())

    @classmethod
    def load(cls, context: str) -> DockerIgnore:
        """``<context>/.dockerignore``, or no patterns when there is none."""
        try:
            with open(os.path.join(context, ".dockerignore"), encoding="utf-8", errors="replace") as f:
                return cls.parse(f.read())
        except FileNotFoundError:
            return cls([])

    def excluded(self, rel: str) -> bool:
        """Whether the context path ``rel`` (relative, ``/``-separated) is left out."""
        rel = _clean(rel)
        if not rel or not self.patterns:
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        matched = False
        for pattern in self.patterns:
            if any(pattern.regex.match(p) for p in prefixes):
                matched = not pattern.exclusion
        return matched

    def skip_dir(self, rel: str) -> bool:
        """Whether a whole directory can be skipped: it is excluded and no ``!`` pattern could
        bring back something inside it."""
        return not self.has_exclusions and self.excluded(rel)
