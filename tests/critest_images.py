"""critest's test images as look-alikes built from busybox by tugd itself (``tug build``, COPY
and metadata only: no RUN, so no container runs), pushed to a ``docker-registry`` that runs in
the test's network namespace, and served to tugd through its registry mirror map
(``tugd --registry-mirror registry.k8s.io=http://127.0.0.1:PORT``, the same for gcr.io and
k8s.gcr.io): the images keep the names critest asks for. The registry's storage is cached under
/var/cache/tugboat-test-tools/, keyed by a hash of this file and of the busybox tarball, so
only the first run on a machine builds (seconds).

What each look-alike carries (cri-tools v1.37.0, ``pkg/validate``): the users and groups of the
image tests (uid 1002; www-data; 1003:1003; www-data:www-data; uid 1000 in group 50000), the
tags (``test-image-tags:1..3`` one image, ``test-image-1..3`` three), web servers (busybox
``httpd``) on port 80 (nginx, httpd; nginx writes /var/run/nginx.pid) and 12003
(hostnet-nginx), a set-uid program printing ``Effective uid: N`` (nonewprivs), and
``registry.k8s.io/pause:3.9`` the same image as ``k8s.gcr.io/pause:3.9``. The digest-pinned
``test-image-digest@sha256:9700f9a2...`` cannot be made: its spec fails.

``/bin/sh`` is Debian's dynamically linked busybox (package ``busybox``, fetched once with
``apt-get download`` into the cache; not installed: it conflicts with ``busybox-static``) with
its libraries: its ash finds commands on PATH as the real busybox images' does, where
``busybox-static``'s runs applets such as ``ls`` in-process (so that masking /bin/ls would not
bite, and its error would not be the ``/bin/sh: ls: Permission denied`` critest expects)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

from .waiting import wait_until

CACHE = "/var/cache/tugboat-test-tools"
MIRRORED = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")
E2E = "e2e-test-images"
STAGING = "k8s-staging-cri-tools"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "www-data:x:33:33:www-data:/var/www:/bin/sh\n"
    "default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = (
    "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\n"
    "group-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n"
)
IPCS = "#!/bin/sh\ncat /proc/sysvipc/shm\n"  # the table of shared memory segments
PGREP = (  # the pids of the processes whose name has $1
    "#!/bin/sh\nfound=1\nfor d in /proc/[0-9]*; do\n"
    '  c=$(cat "$d/comm" 2>/dev/null) || continue\n'
    '  case "$c" in *"$1"*) [ "${d#/proc/}" != "$$" ] && echo "${d#/proc/}" && found=0;; esac\n'
    "done\nexit $found\n"
)
NNP_C = (
    "#include <stdio.h>\n#include <unistd.h>\n"
    'int main(void) { printf("Effective uid: %d\\n", (int)geteuid()); return 0; }\n'
)


def _web(name: str, port: int, pidfile: str | None = None) -> str:
    """busybox httpd on ``port``, which first says its name on stdout, as the real servers log
    (critest looks for "httpd" in the httpd container's log). nginx: a copy of busybox named so
    (``pidof nginx`` finds it) run as its httpd applet, its pid in ``pidfile``, under a shell as
    PID 1 whose command line says "master process", as nginx's own does."""
    say = f"echo {name} listening on port {port}; "
    docroot = f"-f -p {port} -h /usr/share/nginx/html"
    if name != "nginx":
        cmd = ["sh", "-c", f"{say}exec httpd {docroot}"]
        copy = ""
    else:
        script = f"trap 'exit 0' TERM; {say}exec -a httpd /usr/sbin/nginx {docroot} & "
        if pidfile:
            script += f"mkdir -p /var/run; echo $! > {pidfile}; "
        cmd = ["sh", "-c", script + "wait", "nginx: master process"]
        copy = "COPY nginx /usr/sbin/nginx\n"
    return f"{copy}COPY index.html /usr/share/nginx/html/index.html\nCMD {json.dumps(cmd)}\n"


# repository path (under every mirrored registry) -> Dockerfile lines after FROM busybox
IMAGES: dict[str, str] = {
    f"{E2E}/busybox:1.29-2": "",
    f"{E2E}/nginx:1.14-2": _web("nginx", 80, "/var/run/nginx.pid"),
    f"{E2E}/httpd:2.4.39-4": _web("httpd", 80),
    f"{E2E}/nonewprivs:1.3": 'COPY nnp /usr/local/bin/nnp\nENTRYPOINT ["/usr/local/bin/nnp"]\n',
    "pause:3.9": 'ENTRYPOINT ["sleep", "2147483647"]\n',
    f"{STAGING}/test-image-latest:latest": "LABEL image=latest\n",
    f"{STAGING}/test-image-tag:test": "LABEL image=tag\n",
    f"{STAGING}/test-image-tag:all": "LABEL image=tag-all\n",
    f"{STAGING}/test-image-1:latest": "LABEL image=1\n",
    f"{STAGING}/test-image-2:latest": "LABEL image=2\n",
    f"{STAGING}/test-image-3:latest": "LABEL image=3\n",
    f"{STAGING}/test-image-tags:1": "LABEL image=tags\n",
    f"{STAGING}/test-image-user-uid:latest": "USER 1002\n",
    f"{STAGING}/test-image-user-username:latest": "USER www-data\n",
    f"{STAGING}/test-image-user-uid-group:latest": "USER 1003:1003\n",
    f"{STAGING}/test-image-user-username-group:latest": "USER www-data:www-data\n",
    f"{STAGING}/test-image-predefined-group:latest": "USER 1000\n",
    f"{STAGING}/hostnet-nginx-amd64:latest": _web("nginx", 12003),
}
SAME_AS = {  # more names of one image
    f"{STAGING}/test-image-tags:2": f"{STAGING}/test-image-tags:1",
    f"{STAGING}/test-image-tags:3": f"{STAGING}/test-image-tags:1",
}


def recipe_key() -> str:
    """What the look-alikes are made of: this file, the rootfs script and the host's busybox."""
    import make_busybox_rootfs

    h = hashlib.sha256()
    for path in (__file__, make_busybox_rootfs.__file__, "/bin/busybox"):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def shell_busybox() -> str:
    """Debian's dynamically linked busybox (no in-process applets), extracted into the cache."""
    dest = os.path.join(CACHE, "busybox-dynamic")
    binary = os.path.join(dest, "bin", "busybox")
    if os.path.exists(binary):
        return binary
    os.makedirs(CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bbdeb", dir=CACHE)
    try:
        subprocess.run(["apt-get", "download", "busybox"], cwd=tmp, check=True, capture_output=True)
        deb = next(os.path.join(tmp, n) for n in os.listdir(tmp) if n.endswith(".deb"))
        subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")], check=True)
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(os.path.join(tmp, "x"), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


def _shell_files(ctx: str) -> None:
    """``sh`` (the dynamic busybox) and ``root/`` (its libraries at their paths) in ``ctx``."""
    shell = shell_busybox()
    shutil.copy(shell, os.path.join(ctx, "sh"))
    out = subprocess.run(["ldd", shell], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        words = line.split()
        path = words[2] if len(words) > 2 and words[1] == "=>" else words[0]
        if not path.startswith("/"):
            continue  # the vdso
        target = os.path.join(ctx, "root", path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(path, target)  # the file, not the symlink


def _context(base: str, lines: str) -> str:
    ctx = tempfile.mkdtemp(prefix="ctx", dir=base)
    files = {"passwd": PASSWD, "group": GROUP, "index.html": "<html><body>look-alike</body></html>\n"}
    for name, text in files.items():
        with open(os.path.join(ctx, name), "w") as f:
            f.write(text)
    # /bin/ls a file of its own (in busybox's images the applets are hard links: masking
    # /bin/ls must not mask the shell); ipcs and pgrep, not applets of Debian's busybox.
    shutil.copy("/bin/busybox", os.path.join(ctx, "ls"))
    if "COPY nginx" in lines:
        shutil.copy("/bin/busybox", os.path.join(ctx, "nginx"))
    for name, text in (("ipcs", IPCS), ("pgrep", PGREP)):
        with open(os.path.join(ctx, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(ctx, name), 0o755)
    if "COPY nnp" in lines:
        src = os.path.join(ctx, "nnp.c")
        with open(src, "w") as f:
            f.write(NNP_C)
        subprocess.run(["cc", "-static", "-O2", "-o", os.path.join(ctx, "nnp"), src], check=True)
        os.chmod(os.path.join(ctx, "nnp"), 0o4755)
        os.unlink(src)
    _shell_files(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(
            "FROM busybox\nCOPY passwd group /etc/\nCOPY ls ipcs pgrep sh /bin/\nCOPY root/ /\n"
            'CMD ["sh"]\n' + lines
        )
    return ctx


def build_and_push(daemon: Any, host: str) -> None:
    """Build every look-alike with ``daemon`` (busybox imported) and push it to ``host``; the
    local names are removed after, so that tugd starts without them."""
    refs = []
    for path, lines in IMAGES.items():
        ref = f"{host}/{path}"
        daemon.tug("build", "-q", "-t", ref, _context(daemon.base, lines), timeout=120)
        refs.append(ref)
    for path, same in SAME_AS.items():
        daemon.tug("tag", f"{host}/{same}", f"{host}/{path}")
        refs.append(f"{host}/{path}")
    for ref in refs:
        daemon.tug("push", ref, timeout=120)
    for ref in refs:
        daemon.tug("rmi", ref)


class NetnsRegistry:
    """docker-registry serving ``data`` on 127.0.0.1:``port`` inside the network namespace
    ``netns`` (where tugd pulls from it); killed by its pid."""

    def __init__(self, base: str, netns: str, data: str, port: int = 5000) -> None:
        self.base, self.netns, self.data, self.port = base, netns, data, port
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        self.config_path = os.path.join(base, "registry.yml")
        with open(self.config_path, "w") as f:
            f.write(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n"
            )
        self.log_path = os.path.join(base, "registry.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def _nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}"]

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self._nsenter(), "docker-registry", "serve", self.config_path],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.read_log()
            r = subprocess.run(
                [*self._nsenter(), "busybox", "wget", "-q", "-O", "/dev/null", self.url + "/v2/"],
                capture_output=True,
                check=False,
            )
            return r.returncode == 0

        wait_until(ready, 30, "docker-registry to be ready", interval=0.1, describe=self.read_log)

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def critest_registry(make_daemon: Any, netns: str) -> Iterator[NetnsRegistry]:
    """A registry in ``netns`` holding every look-alike: from the cache, or built (by a tugd of
    its own in ``netns``) and cached."""
    base = tempfile.mkdtemp(prefix="ctr", dir="/tmp")
    cached = os.path.join(CACHE, f"critest-registry-{recipe_key()}")
    data = os.path.join(base, "data")
    reg = NetnsRegistry(base, netns, data)
    try:
        if os.path.isdir(cached):
            shutil.copytree(cached, data, symlinks=True)
            reg.start()
        else:
            os.makedirs(data)
            reg.start()
            builder = make_daemon(netns=netns)
            build_and_push(builder, reg.host)
            builder.stop()
            os.makedirs(CACHE, exist_ok=True)
            tmp = cached + f".tmp{os.getpid()}"
            shutil.copytree(data, tmp, symlinks=True)
            os.rename(tmp, cached)
            for name in os.listdir(CACHE):  # the look-alikes of an older recipe
                if (
                    name.startswith("critest-registry-")
                    and ".tmp" not in name
                    and name != os.path.basename(cached)
                ):
                    shutil.rmtree(os.path.join(CACHE, name), ignore_errors=True)
        yield reg
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


def mirror_args(reg: NetnsRegistry) -> list[str]:
    return [a for r in MIRRORED for a in ("--registry-mirror", f"{r}={reg.url}")]
