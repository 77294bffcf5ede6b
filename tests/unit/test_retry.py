"""The one retry helper: which failures it retries, where it stops, whose word on the delay it takes, and that a stop
or Ctrl-C ends a wait at once. Waits are recorded, not slept: real sleeping fails a test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from ocimodel import retry as retry_module
from ocimodel.parallel import Cancelled
from ocimodel.retry import RetryPolicy, retry


class Flaky(Exception):
    """A failure worth another try, optionally with a server's Retry-After."""

    def __init__(self, n: int, retry_after: str | None = None) -> None:
        super().__init__(f"try {n} failed")
        self.retry_after = retry_after


class Broken(Exception):
    """A failure no retry can mend."""


def failing(*failures: BaseException, result: str = "done") -> tuple[Callable[[], str], list[int]]:
    """An attempt raising ``failures`` in turn, then returning ``result``; and the list of tries made."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return attempt, calls


def flaky(exc: Exception) -> bool:
    return isinstance(exc, Flaky)


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that would really wait fails instead."""

    def refuse(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s for real")

    monkeypatch.setattr(retry_module.time, "sleep", refuse)


def test_retryable_failures_are_tried_again_until_one_succeeds() -> None:
    waits: list[float] = []
    attempt, calls = failing(Flaky(1), Flaky(2))
    assert retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=waits.append)) == "done"
    assert calls == [1, 2, 3] and len(waits) == 2


def test_a_failure_the_predicate_refuses_is_raised_at_once() -> None:
    waits: list[float] = []
    broken = Broken("no such repository")
    attempt, calls = failing(Flaky(1), broken)
    with pytest.raises(Broken) as err:
        retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=waits.append))
    assert err.value is broken and calls == [1, 2] and len(waits) == 1


def test_the_attempts_bound_raises_the_last_failure_itself() -> None:
    """At the bound the caller's own one-line failure comes out: not a wrapper, not a chain (a chained requests error
    would put URLs with presigned signatures in a --debug traceback)."""
    waits: list[float] = []
    failures = [Flaky(n) for n in range(1, 10)]
    attempt, calls = failing(*failures)
    with pytest.raises(Flaky) as err:
        retry(attempt, retryable=flaky, policy=RetryPolicy(attempts=3, sleep=waits.append))
    assert err.value is failures[2] and str(err.value) == "try 3 failed"
    assert err.value.__cause__ is None and err.value.__context__ is None
    assert calls == [1, 2, 3] and len(waits) == 2


def test_the_time_bound_starts_no_wait_that_would_end_past_it() -> None:
    """The AWS waits: exact doubling from the first delay, capped, for at most ``seconds`` from the first try."""
    waits: list[float] = []  # time passes only when slept
    attempt, calls = failing(*(Flaky(n) for n in range(1, 100)))
    policy = RetryPolicy(
        attempts=None, seconds=100, base_delay=5, max_delay=30, jitter=False, sleep=waits.append, clock=lambda: sum(waits)
    )
    with pytest.raises(Flaky):
        retry(attempt, retryable=flaky, policy=policy)
    assert waits == [5, 10, 20, 30, 30]  # a sixth, to 125 s, would pass the bound
    assert len(calls) == 6


def test_delays_grow_with_jitter_and_stay_under_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=20.0)
    for attempt, longest in ((1, 0.5), (2, 1.0), (4, 4.0), (10, 20.0), (5000, 20.0)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(0 <= d <= longest for d in delays) and len(set(delays)) > 1


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("3600", 60.0), ("-4", 0.0)],
)
def test_retry_after_in_seconds_is_honoured_within_reason(retry_after: str, expected: float) -> None:
    waits: list[float] = []
    attempt, _ = failing(Flaky(1, retry_after))
    retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=waits.append))
    assert waits == [expected]


def test_retry_after_as_a_date_is_honoured() -> None:
    waits: list[float] = []
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    attempt, _ = failing(Flaky(1, when))
    retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=waits.append))
    assert 25 <= waits[0] <= 30


def test_a_retry_after_that_is_not_one_leaves_the_backoff() -> None:
    waits: list[float] = []
    attempt, _ = failing(Flaky(1, "soon"))
    retry(attempt, retryable=flaky, policy=RetryPolicy(base_delay=0.5, sleep=waits.append))
    assert 0 <= waits[0] <= 0.5


def test_on_retry_is_told_each_failure_and_delay_before_the_wait() -> None:
    waits: list[float] = []
    first, second = Flaky(1, "2"), Flaky(2, "3")
    attempt, _ = failing(first, second)
    told: list[tuple[Exception, float, int]] = []
    retry(
        attempt,
        retryable=flaky,
        policy=RetryPolicy(sleep=waits.append),
        on_retry=lambda exc, delay: told.append((exc, delay, len(waits))),
    )
    assert told == [(first, 2.0, 0), (second, 3.0, 1)]


def test_a_stop_during_a_wait_ends_it_at_once() -> None:
    """With the real wait, a stop set while it runs (another job failed, Ctrl-C in the main thread) ends it: the
    worker does not sit out a minute-long Retry-After before the pool can shut down."""
    stop = threading.Event()
    waiting = threading.Event()
    attempt, calls = failing(*(Flaky(n, "60") for n in range(1, 10)))
    outcome: list[BaseException] = []

    def worker() -> None:
        try:
            retry(attempt, retryable=flaky, policy=RetryPolicy(), on_retry=lambda *_: waiting.set(), stop=stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert waiting.wait(10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled) and calls == [1]


def test_a_stop_already_set_tries_nothing() -> None:
    stop = threading.Event()
    stop.set()
    attempt, calls = failing()
    with pytest.raises(Cancelled):
        retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=lambda _: None), stop=stop)
    assert calls == []


def test_an_injected_sleep_still_answers_to_the_stop() -> None:
    stop = threading.Event()
    attempt, calls = failing(Flaky(1))
    with pytest.raises(Cancelled):
        retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=lambda _: stop.set()), stop=stop)
    assert calls == [1]


def test_cancellation_and_interrupts_are_never_retried() -> None:
    waits: list[float] = []
    for failure in (Cancelled(), KeyboardInterrupt()):
        attempt, calls = failing(failure)
        with pytest.raises(type(failure)):
            retry(attempt, retryable=lambda _: True, policy=RetryPolicy(sleep=waits.append))
        assert calls == [1]
    assert waits == []


def test_ctrl_c_during_a_wait_is_not_swallowed() -> None:
    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    attempt, calls = failing(Flaky(1))
    with pytest.raises(KeyboardInterrupt):
        retry(attempt, retryable=flaky, policy=RetryPolicy(sleep=interrupted))
    assert calls == [1]
