#!/usr/bin/env bash
# Set up everything and run the main job: tugd on its default roots (/var/lib/tugboat,
# /run/tugboat), a busybox image made from the host's busybox-static, a container in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
BIN="$PWD/.venv/bin"
TUG="$BIN/tug"

if ! "$TUG" info >/dev/null 2>&1; then
    mkdir -p /var/log
    echo "starting tugd (log: /var/log/tugd.log)"
    nohup "$BIN/tugd" >>/var/log/tugd.log 2>&1 </dev/null &
    for _ in $(seq 100); do "$TUG" info >/dev/null 2>&1 && break; sleep 0.1; done
fi

tar=$(mktemp --suffix=.tar)
"$BIN/python" scripts/make_busybox_rootfs.py "$tar"
echo "+ tug import $tar busybox"
"$TUG" import "$tar" busybox
rm -f "$tar"

"$TUG" rm -f demo >/dev/null 2>&1 || true
set -x
"$TUG" run --rm busybox echo "hello from a tugboat container"
"$TUG" run -d --name demo busybox sh -c 'echo "demo: up as pid $$ on $(hostname)"; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done'
sleep 2
"$TUG" ps
"$TUG" logs --tail 5 demo
"$TUG" stop -t 1 demo
"$TUG" ps -a
"$TUG" rm demo
"$TUG" images
set +x
echo
echo "tugd keeps running (pid $(pgrep -xf "$BIN/python3 $BIN/tugd" | head -1 || true)); try: $TUG run --rm busybox uname -a"
