# Shortcuts for the scripts in scripts/ (run as root on Debian 12).
.PHONY: install install-systemd test demo gen-cri cri-tools kubelet e2e-kubelet peers deb

install:  ## Debian packages and the project's .venv
	bash scripts/install.sh

install-systemd: install  ## tugd.service, tugd.socket, tmpfiles.d entry (DESTDIR= to stage elsewhere)
	bash scripts/install-systemd.sh

test:  ## ruff, mypy --strict, pytest
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

gen-cri:  ## regenerate the CRI stubs in cri/gen from cri/proto/api.proto
	bash scripts/gen-cri.sh

cri-tools:  ## build crictl and critest (Go module proxy) into /var/cache/tugboat-test-tools
	bash scripts/install-cri-tools.sh

kubelet:  ## build kubelet v1.36.3 (Go module proxy, a generated wrapper module) into /var/cache/tugboat-test-tools
	bash scripts/install-kubelet.sh

e2e-kubelet: kubelet  ## a static pod under a real standalone kubelet on tug-cri (tests/test_kubelet.py)
	.venv/bin/pytest -q -rsP tests/test_kubelet.py

peers:  ## unpack containerd, podman and dockerd 20.10 (Debian) into /var/cache/tugboat-peers: nothing started
	bash scripts/install-peers.sh

deb:  ## the Debian package dist/tugboat_<version>_amd64.deb (debian/; VERSION= to override the version)
	bash scripts/build-deb.sh $(if $(VERSION),--version $(VERSION))
