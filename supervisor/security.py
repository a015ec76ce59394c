"""A container's security profile: capabilities, seccomp, no-new-privileges, masked and
read-only paths, and what ``--privileged``, ``--cap-add``, ``--cap-drop`` and ``--security-opt``
change.

The defaults are docker's: its default capability set, its masked and read-only ``/proc`` and
``/sys`` paths, and its default seccomp profile (moby's ``profiles/seccomp/default.json``, kept
here as data in the same form and rendered into the OCI ``linux.seccomp`` of the host's
architecture for the container's capabilities). One difference: ``noNewPrivileges`` is on by
default (docker leaves it to a daemon option); ``--security-opt no-new-privileges=false`` turns it
off, and so does ``--privileged``.

:func:`parse` validates the create options into a small dict stored with the container;
:func:`apply` writes that dict into an OCI spec.
"""

from __future__ import annotations

import json
import platform
from typing import Any

from tugwire.errors import InvalidArgument

DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]

# Every capability by its number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE.
ALL_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]

MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

# ------------------------------------------------------------------------- the seccomp profile
# moby's profiles/seccomp/default.json (Apache-2.0), as data in the same form: what is allowed
# to everyone, then rules that hold for some architectures, capabilities or kernels only.
_ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2
dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64
fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs
fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv futimesat getcpu getcwd
getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32
getresuid getresuid32 getrlimit get_robust_list getrusage getsid getsockname getsockopt
get_thread_area gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents
io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register
io_uring_setup ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr
lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv
msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect open
openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit
umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid
waitpid write writev
"""

_CLONE_NS_FLAGS = 2114060288  # CLONE_NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP


def _allow(names: str, **extra: Any) -> dict[str, Any]:
    return {"names": names.split(), "action": "SCMP_ACT_ALLOW", **extra}


def _caps(*caps: str) -> dict[str, Any]:
    return {"caps": list(caps)}


def _arg(index: int, value: int, op: str) -> list[dict[str, Any]]:
    return [{"index": index, "value": value, "op": op}]


DEFAULT_SECCOMP: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,  # EPERM
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
        {"architecture": "SCMP_ARCH_MIPS64", "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"]},
        {"architecture": "SCMP_ARCH_MIPS64N32", "subArchitectures": ["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64"]},
        {
            "architecture": "SCMP_ARCH_MIPSEL64",
            "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32"],
        },
        {
            "architecture": "SCMP_ARCH_MIPSEL64N32",
            "subArchitectures": ["SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64"],
        },
        {"architecture": "SCMP_ARCH_S390X", "subArchitectures": ["SCMP_ARCH_S390"]},
        {"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": None},
    ],
    "syscalls": [
        _allow(_ALLOWED),
        _allow("process_vm_readv process_vm_writev ptrace", includes={"minKernel": "4.8"}),
        _allow("socket", args=_arg(0, 40, "SCMP_CMP_NE")),  # not AF_VSOCK
        *[
            _allow("personality", args=_arg(0, persona, "SCMP_CMP_EQ"))
            for persona in (0, 8, 131072, 131080, 4294967295)
        ],
        _allow("sync_file_range2 swapcontext", includes={"arches": ["ppc64le"]}),
        _allow(
            "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls",
            includes={"arches": ["arm", "arm64"]},
        ),
        _allow("arch_prctl", includes={"arches": ["amd64", "x32"]}),
        _allow("modify_ldt", includes={"arches": ["amd64", "x32", "x86"]}),
        _allow(
            "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr",
            includes={"arches": ["s390", "s390x"]},
        ),
        _allow("riscv_flush_icache", includes={"arches": ["riscv64"]}),
        _allow("open_by_handle_at", includes=_caps("CAP_DAC_READ_SEARCH")),
        _allow(
            "bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount "
            "mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname "
            "sethostname setns syslog umount umount2 unshare",
            includes=_caps("CAP_SYS_ADMIN"),
        ),
        _allow(
            "clone",
            args=_arg(0, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ"),
            excludes={"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]},
        ),
        _allow(
            "clone",
            args=_arg(1, _CLONE_NS_FLAGS, "SCMP_CMP_MASKED_EQ"),
            includes={"arches": ["s390", "s390x"]},
            excludes=_caps("CAP_SYS_ADMIN"),
        ),
        # clone3's flags are in a struct seccomp cannot read: ENOSYS, so libc falls back to clone.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": _caps("CAP_SYS_ADMIN")},
        _allow("reboot", includes=_caps("CAP_SYS_BOOT")),
        _allow("chroot", includes=_caps("CAP_SYS_CHROOT")),
        _allow("delete_module init_module finit_module", includes=_caps("CAP_SYS_MODULE")),
        _allow("acct", includes=_caps("CAP_SYS_PACCT")),
        _allow(
            "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
            includes=_caps("CAP_SYS_PTRACE"),
        ),
        _allow("iopl ioperm", includes=_caps("CAP_SYS_RAWIO")),
        _allow("settimeofday stime clock_settime clock_settime64", includes=_caps("CAP_SYS_TIME")),
        _allow("vhangup", includes=_caps("CAP_SYS_TTY_CONFIG")),
        _allow("get_mempolicy mbind set_mempolicy set_mempolicy_home_node", includes=_caps("CAP_SYS_NICE")),
        _allow("syslog", includes=_caps("CAP_SYSLOG")),
        _allow("bpf", includes=_caps("CAP_BPF")),
        _allow("perf_event_open", includes=_caps("CAP_PERFMON")),
    ],
}

# Go's names of architectures (what the profile's "arches" say) and libseccomp's, by uname -m.
_GO_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_SCMP_ARCH = {
    "x86_64": "SCMP_ARCH_X86_64",
    "aarch64": "SCMP_ARCH_AARCH64",
    "armv7l": "SCMP_ARCH_ARM",
    "i686": "SCMP_ARCH_X86",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
}
_ACTIONS = {
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
}
_OPS = {
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
}
MAX_PROFILE = 1 << 20  # bytes of a custom seccomp profile


def _kernel_version() -> tuple[int, ...]:
    release = platform.release().split("-")[0]
    return tuple(int(p) for p in release.split(".")[:2] if p.isdigit())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def render_seccomp(profile: dict[str, Any], caps: list[str], machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` of a docker-format profile, for this host's architecture and a
    process with ``caps``: ``includes``/``excludes`` decided, ``archMap`` reduced to the host's."""
    machine = machine or platform.machine()
    go_arch = _GO_ARCH.get(machine, machine)
    kernel = _kernel_version()
    have = set(caps)
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    arches = list(profile.get("architectures") or [])
    if not arches:
        native = _SCMP_ARCH.get(machine)
        for entry in profile.get("archMap") or []:
            if entry.get("architecture") == native:
                arches = [native, *(entry.get("subArchitectures") or [])]
    if arches:
        out["architectures"] = arches
    rules = []
    for rule in profile.get("syscalls") or []:
        inc = rule.get("includes") or {}
        exc = rule.get("excludes") or {}
        if inc.get("arches") and go_arch not in inc["arches"]:
            continue
        if inc.get("caps") and not set(inc["caps"]) <= have:
            continue
        if inc.get("minKernel") and kernel < _version(inc["minKernel"]):
            continue
        if exc.get("arches") and go_arch in exc["arches"]:
            continue
        if exc.get("caps") and set(exc["caps"]) & have:
            continue
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        oci: dict[str, Any] = {"names": names, "action": rule["action"]}
        if "errnoRet" in rule:
            oci["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            oci["args"] = [
                {"index": a["index"], "value": a["value"], "valueTwo": a.get("valueTwo", 0), "op": a["op"]}
                for a in rule["args"]
            ]
        rules.append(oci)
    out["syscalls"] = rules
    return out


