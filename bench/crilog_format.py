"""Where the shim's log time goes: ``tugwire.crilog.format_chunk`` on one read's worth of lines.

Usage: .venv/bin/python bench/crilog_format.py [--line-bytes 61] [--chunk-kib 1024] [--reps 100]

Times, per chunk (a chunk is what one ``os.read`` of the container's pipe returns, up to 1 MiB):
the whole ``format_chunk``, its long-line check (``crilog._may_have_long_line``) alone, beside
the regex it replaced, the one ``bytes.replace`` that formats every line when none is too long,
and ``os.write`` of the result to a file. The inverse of the total is the most the shim can
format, whatever the rest costs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable

from tugwire import crilog


def per_call(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def rate(mbps: float) -> str:
    return f"{mbps:,.0f}" if mbps >= 10 else f"{mbps:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--line-bytes", type=int, default=61, help="bytes per line, newline included")
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=100)
    args = ap.parse_args()
    line = (b"0123456789 abcdefghij " * (args.line_bytes // 22 + 1))[: args.line_bytes - 1] + b"\n"
    size = args.chunk_kib * 1024
    data = (line * (size // len(line) + 1))[:size]
    end = data.rfind(b"\n") + 1
    complete = data[:end]
    ts = crilog.timestamp()
    prefix = ts + b" stdout F "
    out = crilog.format_chunk(b"stdout", data, ts)
    old_regex = re.compile(rb"[^\n]{%d,}" % (crilog.MAX_LINE + 1))

    with tempfile.TemporaryFile(dir="/tmp") as f:
        fd = f.fileno()

        def write() -> None:
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, out)

        rows = [
            (
                "format_chunk (all of it)",
                per_call(lambda: crilog.format_chunk(b"stdout", data, ts), args.reps),
            ),
            (
                "  _may_have_long_line (the long-line check)",
                per_call(lambda: crilog._may_have_long_line(complete), args.reps),
            ),
            (
                "  (before: regex [^\\n]{16385,} search)",
                per_call(lambda: old_regex.search(complete), max(1, args.reps // 10)),
            ),
            (
                "  bytes.replace (formats every line)",
                per_call(lambda: complete[:-1].replace(b"\n", b"\n" + prefix), args.reps),
            ),
            ("os.write of the records (page cache)", per_call(write, args.reps)),
        ]
    print(f"chunk: {size} bytes of {args.line_bytes}-byte lines -> {len(out)} bytes of CRI records\n")
    print("| step | ms per chunk | MB/s of container output |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec * 1000:.2f} | {rate(size / sec / 1e6)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
