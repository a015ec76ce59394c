"""What the builder does at tugd's start, light to import: :mod:`supervisor.core` calls it at
start and builds the :class:`~supervisor.build.builder.Builder` itself only at the first build."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tugwire import fsutil

if TYPE_CHECKING:
    from ..config import Config
    from ..store import Store


def prepare_builds(cfg: Config, store: Store) -> str:
    """Make the builds' directory and the build cache's table; remove the leftovers of builds a
    tugd that died was running (their containers' bundles and shims are removed by
    ``Containers.recover``). Call only when no build runs. Returns the directory."""
    path = os.path.join(cfg.root, "builds")
    os.makedirs(path, mode=0o700, exist_ok=True)
    store.db.execute(
        "CREATE TABLE IF NOT EXISTS build_cache (key TEXT PRIMARY KEY, result TEXT NOT NULL, "
        "created TEXT NOT NULL)"
    )
    for entry in os.listdir(path):
        fsutil.remove_tree(os.path.join(path, entry))
    return path
