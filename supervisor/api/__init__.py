"""The JSON-RPC front door (docs/api.md): one thin adapter module per noun, each of which reads
and checks a method's params, calls a service of the :class:`~supervisor.core.Core` with a
typed request, and renders the typed result; a service's error (a ``TugError``) becomes its
JSON-RPC error once, in :class:`tugwire.jsonrpc.Dispatcher`. Streams of the core (events, the
progress of a pull, push or build, logs) become notifications here.

- :mod:`.system`: ``system.*``
- :mod:`.containers`: ``container.*`` (and the exec and attach methods)
- :mod:`.images`: ``image.*`` (pull, push and build too) and ``auth.*``
- :mod:`.events`: ``events.subscribe``
- :mod:`.networks`: ``network.*``
- :mod:`.pods`: ``pod.*``
"""

from __future__ import annotations

from tugwire import jsonrpc

from ..core import Core
from .containers import ContainerApi
from .events import EventApi
from .images import ImageApi
from .networks import NetworkApi
from .pods import PodApi
from .system import SystemApi


class Api:
    """Every JSON-RPC method of tugd, on one dispatcher, over the services of ``core``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.dispatcher = d = jsonrpc.Dispatcher()
        SystemApi(core).register(d)
        ContainerApi(core).register(d)
        ImageApi(core).register(d)
        EventApi(core).register(d)
        NetworkApi(core.containers).register(d)
        PodApi(core.pods).register(d)


__all__ = ["Api"]
