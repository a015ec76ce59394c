#!/usr/bin/env bash
# Install tugd as a systemd service (also: `make install-systemd`). Run as root, after
# scripts/install.sh has made .venv:
#
#   /etc/systemd/system/tugd.service   ExecStart= this checkout's .venv/bin/tugd
#   /etc/systemd/system/tugd.socket    the API socket, /run/tugboat/tugd.sock, 0660 root:tugboat
#   /etc/systemd/system/tug-cri.service the Kubernetes CRI on /run/tugboat/cri.sock (needs tugd)
#   /etc/systemd/system/tug-docker-api.{service,socket}   the Docker API, /run/tugboat/docker.sock
#   /etc/tmpfiles.d/tugboat.conf       /run/tugboat (0710 root:tugboat) and /var/lib/tugboat (0700)
#
# and the `tugboat` system group (its members may use `tug` without root), then, if systemd is
# the init system, `systemd-tmpfiles --create` and `systemctl daemon-reload`. It starts nothing:
#
#   systemctl enable --now tugd.socket tugd.service
#
# With DESTDIR=/some/dir the files go under that directory instead, and nothing else is done
# (no group, no systemctl): for packaging, and for the tests, which run systemd-analyze verify
# on the result. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)
tugd="$repo/.venv/bin/tugd"
dest="${DESTDIR:-}"
unitdir="$dest/etc/systemd/system"
tmpfilesdir="$dest/etc/tmpfiles.d"

if [ ! -x "$tugd" ]; then
    echo "install-systemd: $tugd is missing: run scripts/install.sh first" >&2
    exit 1
fi
case "$repo" in
    *[[:space:]#\\]*)
        echo "install-systemd: the checkout's path may not contain spaces, '#' or '\\': $repo" >&2
        exit 1
        ;;
esac

install -d -m 0755 "$unitdir" "$tmpfilesdir"
# The shipped units name /opt/tugboat as the checkout; point them at this one.
# The front doors (tug-cri: docs/cri.md; tug-docker-api: docs/docker-api.md) are enabled separately.
for unit in tugd.service tug-cri.service tug-docker-api.service; do
    sed -e "s#/opt/tugboat/#$repo/#g" "systemd/$unit" >"$unitdir/.$unit.tmp"
    chmod 0644 "$unitdir/.$unit.tmp"
    mv -f "$unitdir/.$unit.tmp" "$unitdir/$unit"
done
install -m 0644 systemd/tugd.socket "$unitdir/tugd.socket"
install -m 0644 systemd/tug-docker-api.socket "$unitdir/tug-docker-api.socket"
install -m 0644 systemd/tugboat.conf "$tmpfilesdir/tugboat.conf"
echo "installed $unitdir/tugd.service (ExecStart=$tugd), $unitdir/tugd.socket, $unitdir/tug-cri.service," \
    "$unitdir/tug-docker-api.service, $unitdir/tug-docker-api.socket, $tmpfilesdir/tugboat.conf"

if [ -n "$dest" ]; then
    exit 0
fi
if ! getent group tugboat >/dev/null; then
    groupadd --system tugboat
    echo "created the tugboat group: add users with  usermod -aG tugboat NAME"
fi
# sd_booted(3): systemd is the init system iff /run/systemd/system exists.
if [ -d /run/systemd/system ]; then
    systemd-tmpfiles --create "$tmpfilesdir/tugboat.conf"
    systemctl daemon-reload
    echo "enable and start with:  systemctl enable --now tugd.socket tugd.service"
    echo "and for Kubernetes (kubelet --container-runtime-endpoint unix:///run/tugboat/cri.sock):" \
        " systemctl enable --now tug-cri.service"
    echo "the Docker API:         systemctl enable --now tug-docker-api.socket"
else
    echo "systemd is not the init system here (PID 1 is $(cat /proc/1/comm)): the units are in place" \
        "for when it is; start tugd by hand meanwhile: $tugd"
fi