def _check_profile(text: str) -> dict[str, Any]:
    """A custom seccomp profile (docker's format, or the OCI one): parsed and checked."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid seccomp profile: {why}", field="security_opt")

    if len(text) > MAX_PROFILE:
        raise bad(f"larger than {MAX_PROFILE} bytes")
    try:
        profile = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(profile, dict):
        raise bad("not a JSON object")
    if profile.get("defaultAction") not in _ACTIONS:
        raise bad(f"defaultAction must be one of {', '.join(sorted(_ACTIONS))}")
    for key in ("defaultErrnoRet",):
        if key in profile and (not isinstance(profile[key], int) or isinstance(profile[key], bool)):
            raise bad(f"{key} must be an integer")
    for key in ("architectures", "archMap", "syscalls"):
        if profile.get(key) is not None and not isinstance(profile[key], list):
            raise bad(f"{key} must be a list")
    if not all(isinstance(a, str) for a in profile.get("architectures") or []):
        raise bad("architectures must be strings")
    for entry in profile.get("archMap") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise bad("each archMap entry needs an architecture")
        sub = entry.get("subArchitectures")
        if sub is not None and not (isinstance(sub, list) and all(isinstance(s, str) for s in sub)):
            raise bad("subArchitectures must be a list of strings")
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict):
            raise bad("each syscalls entry must be an object")
        names = rule.get("names", [rule.get("name")] if "name" in rule else None)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise bad("each syscalls entry needs names (a list of syscall names)")
        if rule.get("action") not in _ACTIONS:
            raise bad(f"unknown action {rule.get('action')!r} for {names[0]}")
        for cond in ("includes", "excludes"):
            if rule.get(cond) is not None and not isinstance(rule[cond], dict):
                raise bad(f"{cond} must be an object")
            for k in ("arches", "caps"):
                value = (rule.get(cond) or {}).get(k)
                if value is not None and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)
                ):
                    raise bad(f"{cond}.{k} must be a list of strings")
            min_kernel = (rule.get(cond) or {}).get("minKernel")
            if min_kernel is not None and not isinstance(min_kernel, str):
                raise bad(f"{cond}.minKernel must be a string")
        if "errnoRet" in rule and (
            not isinstance(rule["errnoRet"], int) or isinstance(rule["errnoRet"], bool)
        ):
            raise bad("errnoRet must be an integer")
        args = rule.get("args") or []
        if not isinstance(args, list):
            raise bad("args must be a list")
        for a in args:
            if (
                not isinstance(a, dict)
                or not all(
                    isinstance(a.get(k, 0), int) and not isinstance(a.get(k, 0), bool)
                    for k in ("index", "value", "valueTwo")
                )
                or not 0 <= a.get("index", -1) <= 5
                or a.get("op") not in _OPS
            ):
                raise bad(f"bad args for {names[0]}: want index 0-5, value, op SCMP_CMP_*")
    return profile


# ----------------------------------------------------------------------------- create options


def cap_name(raw: str) -> str:
    """``net_admin``, ``NET_ADMIN`` or ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``ALL`` stays."""
    if not isinstance(raw, str):
        raise InvalidArgument(f"invalid capability {raw!r}", field="cap_add")
    name = raw.strip().upper()
    if name == "ALL":
        return name
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in ALL_CAPS:
        raise InvalidArgument(f"unknown capability {raw!r}", field="cap_add")
    return name


def available_caps() -> list[str]:
    """The capabilities tugd itself may hand on (its bounding set; a host that runs tugd in a
    restricted environment has fewer than :data:`ALL_CAPS`): what ``ALL`` means, as docker's."""
    bounding = (1 << len(ALL_CAPS)) - 1
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    bounding = int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return [c for i, c in enumerate(ALL_CAPS) if bounding >> i & 1]


