"""The ``system.*`` JSON-RPC methods (docs/api.md, "System"): info, df and prune."""

from __future__ import annotations

import dataclasses
from typing import Any

from tugwire import jsonrpc

from ..core import Core


class SystemApi:
    def __init__(self, core: Core) -> None:
        self.system = core.system

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("system.info", self.system_info)
        d.add("system.df", self.system_df)
        d.add("system.prune", self.system_prune)

    async def system_info(self, call: jsonrpc.Call) -> Any:
        """Versions, roots, runtime, cgroup version and counts."""
        return dataclasses.asdict(self.system.info())

    async def system_df(self, call: jsonrpc.Call) -> Any:
        """Space used by images, containers and logs, and what a prune would reclaim."""
        return dataclasses.asdict(await self.system.df())

    async def system_prune(self, call: jsonrpc.Call) -> Any:
        """Remove containers that are not running and unused images (``all``: named ones too)."""
        return dataclasses.asdict(await self.system.prune(all_images=call.params.boolean("all")))
