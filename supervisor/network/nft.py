"""tugd's nftables tables (``ip tugboat-<instance>`` and its ``ip6`` twin): NAT out, published
ports in, isolation between networks.

Each tugd has tables of its own, named after its instance (:func:`supervisor.network.host.table_name`):
one tugd's rebuild, restart or stop never touches another's rules. The whole table is rendered
from the store and replaced in one transaction (create if missing, delete, create again):
there is never a half-applied table, and a rebuild at start is the same code as any change,
which is what makes reconciliation after a crash complete. Only a ``-p`` start adds its rules
to the table as it stands (:func:`add_forwards`), the same text in one transaction. A normal stop leaves the
table in place: containers outlive tugd and keep their published ports; only a clean-up
(``tugd --cleanup``, ``system.reset``) deletes it. nftables rules go through nft's own parser:
pyroute2's nftables support does not cover NAT expressions. :func:`run` calls it in-process
(``libnftables.so.1``, the library the ``nft`` tool is built on, in the same Debian package's
dependencies) rather than spawning ``nft``: a ``list tables`` is then 0.1 ms instead of 7-10 ms
of fork and exec under load; the ``nft`` tool is the fallback where the library cannot be loaded.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

from tugwire.errors import Unavailable

BRIDGE_GLOB = "tb-*"


@dataclass
class BridgeRules:
    bridge: str
    subnet: str
    internal: bool = False
    subnet6: str = ""


@dataclass
class Forward:
    host_ip: str  # "" for every local address
    host_port: int
    proto: str
    ip: str  # the container's address
    port: int

    def rule(self) -> str:
        """Its rule, the same in the ``prerouting`` and ``output`` chains."""
        target = f"dnat to {self.ip}:{self.port}"
        if self.host_ip:
            return f"ip daddr {self.host_ip} {self.proto} dport {self.host_port} {target}"
        return f"fib daddr type local {self.proto} dport {self.host_port} {target}"


@dataclass
class Ruleset:
    bridges: list[BridgeRules] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)

    def render(self, table: str) -> str:
        pre: list[str] = []
        out: list[str] = []
        post: list[str] = []
        fwd: list[str] = []
        post6: list[str] = []
        for f in self.forwards:
            pre.append(f.rule())
            out.append(f.rule())
        for b in self.bridges:
            if not b.internal:
                post.append(f'ip saddr {b.subnet} oifname != "{b.bridge}" masquerade')
                if b.subnet6:
                    post6.append(f'ip6 saddr {b.subnet6} oifname != "{b.bridge}" masquerade')
            # Containers of one network never reach another's (routed through us otherwise).
            fwd.append(f'iifname "{b.bridge}" oifname "{BRIDGE_GLOB}" oifname != "{b.bridge}" drop')
            if b.internal:
                fwd.append(f'iifname "{b.bridge}" oifname != "{b.bridge}" drop')
                fwd.append(f'oifname "{b.bridge}" iifname != "{b.bridge}" drop')
        # Published ports reached on 127.0.0.1 leave through a bridge with a loopback source.
        post.append(f'ip saddr 127.0.0.0/8 oifname "{BRIDGE_GLOB}" masquerade')

        def chain(name: str, hook: str, rules: list[str]) -> str:
            body = "".join(f"    {r}\n" for r in rules)
            return f"  chain {name} {{\n    {hook};\n{body}  }}\n"

        return (
            f"table ip {table} {{\n"
            + chain("prerouting", "type nat hook prerouting priority dstnat", pre)
            + chain("output", "type nat hook output priority -100", out)
            + chain("postrouting", "type nat hook postrouting priority srcnat", post)
            + chain("forward", "type filter hook forward priority filter", fwd)
            + "}\n"
            # IPv6 (dual-stack networks): NAT out and the same isolation; no published ports.
            + f"table ip6 {table} {{\n"
            + chain("postrouting", "type nat hook postrouting priority srcnat", post6)
            + chain("forward", "type filter hook forward priority filter", fwd)
            + "}\n"
        )


def nft_path() -> str:
    """The ``nft`` tool (Unavailable if it is not installed)."""
    path = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise Unavailable("nft (the nftables package) is needed for container networks")
    return path


class _Lib:
    """``libnftables.so.1`` through ctypes: a context per command, one command at a time."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.lock = threading.Lock()

    def run(self, text: str) -> tuple[int, bytes, bytes]:
        with self.lock:
            ctx = self.lib.nft_ctx_new(0)
            if not ctx:
                raise Unavailable("nft: cannot make a libnftables context")
            try:
                self.lib.nft_ctx_buffer_output(ctx)
                self.lib.nft_ctx_buffer_error(ctx)
                rc = self.lib.nft_run_cmd_from_buffer(ctx, text.encode())
                out = self.lib.nft_ctx_get_output_buffer(ctx) or b""
                err = self.lib.nft_ctx_get_error_buffer(ctx) or b""
            finally:
                self.lib.nft_ctx_free(ctx)
        return (0 if rc == 0 else 1), out, err


_lib: _Lib | None = None
_lib_tried = False  # and not loaded: the tool then
_lib_lock = threading.Lock()


def _library() -> _Lib | None:
    global _lib, _lib_tried
    with _lib_lock:
        if not _lib_tried:
            _lib_tried = True
            try:
                _lib = _Lib()
            except (OSError, AttributeError):
                _lib = None
        return _lib


def run(args: list[str] | None = None, script: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``nft ARGS...`` (``args``: plain words, such as ``["list", "tables"]``) or ``nft -f -``
    of ``script``: its exit status (0 or 1), output and errors, as the tool gives them. In
    process through libnftables when it loads; else the ``nft`` tool. Blocking."""
    text = script if script is not None else " ".join(args or [])
    lib = _library()
    if lib is not None:
        rc, out, err = lib.run(text)
        return subprocess.CompletedProcess(["nft", *(args or ["-f", "-"])], rc, out, err)
    cmd = [nft_path(), *(["-f", "-"] if script is not None else args or [])]
    return subprocess.run(
        cmd, input=script.encode() if script is not None else None, capture_output=True, timeout=30
    )


def add_forwards(table: str, forwards: list[Forward]) -> bool:
    """Add ``forwards`` to the table ``table`` as it stands, in one transaction; False (nothing
    changed) if that failed, the table gone for one. Blocking. A start with ``-p`` adds its
    rules so (1.7 ms measured) rather than replacing the table (12 ms: the NAT hooks are
    registered again); removing rules costs as much as the replacement, so an exit rebuilds."""
    script = "".join(
        f"add rule ip {table} {chain} {f.rule()}\n" for f in forwards for chain in ("prerouting", "output")
    )
    return run(script=script).returncode == 0


def apply(table: str, ruleset: Ruleset | None) -> None:
    """Replace the tables named ``table`` by ``ruleset`` (None: remove them). Blocking."""
    script = "".join(
        f"table {family} {table} {{}}\ndelete table {family} {table}\n" for family in ("ip", "ip6")
    )
    if ruleset is not None:
        script += ruleset.render(table)
    result = run(script=script)
    if result.returncode != 0:
        raise Unavailable(f"nft failed: {result.stderr.decode(errors='replace').strip()}")