def capabilities(privileged: bool, cap_add: list[str], cap_drop: list[str]) -> list[str]:
    """The container's capability set, as docker computes it: ``ALL`` in ``cap_add`` starts from
    every capability, ``ALL`` in ``cap_drop`` from none, else from the defaults; then the named
    drops go and the named adds come (an add wins over a drop of the same name). ``ALL`` is what
    the host allows (:func:`available_caps`); naming a capability it does not is an error."""
    every = available_caps()
    for c in cap_add:
        if c != "ALL" and c not in every:
            raise InvalidArgument(
                f"capability {c} is not available on this host (not in tugd's bounding set)",
                field="cap_add",
            )
    if privileged:
        return every
    if "ALL" in cap_add:
        base = every
    elif "ALL" in cap_drop:
        base = []
    else:
        base = list(DEFAULT_CAPS)
    drops = {c for c in cap_drop if c != "ALL"}
    adds = [c for c in cap_add if c != "ALL"]
    caps = [c for c in base if c not in drops]
    caps += [c for c in adds if c not in caps]
    return caps


def parse(
    privileged: bool,
    cap_add: list[str],
    cap_drop: list[str],
    security_opt: list[str],
    *,
    no_new_privileges: bool | None = None,
    seccomp: str | None = None,
    masked_paths: list[str] | None = None,
    readonly_paths: list[str] | None = None,
) -> dict[str, Any]:
    """The security part of ``container.create``'s options, validated: ``privileged``,
    ``caps`` (the final set), ``no_new_privileges``, ``seccomp`` ("default", "unconfined" or a
    profile object), and, when given, ``masked_paths`` and ``readonly_paths`` (else the
    defaults). The typed options (the CRI's: ``no_new_privileges``, ``seccomp`` as "default",
    "unconfined" or the absolute path of a profile file, the paths) override ``security_opt``.
    Raises InvalidArgument naming the bad option."""
    add = [cap_name(c) for c in cap_add]
    drop = []
    for c in cap_drop:
        try:
            drop.append(cap_name(c))
        except InvalidArgument as exc:
            raise InvalidArgument(exc.message, field="cap_drop") from None
    nnp = not privileged
    chosen: str | dict[str, Any] = "unconfined" if privileged else "default"
    for opt in security_opt:
        if not isinstance(opt, str):
            raise InvalidArgument(f"invalid security option {opt!r}", field="security_opt")
        key, sep, value = opt.partition("=")
        if not sep and ":" in opt and key.startswith("no-new-privileges"):
            key, _, value = opt.partition(":")  # docker's old form
            sep = ":"
        key = key.strip()
        if key == "no-new-privileges":
            if not sep or value in ("true", "1"):
                nnp = True
            elif value in ("false", "0"):
                nnp = False
            else:
                raise InvalidArgument(
                    f"invalid security option {opt!r}: no-new-privileges takes true or false",
                    field="security_opt",
                )
        elif key == "seccomp" and sep:
            if value == "unconfined":
                chosen = "unconfined"
            elif value in ("builtin", "default"):
                chosen = "default"
            else:
                chosen = _check_profile(value)
        elif key in ("apparmor", "label") and sep:
            # Neither AppArmor nor SELinux is applied by tugd: the options are accepted (compose
            # files carry them) and change nothing.
            continue
        else:
            raise InvalidArgument(
                f"invalid security option {opt!r}: want no-new-privileges[=true|false], "
                "seccomp=unconfined|builtin|<profile JSON>",
                field="security_opt",
            )
    if no_new_privileges is not None:
        nnp = no_new_privileges
    if seccomp is not None and not privileged:
        chosen = _seccomp_option(seccomp)
    out: dict[str, Any] = {
        "privileged": privileged,
        "caps": capabilities(privileged, add, drop),
        "no_new_privileges": nnp,
        "seccomp": chosen,
    }
    for key, paths in (("masked_paths", masked_paths), ("readonly_paths", readonly_paths)):
        if paths is not None:
            for path in paths:
                if not path.startswith("/") or "\x00" in path or ".." in path.split("/"):
                    raise InvalidArgument(f"{key}: {path!r} must be an absolute path without '..'", field=key)
            out[key] = list(paths)
    return out


