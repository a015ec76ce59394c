"""The restart policy as a pure state machine, on a fake clock (no sleeps, no processes)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import policy
from supervisor.policy import BACKOFF_INITIAL, BACKOFF_MAX, RESET_AFTER, Policy
from tugwire import errors


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (None, Policy("no")),
        ("", Policy("no")),
        ("no", Policy("no")),
        ("always", Policy("always")),
        ("unless-stopped", Policy("unless-stopped")),
        ("on-failure", Policy("on-failure")),
        ("on-failure:3", Policy("on-failure", 3)),
        ("on-failure:0", Policy("on-failure", 0)),
    ],
)
def test_parse(text: str | None, want: Policy) -> None:
    assert policy.parse(text) == want
    assert policy.parse(str(want)) == want


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1", "no:1", "ALWAYS"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        policy.parse(text)


def decide(
    p: str, code: int | None, *, count: int = 0, stopped: bool = False, prev: float = 0.0, ran: float = 1.0
) -> policy.Decision:
    return policy.decide(
        policy.parse(p),
        exit_code=code,
        stopped_by_user=stopped,
        restart_count=count,
        previous_delay=prev,
        ran_for=ran,
    )


@pytest.mark.parametrize(
    ("p", "code", "count", "stopped", "restart"),
    [
        ("no", 1, 0, False, False),
        ("no", 0, 0, False, False),
        ("on-failure", 0, 0, False, False),
        ("on-failure", 1, 0, False, True),
        ("on-failure", None, 0, False, True),  # an unknown exit is a failure
        ("on-failure", 137, 100, False, True),
        ("on-failure:2", 1, 1, False, True),
        ("on-failure:2", 1, 2, False, False),
        ("on-failure:0", 1, 0, False, False),
        ("always", 0, 0, False, True),
        ("always", 1, 50, False, True),
        ("always", 0, 0, True, False),
        ("unless-stopped", 0, 0, False, True),
        ("unless-stopped", 143, 0, True, False),
        ("on-failure", 1, 0, True, False),
    ],
)
def test_decide_table(p: str, code: int | None, count: int, stopped: bool, restart: bool) -> None:
    assert decide(p, code, count=count, stopped=stopped).restart is restart


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    delays = []
    prev = 0.0
    for _ in range(15):
        d = decide("always", 1, prev=prev, ran=0.01)
        delays.append(d.delay)
        prev = d.delay
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == BACKOFF_MAX
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert decide("always", 1, prev=BACKOFF_MAX, ran=RESET_AFTER).delay == BACKOFF_INITIAL


def test_start_on_boot() -> None:
    assert policy.start_on_boot(Policy("always"), stopped_by_user=True)
    assert policy.start_on_boot(Policy("unless-stopped"), stopped_by_user=False)
    assert not policy.start_on_boot(Policy("unless-stopped"), stopped_by_user=True)
    assert not policy.start_on_boot(Policy("on-failure"), stopped_by_user=False)
    assert not policy.start_on_boot(Policy("no"), stopped_by_user=False)


@dataclass
class Machine:
    """A container driven by the policy on a fake clock: the same bookkeeping as tugd's."""

    rule: Policy
    now: float = 0.0
    count: int = 0
    delay: float = 0.0
    stopped: bool = False
    running: bool = True
    started_at: float = 0.0

    def exit(self, code: int, ran: float) -> policy.Decision:
        self.now = self.started_at + ran
        self.running = False
        d = policy.decide(
            self.rule,
            exit_code=code,
            stopped_by_user=self.stopped,
            restart_count=self.count,
            previous_delay=self.delay,
            ran_for=ran,
        )
        if d.restart:
            self.delay = d.delay
            self.now += d.delay  # the fake clock: the restart happens after the delay
            self.count += 1
            self.running = True
            self.started_at = self.now
        return d


runs = st.lists(st.tuples(st.integers(0, 255), st.floats(0, 30, allow_nan=False)), max_size=40)
rules = st.sampled_from(
    ["no", "on-failure", "on-failure:0", "on-failure:2", "on-failure:5", "always", "unless-stopped"]
)


@given(rules, runs)
def test_policy_machine_invariants(text: str, exits: list[tuple[int, float]]) -> None:
    rule = policy.parse(text)
    m = Machine(rule)
    for code, ran in exits:
        if not m.running:
            break
        before, prev_delay = m.count, m.delay
        d = m.exit(code, ran)
        if d.restart:
            assert BACKOFF_INITIAL <= d.delay <= BACKOFF_MAX
            if ran >= RESET_AFTER or prev_delay == 0:
                assert d.delay == BACKOFF_INITIAL
            else:
                assert d.delay == min(prev_delay * 2, BACKOFF_MAX)
            assert rule.name != "no"
            if rule.name == "on-failure":
                assert code != 0
                assert rule.max_retries is None or before < rule.max_retries
        else:
            assert rule.name != "always" and rule.name != "unless-stopped"
    if rule.name == "on-failure" and rule.max_retries is not None:
        assert m.count <= rule.max_retries


@given(rules, runs)
def test_a_user_stop_is_never_undone(text: str, exits: list[tuple[int, float]]) -> None:
    m = Machine(policy.parse(text), stopped=True)
    for code, ran in exits:
        assert not m.exit(code, ran).restart
        m.running = True


# ----------------------------------------------------------------- the CLI's pure helpers


def test_cpu_percent_from_two_samples() -> None:
    from supervisor.cli import verbs as cli

    a = {"cpu_seconds": 10.0, "read_at": 100.0}
    b = {"cpu_seconds": 10.5, "read_at": 101.0}
    assert cli.cpu_percent(a, b) == pytest.approx(50.0)
    assert cli.cpu_percent(None, b) is None
    assert cli.cpu_percent({"cpu_seconds": None, "read_at": 1.0}, b) is None
    assert cli.cpu_percent(b, b) is None  # no time passed


def test_binary_size() -> None:
    from supervisor.cli import verbs as cli

    assert cli.binary_size(0) == "0B"
    assert cli.binary_size(64 * 1024 * 1024) == "64MiB"
    assert cli.binary_size(1536) == "1.5KiB"


@pytest.mark.parametrize(
    ("arg", "want"),
    [
        ("web:/etc/hostname", ("web", "/etc/hostname")),
        ("web:etc", ("web", "etc")),
        ("/tmp/x", (None, "/tmp/x")),
        ("./a:b", (None, "./a:b")),
        ("dir/a:b", (None, "dir/a:b")),
        ("plain", (None, "plain")),
    ],
)
def test_split_cp_arg(arg: str, want: tuple[str | None, str]) -> None:
    from supervisor.cli import verbs as cli

    assert cli.split_cp_arg(arg) == want


def test_ps_status_of_a_restarting_and_a_healthy_container() -> None:
    from supervisor.cli import main as cli

    now = 10**18
    exited = {"state": "exited", "exit_code": 1, "finished_at": None, "restarting": True}
    assert cli.container_status(exited, now) == "Restarting (1)"
    running = {"state": "running", "started_at": None, "health": "healthy"}
    assert cli.container_status(running, now) == "Up (healthy)"
    assert cli.container_status({**running, "health": "starting"}, now) == "Up (health: starting)"
    assert cli.container_status({**running, "state": "paused"}, now) == "Up (Paused)"
