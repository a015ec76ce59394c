#!/bin/sh
# Called by debian/rules (dh_auto_install): fills the package tree $1 with
#   /opt/tugboat/.venv          Debian's python3 -m venv, debian/requirements.txt, then the project
#   /opt/tugboat/README.md, docs/   the documentation the units' Documentation= name
#   /lib/systemd/system/        the units and sockets of systemd/
#   /usr/lib/tmpfiles.d/tugboat.conf
#   /usr/share/bash-completion/completions/tug   made from the CLI's command table
# The venv is built at its place inside $1 and its paths then rewritten to /opt/tugboat/.venv.
# No byte-code is shipped (postinst compiles it). pip reads PyPI (or PIP_INDEX_URL) and its cache.
set -eu
pkg=$1
venv=/opt/tugboat/.venv
stage=$pkg$venv

rm -rf "$stage"
/usr/bin/python3 -m venv "$stage"
pip() { "$stage/bin/python" -m pip --disable-pip-version-check --no-input -q "$@"; }
pip install --no-compile --no-deps --only-binary :all: -r debian/requirements.txt
# The project itself, from this tree (pip builds its wheel with setuptools in an isolated env).
pip install --no-compile --no-deps .
rm -rf build ./*.egg-info
# Not needed at run time: pip and setuptools go (and their console scripts with them).
pip uninstall -y setuptools pip
rm -f "$stage"/bin/activate* "$stage"/bin/Activate.ps1

# Completion for tug: the top-level commands of supervisor/cli/main.py's table.
commands=$("$stage/bin/python" -c 'from supervisor.cli.main import COMMAND_MODULES as t
print(" ".join(sorted(c for cs in t.values() for c in cs)))')
install -d "$pkg/usr/share/bash-completion/completions"
cat >"$pkg/usr/share/bash-completion/completions/tug" <<EOT
# bash completion for tug (made by debian/build-venv.sh from supervisor/cli/main.py)
_tug() {
    local cur=\${COMP_WORDS[COMP_CWORD]}
    if [ "\$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=(\$(compgen -W "$commands --help --socket" -- "\$cur"))
    else
        COMPREPLY=(\$(compgen -f -- "\$cur"))
    fi
}
complete -F _tug tug
EOT

# Only the console scripts are executable (some wheels mark their modules so).
find "$stage/lib" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec chmod a-x {} +
find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$stage" -name '*.pyc' -delete
# Paths: the staging directory becomes /opt/tugboat/.venv (shebangs, pyvenv.cfg, RECORD files).
grep -rlI -F "$stage" "$stage" | while read -r f; do
    sed -i "s#$stage#$venv#g" "$f"
done

install -d "$pkg/opt/tugboat/docs" "$pkg/lib/systemd/system" "$pkg/usr/lib/tmpfiles.d"
install -m 0644 README.md "$pkg/opt/tugboat/README.md"
install -m 0644 docs/*.md "$pkg/opt/tugboat/docs/"
install -m 0644 systemd/*.service systemd/*.socket "$pkg/lib/systemd/system/"
install -m 0644 systemd/tugboat.conf "$pkg/usr/lib/tmpfiles.d/tugboat.conf"
