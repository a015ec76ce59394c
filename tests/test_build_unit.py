"""The pure parts of ``tug build``: the Dockerfile parser and its variable substitution,
``.dockerignore`` matching, and overlay upper dirs turned into layer tars and back."""

from __future__ import annotations

import io
import os
import pathlib
import stat
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.build import layers
from supervisor.build.dockerfile import DockerfileError, expand, expand_words, key_values, parse
from supervisor.build.dockerignore import DockerIgnore
from supervisor.cli.build import build_args
from tugwire.errors import InvalidArgument

from .conftest import needs_root

# ------------------------------------------------------------------------------------ parser


def test_parse_continuations_comments_and_forms() -> None:
    df = parse(
        "# a comment\n"
        "FROM busybox AS base\n"
        "\n"
        "RUN echo a \\\n"
        "  # a comment inside the continuation is dropped\n"
        "\n"
        "  && echo b\n"
        'CMD ["sh", "-c", "echo hi"]\n'
        "ENTRYPOINT [not json\n"
        "COPY --chown=tug:tug --chmod=640 a* /dst/\n"
        "run lower case works\n"
    )
    kws = [(i.keyword, i.line) for i in df.instructions]
    assert kws == [("FROM", 2), ("RUN", 4), ("CMD", 8), ("ENTRYPOINT", 9), ("COPY", 10), ("RUN", 11)]
    run = df.instructions[1]
    assert run.rest == "echo a   && echo b"
    assert run.exec_form is None
    assert df.instructions[2].exec_form == ["sh", "-c", "echo hi"]
    assert df.instructions[3].exec_form is None  # not JSON: the shell form, as docker
    assert df.instructions[3].rest == "[not json"
    copy = df.instructions[4]
    assert copy.flags == {"chown": "tug:tug", "chmod": "640"}
    assert copy.rest == "a* /dst/"


