"""Trying again after a failure: one helper, with a predicate and a policy, for every operation worth repeating.

Registry calls, blob uploads and downloads, and the waits for AWS's eventual consistency all retry the same way, as
go-containerregistry's ``retry.Retry(f, predicate, backoff)`` does: a predicate says which failures deserve another
try, a policy says how long to wait and when to give up, and a stop event (another job failed, the user pressed
Ctrl-C) ends a wait at once instead of after it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from ocimodel.parallel import Cancelled, check

T = TypeVar("T")

#: Beyond this many doublings every delay is ``max_delay`` anyway; it keeps ``2 ** n`` a float a policy with no
#: bound on attempts (one bounded in time) can still compute.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries, how long between them, and for how long at most.

    Delays double from ``base_delay`` up to ``max_delay``; with ``jitter`` each is drawn between 0 and that, so clients
    that failed together do not come back together (without: exactly that, for a wait on AWS settling, where nobody
    competes). ``attempts`` bounds the tries, ``seconds`` the time from the first one: a wait that would end past it
    is not begun. None is no bound of that kind. ``sleep`` and ``clock`` are injectable so tests never wait; with
    ``sleep`` None a wait is on the caller's stop event, so that cancelling ends it.
    """

    attempts: int | None = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] | None = None
    seconds: float | None = None
    jitter: bool = True
    clock: Callable[[], float] = time.monotonic

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (from 1); a server's Retry-After wins, within reason."""
        if retry_after:
            seconds = _parse_retry_after(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), self.max_retry_after)
        longest = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, _MAX_DOUBLINGS))
        return random.uniform(0, longest) if self.jitter else longest


def _parse_retry_after(value: str) -> float | None:
    """Retry-After is seconds or an HTTP date (RFC 9110 10.2.3); None for anything else."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def retry(
    attempt: Callable[[], T],
    *,
    retryable: Callable[[Exception], bool],
    policy: RetryPolicy,
    on_retry: Callable[[Exception, float], None] | None = None,
    stop: threading.Event | None = None,
) -> T:
    """``attempt()``, tried again while it fails with what ``retryable`` accepts and ``policy`` allows another try.

    A failure not worth another try, or the last one the policy allows, is raised as it is: it says in the caller's
    words what failed, and is what the user sees. ``on_retry(failure, delay)`` is told before each wait (to log it, or
    release what the failed try held). ``stop`` being set ends a wait, or the tries, with ``Cancelled``.
    """
    tries = Tries(policy, retryable, on_retry, stop)
    while True:
        check(stop)
        try:
            return attempt()
        except Exception as exc:
            tries.failed(exc)


class Tries:
    """What ``retry`` keeps between tries, for the one loop that cannot hand it a callable: a download yielding its
    bytes as they come, which resumes where a dropped connection broke off (``RegistryClient.stream_blob``)."""

    def __init__(
        self,
        policy: RetryPolicy,
        retryable: Callable[[Exception], bool],
        on_retry: Callable[[Exception, float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._policy = policy
        self._retryable = retryable
        self._on_retry = on_retry
        self._stop = stop
        self._deadline = None if policy.seconds is None else policy.clock() + policy.seconds
        self._failures = 0

    def failed(self, failure: Exception) -> None:
        """Wait before the next try, or raise ``failure``: not worth another try, or the policy allows no more.

        A failure with a ``retry_after`` (a Retry-After header's value, as ``RegistryError`` has) waits that long.
        Cancellation and interrupts are never retried; a stop set during the wait ends it early (``retry`` then stops).
        """
        self._failures += 1
        policy = self._policy
        if isinstance(failure, Cancelled) or not self._retryable(failure):
            raise failure
        if policy.attempts is not None and self._failures >= policy.attempts:
            raise failure
        retry_after = getattr(failure, "retry_after", None)
        delay = policy.delay(self._failures, retry_after if isinstance(retry_after, str) else None)
        if self._deadline is not None and policy.clock() + delay > self._deadline:
            raise failure
        if self._on_retry is not None:
            self._on_retry(failure, delay)
        if policy.sleep is not None:
            policy.sleep(delay)
        elif self._stop is not None:
            self._stop.wait(delay)
        else:
            time.sleep(delay)
