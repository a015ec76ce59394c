"""The Docker Engine API front door of Tugboat (``tug-docker-api``, issue 15).

A separate process and a client of tugd's JSON-RPC API (it imports only :mod:`tugwire`): it
serves HTTP/1.1 on a Unix socket, translates each Docker request into tugd calls, and holds no
state a restart would lose except the exec table (see :mod:`dockerapi.execs`). One adapter
module per noun: :mod:`.containers`, :mod:`.execs`, :mod:`.images`, :mod:`.networks`,
:mod:`.system`; the HTTP edge is :mod:`.http`, the request loop and routing :mod:`.server`, and
every output stream passes through the one seam in :mod:`.streams`. See docs/docker-api.md.
"""

from __future__ import annotations

API_VERSION = "1.43"  # the highest Docker API version honoured
MIN_API_VERSION = "1.24"
VERSION = "0.1.0"
