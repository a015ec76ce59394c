#!/usr/bin/env bash
# Build the Debian package (also: `make deb`): dpkg-buildpackage -b -us -uc on a copy of this tree
# (debian/ at its top), so that nothing is written into the checkout or beside it.
#
#   scripts/build-deb.sh [--version V] [--out DIR] [--cache DIR]
#
#   --version V   the package's version instead of debian/changelog's (an entry is added to the
#                 copy's changelog; the Python project's version stays pyproject.toml's)
#   --out DIR     where tugboat_<version>_<arch>.deb goes (default: dist/)
#   --cache DIR   reuse a package built from the same sources and version, kept in DIR/<hash>/
#                 (the 8 newest kept)
#
# Prints the .deb's path. Needs debhelper and python3-venv (scripts/install.sh), and PyPI (or
# PIP_INDEX_URL) for debian/requirements.txt. Lint with: lintian dist/tugboat_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd -P)

version="" out="$repo/dist" cache=""
while [ $# -gt 0 ]; do
    case "$1" in
        --version) version=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        *) echo "build-deb: unknown argument '$1' (--version V, --out DIR, --cache DIR)" >&2; exit 2 ;;
    esac
done
[ -n "$version" ] || version=$(dpkg-parsechangelog -S Version)
case "$version" in
    [0-9]*) ;;
    *) echo "build-deb: bad version '$version'" >&2; exit 2 ;;
esac
arch=$(dpkg --print-architecture)
deb="tugboat_${version}_${arch}.deb"

# What the package is made of (tracked and new files, not ignored ones), existing files only.
mapfile -t files < <(git ls-files -co --exclude-standard -- pyproject.toml README.md docs debian systemd \
    tugwire shimd supervisor cri dockerapi | while read -r f; do [ -f "$f" ] && echo "$f"; done | sort -u)
mkdir -p "$out"
if [ -n "$cache" ]; then
    key=$( (echo "$version $arch"; sha256sum "${files[@]}") | sha256sum | cut -c1-16)
    if [ -s "$cache/$key/$deb" ]; then
        cp -f "$cache/$key/$deb" "$out/$deb"
        echo "$out/$deb"
        exit 0
    fi
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/tugboat-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src="$work/tugboat-$version"
mkdir -p "$src"
tar -cf - "${files[@]}" | tar -xf - -C "$src"
if [ "$version" != "$(dpkg-parsechangelog -S Version)" ]; then
    {
        printf 'tugboat (%s) bookworm; urgency=medium\n\n  * Built with --version %s.\n\n' "$version" "$version"
        printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -S Maintainer)" "$(date -R)"
        cat debian/changelog
    } >"$src/debian/changelog"
fi
(cd "$src" && dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) || {
    tail -n 40 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
cp -f "$work/$deb" "$out/$deb"
if [ -n "$cache" ]; then
    mkdir -p "$cache/$key"
    cp -f "$work/$deb" "$cache/$key/.$deb.tmp"
    mv -f "$cache/$key/.$deb.tmp" "$cache/$key/$deb"
    # Keep the 8 newest builds (each source change makes new ones).
    find "$cache" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +9 | cut -d' ' -f2- |
        while read -r old; do rm -rf "$old"; done
fi
echo "$out/$deb"