def test_escape_directive_changes_the_continuation_character() -> None:
    df = parse("# escape=`\nFROM busybox\nRUN echo C:\\path `\n  more\n")
    assert df.escape == "`"
    assert df.instructions[1].rest == "echo C:\\path   more"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("RUN echo\n", "line 1: the first instruction must be FROM"),
        ("FROM busybox\nFROB x\n", "line 2: unknown instruction: FROB"),
        ("FROM busybox\nONBUILD FROM alpine\n", "line 2: FROM isn't allowed as an ONBUILD trigger"),
        ("FROM busybox\nONBUILD ONBUILD RUN x\n", "line 2: ONBUILD isn't allowed as an ONBUILD trigger"),
        ("FROM busybox\nONBUILD FROB x\n", "line 2: unknown instruction: FROB"),
        ("FROM busybox\nADD --from=0 a b\n", "line 2: unknown flag for ADD: --from"),
        ("FROM busybox\nMAINTAINER me\n", "line 2: MAINTAINER is not supported"),
        ("FROM busybox\nCOPY --owner=1 a b\n", "line 2: unknown flag for COPY: --owner"),
        ("FROM busybox\nCOPY --chown a b\n", "line 2: flag --chown of COPY needs a value"),
        ("FROM busybox\nRUN\n", "line 2: RUN requires at least one argument"),
        ("FROM busybox\nENV\n", "line 2: ENV requires at least one argument"),
        ("# escape=x\nFROM busybox\n", "line 1: invalid escape token"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    assert message in info.value.message
    assert isinstance(info.value, InvalidArgument)


def test_expand_variables_quotes_and_escapes() -> None:
    env = {"X": "x", "EMPTY": ""}
    assert expand_words("$X ${X} a$X.b ${X}y", env) == ["x", "x", "ax.b", "xy"]
    # Set but empty: '-' keeps the empty value, ':-' takes the default.
    assert expand_words("${NOPE:-def} ${EMPTY:-def} ${EMPTY-def} ${NOPE-def}", env) == [
        "def",
        "def",
        "",
        "def",
    ]
    assert expand_words("${X:+alt} ${NOPE:+alt}end", env) == ["alt", "end"]
    assert expand_words("${EMPTY+set}", env) == ["set"]
    assert expand_words("${NOPE:-${X}y}", env) == ["xy"]
    assert expand_words("\"a $X b\" 'a $X b' \\$X $ $1", env) == ["a x b", "a $X b", "$X", "$", "$1"]
    assert expand_words('"say \\"hi\\""', env) == ['say "hi"']
    assert expand("  spaced   out  ", env) == "spaced out"
    assert expand_words("`$X", env, escape="`") == ["$X"]


def test_expand_errors() -> None:
    with pytest.raises(DockerfileError, match="missing"):
        expand_words("${X", {})
    with pytest.raises(DockerfileError, match="missing '"):
        expand_words("'open", {})
    with pytest.raises(DockerfileError, match="unsupported modifier"):
        expand_words("${X%y}", {})


def test_key_values_of_env_and_label() -> None:
    [env] = parse('FROM s\nENV A=1 B="two words" C=$A\n').instructions[1:]
    # Every value is expanded against the variables before the instruction (docker's rule).
    assert key_values(env, {"A": "old"}) == [("A", "1"), ("B", "two words"), ("C", "old")]
    [legacy] = parse("FROM s\nENV NAME the rest is the value\n").instructions[1:]
    assert key_values(legacy, {}) == [("NAME", "the rest is the value")]
    [bad] = parse("FROM s\nLABEL =x\n").instructions[1:]
    with pytest.raises(DockerfileError, match="line 2"):
        key_values(bad, {})


@given(st.text(alphabet="ab $\\{}\"'-:+", max_size=30))
def test_expand_never_fails_with_anything_but_a_dockerfile_error(text: str) -> None:
    try:
        words = expand_words(text, {"a": "A"})
    except DockerfileError:
        return
    assert all(isinstance(w, str) for w in words)


def test_cli_build_args() -> None:
    assert build_args(["A=1", "B=", "C=x=y", "HOME_ONLY", "UNSET"], {"HOME_ONLY": "h"}) == {
        "A": "1",
        "B": "",
        "C": "x=y",
        "HOME_ONLY": "h",
    }
    with pytest.raises(InvalidArgument):
        build_args(["=1"], {})


# ------------------------------------------------------------------------------ dockerignore


def test_dockerignore_patterns() -> None:
    ignore = DockerIgnore.parse(
        "# comment\n*.log\n/build/\n**/cache\ndocs/*.md\n!docs/README.md\nsecret?.txt\n[ab]x\n"
    )
    excluded = {
        "app.log": True,
        "sub/app.log": False,  # '*' does not cross '/'
        "build": True,
        "build/out/bin": True,  # a parent matches
        "cache": True,
        "a/b/cache/x": True,
        "docs/intro.md": True,
        "docs/README.md": False,  # brought back by '!'
        "secret1.txt": True,
        "secret12.txt": False,
        "ax": True,
        "cx": False,
        "main.py": False,
    }
    assert {path: ignore.excluded(path) for path in excluded} == excluded
    assert not ignore.skip_dir("build")  # a '!' pattern exists: directories must be walked


def test_dockerignore_skip_dir_without_exceptions(tmp_path: pathlib.Path) -> None:
    ignore = DockerIgnore.parse("node_modules\n./tmp//\n")
    assert ignore.skip_dir("node_modules")
    assert ignore.excluded("tmp/x")
    assert DockerIgnore.load(str(tmp_path)).patterns == []


# ------------------------------------------------------------------------------------ layers


@needs_root
def test_upper_dir_to_layer_tar_and_back(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    upper = os.path.join(root, "upper")
    os.makedirs(os.path.join(upper, "etc", "opaque"))
    os.setxattr(os.path.join(upper, "etc", "opaque"), layers.OPAQUE_XATTR, b"y")
    with open(os.path.join(upper, "etc", "file"), "w") as f:
        f.write("data")
    os.chown(os.path.join(upper, "etc", "file"), 1000, 1001)
    os.chmod(os.path.join(upper, "etc", "file"), 0o640)
    os.link(os.path.join(upper, "etc", "file"), os.path.join(upper, "etc", "hard"))
    os.symlink("file", os.path.join(upper, "etc", "link"))
    os.mknod(os.path.join(upper, "etc", "gone"), stat.S_IFCHR | 0o000, 0)  # overlayfs' whiteout
    os.mkfifo(os.path.join(upper, "fifo"))
    tar_path = os.path.join(root, "layer.tar")
    diff_id, size, count = layers.dir_to_tar(upper, tar_path)
    assert size == os.path.getsize(tar_path)
    with tarfile.open(tar_path) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert sorted(members) == [
        "etc",
        "etc/.wh.gone",
        "etc/file",
        "etc/hard",
        "etc/link",
        "etc/opaque",
        "etc/opaque/.wh..wh..opq",
        "fifo",
    ]
    assert count == len(members)
    assert (members["etc/file"].uid, members["etc/file"].gid, members["etc/file"].mode) == (1000, 1001, 0o640)
    assert members["etc/hard"].islnk() and members["etc/hard"].linkname == "etc/file"
    assert members["etc/link"].issym() and members["etc/link"].linkname == "file"
    assert members["fifo"].isfifo()
    # The same directory gives the same tar: the diff id is stable.
    assert layers.dir_to_tar(upper, tar_path)[0] == diff_id

    back = os.path.join(root, "back")
    os.mkdir(back)
    layers.tar_to_dir(tar_path, back)
    gone = os.lstat(os.path.join(back, "etc", "gone"))
    assert layers.is_whiteout(gone)
    assert layers.is_opaque(os.path.join(back, "etc", "opaque"))
    file_st = os.stat(os.path.join(back, "etc", "file"))
    assert (file_st.st_uid, file_st.st_gid, stat.S_IMODE(file_st.st_mode)) == (1000, 1001, 0o640)
    assert file_st.st_nlink == 2
    assert os.readlink(os.path.join(back, "etc", "link")) == "file"
    assert layers.dir_to_tar(back, os.path.join(root, "again.tar"))[0] == diff_id


def test_tar_to_dir_refuses_escapes(tmp_path: pathlib.Path) -> None:
    root = str(tmp_path)
    tar_path = os.path.join(root, "evil.tar")
    with tarfile.open(tar_path, "w") as tf:
        tf.addfile(tarfile.TarInfo("../outside"))
    os.mkdir(os.path.join(root, "dest"))
    with pytest.raises(InvalidArgument, match="escapes"):
        layers.tar_to_dir(tar_path, os.path.join(root, "dest"))
    assert not os.path.exists(os.path.join(root, "outside"))


def test_tar_to_dir_is_the_image_unpacker_devices_skipped(tmp_path: pathlib.Path) -> None:
    """ADD of an archive and cached build layers go through the same unpacking as pulled layers:
    a device node in the archive is not created, a gzip archive is recognised."""
    root = str(tmp_path)
    tar_path = os.path.join(root, "devs.tar.gz")
    with tarfile.open(tar_path, "w:gz") as tf:
        dev = tarfile.TarInfo("dev/null-ish")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(dev)
        data = b"kept\n"
        f = tarfile.TarInfo("file")
        f.size = len(data)
        tf.addfile(f, io.BytesIO(data))
    dest = os.path.join(root, "dest")
    os.mkdir(dest)
    layers.tar_to_dir(tar_path, dest)
    assert not os.path.lexists(os.path.join(dest, "dev", "null-ish"))
    with open(os.path.join(dest, "file"), "rb") as kept:
        assert kept.read() == b"kept\n"


def test_durations_and_the_shell_and_healthcheck_forms() -> None:
    from supervisor.build.dockerfile import duration_ns

    assert duration_ns("30s") == 30 * 10**9
    assert duration_ns("1m30s") == 90 * 10**9
    assert duration_ns("500ms") == 500 * 10**6
    assert duration_ns("1.5h") == 5400 * 10**9
    for bad in ("", "10", "s", "1x", "1s2"):
        with pytest.raises(ValueError, match="invalid duration"):
            duration_ns(bad)
    df = parse('FROM s\nSHELL ["/bin/bash", "-c"]\nHEALTHCHECK --interval=5s --retries=3 CMD curl -f x\n')
    assert df.instructions[1].exec_form == ["/bin/bash", "-c"]
    assert df.instructions[2].flags == {"interval": "5s", "retries": "3"}
    assert df.instructions[2].rest == "CMD curl -f x"
    with pytest.raises(DockerfileError, match="line 2: SHELL requires the JSON form"):
        parse("FROM s\nSHELL /bin/bash -c\n")
    with pytest.raises(DockerfileError, match="unknown flag for HEALTHCHECK: --every"):
        parse("FROM s\nHEALTHCHECK --every=5s CMD true\n")


def test_stages_their_names_and_the_args_before_the_first_from() -> None:
    from supervisor.build.dockerfile import healthcheck, split_stages

    df = parse(
        "ARG BASE=busybox\nARG V\nFROM $BASE AS Build\nRUN make\n"
        "FROM scratch\nCOPY --from=build /app /app\nVOLUME /data [x]\nONBUILD COPY . /src\n"
    )
    meta, stages = split_stages(df)
    assert [i.rest for i in meta] == ["BASE=busybox", "V"]
    assert [(s.index, s.name, [i.keyword for i in s.instructions]) for s in stages] == [
        (0, "build", ["FROM", "RUN"]),
        (1, None, ["FROM", "COPY", "VOLUME", "ONBUILD"]),
    ]
    assert stages[1].instructions[1].flags == {"from": "build"}
    assert stages[1].instructions[3].rest == "COPY . /src"
    for text, message in (
        ("ARG A\nENV B=1\nFROM s\n", "line 2: ENV before FROM"),
        ("FROM s AS 1st\n", "line 1: invalid name for build stage: '1st'"),
        ("FROM s AS a\nFROM s AS a\n", "line 2: duplicate name 'a'"),
    ):
        with pytest.raises(DockerfileError, match=message):
            split_stages(parse(text))
    none = parse("FROM s\nHEALTHCHECK NONE\n").instructions[1]
    assert healthcheck(none) == {"Test": ["NONE"]}
    check = parse('FROM s\nHEALTHCHECK --start-period=2s --timeout=1s CMD ["true"]\n').instructions[1]
    assert healthcheck(check) == {"Test": ["CMD", "true"], "StartPeriod": 2 * 10**9, "Timeout": 10**9}


def test_in_root_follows_links_inside_the_root_only(tmp_path: pathlib.Path) -> None:
    from supervisor.build.context import in_root

    root = str(tmp_path)
    os.makedirs(tmp_path / "usr" / "lib")
    os.symlink("/usr/lib", tmp_path / "lib")  # absolute: the root's /usr/lib, not the host's
    os.symlink("../../..", tmp_path / "usr" / "up")  # climbs past the root: stops at it
    os.symlink("loop", tmp_path / "loop")
    assert in_root(root, "lib/x.so") == os.path.join(root, "usr/lib/x.so")
    assert in_root(root, "usr/up/etc/passwd") == os.path.join(root, "etc/passwd")
    assert in_root(root, "../../etc") == os.path.join(root, "etc")
    assert in_root(root, "") == root
    with pytest.raises(DockerfileError, match="too many levels of symbolic links"):
        in_root(root, "loop/x")
