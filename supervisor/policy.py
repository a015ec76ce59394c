"""Restart policies, as pure functions: no clock, no I/O, so that they are tested as a state
machine on a fake clock.

``no`` never restarts; ``on-failure[:N]`` restarts after a non-zero exit, at most N times;
``always`` restarts after every exit that the user did not cause with ``stop``; ``unless-stopped``
is ``always``, except that a container the user stopped stays stopped when tugd starts again.

Between restarts the delay doubles from :data:`BACKOFF_INITIAL` up to :data:`BACKOFF_MAX`; a
container that ran for :data:`RESET_AFTER` seconds or more starts again from the initial delay
(as docker does). The restart count is reset by a start the user asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from tugwire.errors import InvalidArgument

NO, ON_FAILURE, ALWAYS, UNLESS_STOPPED = "no", "on-failure", "always", "unless-stopped"
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0


@dataclass(frozen=True)
class Policy:
    """A parsed ``--restart`` value."""

    name: str = NO
    max_retries: int | None = None  # on-failure only; None: no limit

    def __str__(self) -> str:
        if self.name == ON_FAILURE and self.max_retries is not None:
            return f"{ON_FAILURE}:{self.max_retries}"
        return self.name


def parse(text: str | None) -> Policy:
    """``no``, ``on-failure``, ``on-failure:N``, ``always`` or ``unless-stopped`` (None: ``no``)."""
    if text is None or text == "":
        return Policy()
    name, sep, count = text.partition(":")
    if name not in (NO, ON_FAILURE, ALWAYS, UNLESS_STOPPED):
        raise InvalidArgument(
            f"invalid restart policy {text!r}: want no, on-failure[:N], always or unless-stopped",
            field="restart",
        )
    if not sep:
        return Policy(name)
    if name != ON_FAILURE:
        raise InvalidArgument(
            f"maximum retry count cannot be used with restart policy {name!r}", field="restart"
        )
    if not count.isdigit():
        raise InvalidArgument(f"invalid maximum retry count {count!r}", field="restart")
    return Policy(name, int(count))


@dataclass(frozen=True)
class Decision:
    """What to do after an exit: restart after ``delay`` seconds, or not (``reason`` says why)."""

    restart: bool
    delay: float = 0.0
    reason: str = ""


def next_delay(previous: float, ran_for: float) -> float:
    """The backoff: doubled from the previous delay, capped; the initial one after a long run."""
    if previous <= 0 or ran_for >= RESET_AFTER:
        return BACKOFF_INITIAL
    return min(previous * 2, BACKOFF_MAX)


def decide(
    policy: Policy,
    *,
    exit_code: int | None,
    stopped_by_user: bool,
    restart_count: int,
    previous_delay: float,
    ran_for: float,
) -> Decision:
    """After an exit: whether to restart, and after how long.

    ``exit_code`` None means the exit code is not known (a lost shim): that counts as a failure.
    ``restart_count`` is the number of restarts since the user last started the container;
    ``previous_delay`` the last backoff delay (0 if none); ``ran_for`` how long this run lasted.
    """
    if stopped_by_user:
        return Decision(False, reason="stopped by the user")
    if policy.name == NO:
        return Decision(False, reason="restart policy no")
    if policy.name == ON_FAILURE:
        if exit_code == 0:
            return Decision(False, reason="exited with status 0")
        if policy.max_retries is not None and restart_count >= policy.max_retries:
            return Decision(False, reason=f"restarted {restart_count} times, the maximum")
    return Decision(True, next_delay(previous_delay, ran_for), reason=str(policy))


def start_on_boot(policy: Policy, *, stopped_by_user: bool) -> bool:
    """Whether a container that is not running when tugd starts (the host rebooted, or it was
    stopped) is started again: ``always`` is; ``unless-stopped`` unless the user stopped it."""
    if policy.name == ALWAYS:
        return True
    return policy.name == UNLESS_STOPPED and not stopped_by_user
