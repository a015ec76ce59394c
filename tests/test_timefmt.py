"""Unit tests of :mod:`tugwire.timefmt`, the one home of RFC 3339 times and Go durations (issue 13):
round trips and agreement with the standard library, by Hypothesis."""

from __future__ import annotations

import calendar
import datetime
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tugwire import crilog, timefmt
from tugwire.timefmt import NS

LAST_NS = (253402300799 + 1) * NS - 1  # 9999-12-31T23:59:59.999999999Z
nanoseconds = st.integers(min_value=0, max_value=LAST_NS)


@given(nanoseconds)
def test_rfc3339_round_trips_and_has_a_fixed_width(ns: int) -> None:
    text = timefmt.rfc3339(ns)
    assert len(text) == len("2026-01-02T03:04:05.123456789Z")
    assert text.endswith("Z")
    assert timefmt.parse_rfc3339(text) == ns
    assert timefmt.parse_rfc3339(text, local_if_naive=True) == ns  # it has a zone: Z
    assert timefmt.rfc3339_bytes(ns) == text.encode()
    assert crilog.timestamp(ns) == text.encode()  # the CRI log's timestamp is the same text


@given(nanoseconds, nanoseconds)
def test_rfc3339_texts_sort_as_their_times(a: int, b: int) -> None:
    assert (timefmt.rfc3339(a) < timefmt.rfc3339(b)) == (a < b)


@given(
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2),  # naive bounds, the zones below
        max_value=datetime.datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [datetime.UTC, *(datetime.timezone(datetime.timedelta(minutes=m)) for m in (-570, -60, 120, 345))]
        ),
    ),
    st.sampled_from(["T", "t", " "]),
)
def test_parse_rfc3339_agrees_with_datetime(dt: datetime.datetime, sep: str) -> None:
    expected = calendar.timegm(dt.utctimetuple()) * NS + dt.microsecond * 1000
    assert timefmt.parse_rfc3339(dt.isoformat(sep=sep)) == expected
    z = dt.astimezone(datetime.UTC).replace(tzinfo=None).isoformat() + "Z"
    assert timefmt.parse_rfc3339(z) == expected


def test_parse_rfc3339_forms() -> None:
    base = 1767323045 * NS  # 2026-01-02T03:04:05Z
    assert timefmt.parse_rfc3339("2026-01-02T03:04:05Z") == base
    assert timefmt.parse_rfc3339("2026-01-02T03:04:05.5z") == base + NS // 2
    assert timefmt.parse_rfc3339("2026-01-02T03:04:05,000000001Z") == base + 1
    assert timefmt.parse_rfc3339("2026-01-02T03:04:05.1234567891Z") == base + 123456789  # 9 digits kept
    assert timefmt.parse_rfc3339("2026-01-02T05:04:05+02:00") == base
    assert timefmt.parse_rfc3339("2026-01-02T01:04:05-0200") == base
    assert timefmt.parse_rfc3339("2026-01-02T03:04:05") == base  # no zone: UTC by default
    assert timefmt.parse_rfc3339("2026-01-02T03:04Z") == base - 5 * NS
    assert timefmt.parse_rfc3339("2026-01-02") == base - (3 * 3600 + 4 * 60 + 5) * NS
    assert timefmt.parse_rfc3339("2024-02-29T00:00:00Z") == 1709164800 * NS
    assert timefmt.parse_rfc3339("0001-01-01T00:00:00Z") < 0  # Go's zero time


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-00-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-01-02T24:00:00Z",
        "2026-01-02T03:60:00Z",
        "2026-01-02T03:04:05Q",
        "2026-01-02T03:04:05Z trailing",
    ],
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        timefmt.parse_rfc3339(text)


def test_parse_rfc3339_naive_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC-02")  # POSIX: two hours east of UTC
    time.tzset()
    try:
        local = timefmt.parse_rfc3339("2026-01-02T05:04:05.25", local_if_naive=True)
        assert local == 1767323045 * NS + NS // 4
        assert timefmt.parse_rfc3339("2026-01-02T05:04:05.25") == local + 2 * 3600 * NS
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@given(nanoseconds)
def test_epoch_seconds(ns: int) -> None:
    seconds = timefmt.epoch_seconds(timefmt.rfc3339(ns))
    assert seconds is not None
    assert abs(seconds - ns / NS) < 1e-6
    assert timefmt.epoch_seconds(None) is None
    assert timefmt.epoch_seconds("") is None
    assert timefmt.epoch_seconds("not a time") is None


@given(
    st.integers(0, 10_000),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
    st.integers(0, 999),
    st.booleans(),
)
def test_parse_duration_sums_its_parts(h: int, m: int, s: int, ms: int, us: int, negative: bool) -> None:
    text = ("-" if negative else "") + f"{h}h{m}m{s}s{ms}ms{us}us"
    ns = ((h * 60 + m) * 60 + s) * NS + ms * 1_000_000 + us * 1000
    assert timefmt.is_duration(text)
    assert timefmt.parse_duration(text) == (-ns if negative else ns)


def test_parse_duration_forms() -> None:
    assert timefmt.parse_duration("1.5h") == 5400 * NS
    assert timefmt.parse_duration(".5s") == NS // 2
    assert timefmt.parse_duration("300ms") == 300_000_000
    assert timefmt.parse_duration("7µs") == timefmt.parse_duration("7μs") == 7000
    assert timefmt.parse_duration("0") == 0
    assert timefmt.parse_duration("+2m") == 120 * NS
    for bad in ("", "10", "s", "1x", "1s2", "h1", "--1s"):
        assert not timefmt.is_duration(bad)
        with pytest.raises(ValueError, match="invalid duration"):
            timefmt.parse_duration(bad)


def test_timefmt_imports_nothing_heavy() -> None:
    """The shim and the CLI import it on every start: no datetime, no typing."""
    code = (
        "import sys; import tugwire.timefmt; "
        "print(sorted(m for m in ('datetime', 'typing', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
