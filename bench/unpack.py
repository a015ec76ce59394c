"""Layer unpacking: Tugboat's content store against ``umoci unpack`` on the same OCI image.

Usage (as root, from the repository):

    .venv/bin/python bench/unpack.py [--rounds N] [--dirs DIR ...]

The image: one gzip layer per ``--dirs`` entry (default ``/usr/lib/python3.11`` and
``/usr/share/perl``: a few thousand files, small and large), written as an OCI layout in a temp
dir. Each round, interleaved (the order alternates), in fresh directories:

- ``umoci unpack --image LAYOUT:bench BUNDLE``: reads and verifies the blobs from the layout,
  applies every layer into one rootfs, writes config.json and an mtree manifest.
- ``tugboat ingest``: :meth:`Images.ingest` from the same layout into an empty store: copies
  every blob into the store (verified), then unpacks each layer into its overlay snapshot
  (verifying blob digest and diff id in the same pass), records the image.
- ``tugboat unpack``: the unpack alone (:meth:`Images._unpack_layer` of each layer, blobs
  already in the store), the part that compares to applying layers.

Prints a Markdown table of the medians and the minimums (seconds) and removes what it made.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from supervisor.config import Config
from supervisor.images import BlobWriter, Images, chain_ids
from supervisor.store import Store


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layout(path: str, dirs: list[str]) -> dict[str, Any]:
    os.makedirs(os.path.join(path, "blobs", "sha256"))

    def blob(data: bytes) -> str:
        d = _digest(data)
        with open(os.path.join(path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return d

    layers, diff_ids = [], []
    files = 0
    raw_total = 0
    for d in dirs:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(d, arcname=d.lstrip("/"))
            files += len(tf.getmembers())
        raw = buf.getvalue()
        raw_total += len(raw)
        gz = gzip.compress(raw, compresslevel=6, mtime=0)
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)}
        )
        diff_ids.append(_digest(raw))
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(cfg),
                "size": len(cfg),
            },
            "layers": layers,
        }
    ).encode()
    mdigest = blob(manifest)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": mdigest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "bench"},
                    }
                ],
            },
            f,
        )
    return {"digest": mdigest, "files": files, "raw": raw_total, "gz": sum(x["size"] for x in layers)}


class LayoutSource:
    def __init__(self, path: str) -> None:
        self.path = path

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        with open(os.path.join(self.path, "blobs", "sha256", reference[7:]), "rb") as f:
            return f.read(), ""

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        with open(os.path.join(self.path, "blobs", "sha256", desc["digest"][7:]), "rb") as f:
            while chunk := f.read(1 << 20):
                await writer.write(chunk)


def run_umoci(layout: str, work: str) -> float:
    bundle = os.path.join(work, "bundle")
    t0 = time.perf_counter()
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bench", bundle], check=True, capture_output=True)
    return time.perf_counter() - t0


def run_tugboat(layout: str, digest: str, work: str) -> tuple[float, float]:
    root = os.path.join(work, "root")
    os.makedirs(root)
    store = Store(os.path.join(root, "tugboat.db"))
    try:
        images = Images(Config(root=root, state=os.path.join(work, "state")), store)
        t0 = time.perf_counter()
        rec = anyio.run(images.ingest, LayoutSource(layout), digest, "bench:1")
        ingest = time.perf_counter() - t0
        # the unpack alone: drop the snapshots, unpack again from the store
        diff_ids = rec.config["rootfs"]["diff_ids"]
        chains = chain_ids(diff_ids)
        for c in chains:
            shutil.rmtree(os.path.join(images.cfg.snapshots_dir, c[7:]))
        t0 = time.perf_counter()
        for i, (layer, chain, diff) in enumerate(zip(rec.manifest["layers"], chains, diff_ids, strict=True)):
            lowers = [images._snapshot_fs(c) for c in reversed(chains[:i])]
            images._unpack_layer(layer, chain, diff, lowers)
        unpack = time.perf_counter() - t0
        return ingest, unpack
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dirs", nargs="+", default=["/usr/lib/python3.11", "/usr/share/perl"])
    args = ap.parse_args()
    if shutil.which("umoci") is None:
        print("needs umoci", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="tbunpack", dir="/var/tmp")
    try:
        layout = os.path.join(base, "layout")
        info = make_layout(layout, args.dirs)
        print(
            f"image: {len(args.dirs)} gzip layers, {info['files']} entries, "
            f"{info['raw'] / 1e6:.1f} MB uncompressed, {info['gz'] / 1e6:.1f} MB compressed",
            file=sys.stderr,
        )
        results: dict[str, list[float]] = {"umoci unpack": [], "tugboat ingest": [], "tugboat unpack": []}
        for r in range(args.rounds + 1):  # round 0 warms the page cache and is not counted
            order = ["umoci", "tug"] if r % 2 else ["tug", "umoci"]
            for which in order:
                work = os.path.join(base, f"w{r}{which}")
                os.makedirs(work)
                if which == "umoci":
                    t = run_umoci(layout, work)
                    if r:
                        results["umoci unpack"].append(t)
                else:
                    ingest, unpack = run_tugboat(layout, info["digest"], work)
                    if r:
                        results["tugboat ingest"].append(ingest)
                        results["tugboat unpack"].append(unpack)
                shutil.rmtree(work)
            print(f"round {r} done", file=sys.stderr)
        umoci = statistics.median(results["umoci unpack"])
        print("| what | median s | min s | vs umoci |")
        print("|---|---|---|---|")
        for name, times in results.items():
            med = statistics.median(times)
            print(f"| {name} | {med:.3f} | {min(times):.3f} | {med / umoci:.2f}x |")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
