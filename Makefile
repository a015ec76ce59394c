# Shortcuts for the scripts in scripts/ (run as root on Debian 12).
.PHONY: install install-systemd test demo

install:  ## Debian packages and the project's .venv
	bash scripts/install.sh

install-systemd: install  ## tugd.service, tugd.socket, tmpfiles.d entry (DESTDIR= to stage elsewhere)
	bash scripts/install-systemd.sh

test:  ## ruff, mypy --strict, pytest
	bash scripts/test.sh

demo:
	bash scripts/demo.sh