def _seccomp_option(value: str) -> str | dict[str, Any]:
    """The typed ``seccomp`` option: "default", "unconfined", or a profile file (docker's or
    the OCI format) by absolute path, read now: a container keeps the profile it was made with."""
    if value in ("default", "unconfined"):
        return value
    if not value.startswith("/") or "\x00" in value:
        raise InvalidArgument(
            f"seccomp {value!r}: want default, unconfined or the absolute path of a profile", field="seccomp"
        )
    try:
        with open(value, "rb") as f:
            text = f.read(MAX_PROFILE + 1)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the seccomp profile {value}: {exc.strerror}", field="seccomp"
        ) from None
    try:
        return _check_profile(text.decode())
    except UnicodeDecodeError:
        raise InvalidArgument(f"the seccomp profile {value} is not UTF-8 text", field="seccomp") from None
    except InvalidArgument as exc:
        raise InvalidArgument(f"{value}: {exc.message}", field="seccomp") from None


DEFAULTS: dict[str, Any] = {
    "privileged": False,
    "caps": DEFAULT_CAPS,
    "no_new_privileges": True,
    "seccomp": "default",
}


def apply(oci: dict[str, Any], sec: dict[str, Any] | None) -> None:
    """Write the profile ``sec`` (from :func:`parse`; None: the defaults) into the OCI spec."""
    sec = sec or DEFAULTS
    caps = list(sec["caps"])
    process = oci["process"]
    process["capabilities"] = {k: list(caps) for k in ("bounding", "effective", "permitted")}
    process["noNewPrivileges"] = bool(sec["no_new_privileges"])
    linux = oci["linux"]
    seccomp = sec["seccomp"]
    if seccomp == "default":
        linux["seccomp"] = render_seccomp(DEFAULT_SECCOMP, caps)
    elif isinstance(seccomp, dict):
        linux["seccomp"] = render_seccomp(seccomp, caps)
    else:
        linux.pop("seccomp", None)
    if sec["privileged"]:
        linux["maskedPaths"] = []
        linux["readonlyPaths"] = []
        # Every device may be created and used; /sys and the cgroup tree are writable.
        linux["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        for mount in oci["mounts"]:
            if mount["destination"] in ("/sys", "/sys/fs/cgroup"):
                mount["options"] = [o for o in mount["options"] if o != "ro"] + ["rw"]
    else:
        linux["maskedPaths"] = list(sec.get("masked_paths", MASKED_PATHS))
        linux["readonlyPaths"] = list(sec.get("readonly_paths", READONLY_PATHS))
