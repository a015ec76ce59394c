#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy --strict), then pytest (unit and integration tests
# with real tugd, shims, runc and containers; needs root). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# crictl and critest (Go, from the module proxy; cached outside the repo, built once per machine)
bash scripts/install-cri-tools.sh >/dev/null
# containerd, podman, dockerd 20.10 unpacked (not installed, nothing started) for the reference
# tests; if Debian's archive cannot be reached they skip, saying why, and the rest still runs
bash scripts/install-peers.sh || echo "test.sh: scripts/install-peers.sh FAILED: tests/test_docker_reference.py will skip" >&2
.venv/bin/ruff check tugwire shimd supervisor cri dockerapi tests bench scripts
.venv/bin/ruff format --check tugwire shimd supervisor cri dockerapi tests bench scripts
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
[ "$code" -eq 5 ] && { echo "no tests ran"; exit 1; }
exit "$code"
