"""HTTP access to one registry's distribution API: auth, retries, redirects and readable errors in one place.

Every call goes through ``RegistryClient.request``, so uploads added later inherit the same 401 handling, retry
policy, redirect rules and error messages as the reads here.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ocimodel.errors import TRANSIENT_STATUSES, DigestMismatch, OcimodelError, RegistryError
from ocimodel.layout.descriptor import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_MAX_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    is_digest,
    sha256_digest,
)
from ocimodel.registry.auth import Authenticator, Keychain, default_keychain, repository_scope
from ocimodel.registry.reference import registry_url
from ocimodel.retry import RetryPolicy, Tries, retry

log = logging.getLogger("ocimodel.registry")

MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
_ERROR_BODY_MAX_BYTES = 64 * 1024
_MAX_REDIRECTS = 5
_IDEMPOTENT = frozenset({"GET", "HEAD"})

Body = bytes | Callable[[], IO[bytes]]
"""A request body: bytes, or a callable opening a fresh stream, so a body can be sent again after a 401 or a retry."""


@dataclass(frozen=True)
class Deadlines:
    """How long a registry may keep us waiting, so a silent or trickling one costs seconds, and says so, not hours.

    ``connect`` and ``read`` are the socket timeouts: no byte for ``read`` seconds fails the call; a registry may be
    silent that long after a large upload, while it checks the digest. ``small`` bounds the whole of a request with a
    small answer (token, ping, HEAD, manifest, opening an upload), sending to last byte: a registry trickling a byte
    at a time never trips a read timeout. ``stall``: a blob download that gets less than 64 KiB in that long has
    stalled. ``notice``: after that long, a warning says what is being waited for.
    """

    connect: float = 15.0
    read: float = 120.0
    small: float = 30.0
    stall: float = 60.0
    notice: float = 5.0


#: The piece a stalled download is measured by: less than this in ``Deadlines.stall`` seconds has stalled.
_STALL_PIECE = 64 * 1024
_local = threading.local()


class DeadlineExceeded(requests.Timeout):
    """A watched wait ran out; its message says which deadline, for the error line."""


class _TransientAnswer(Exception):
    """An answer worth asking again for (408, 429, 5xx), as a failure ``retry`` can see, with its Retry-After."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(response.status_code)
        self.response = response
        self.retry_after = response.headers.get("Retry-After")


class _Guard:
    """One watched wait: past ``limit`` seconds the watchdog shuts its connection's socket down, which ends the
    blocked read or write at once (a socket timeout alone restarts with every byte that trickles in)."""

    def __init__(self, what: str, limit: float, notice: float, expiry: str) -> None:
        self.what = what
        self.limit = limit
        self.notice = notice
        self.expiry = expiry
        self.connection: object | None = None
        self.expired: str | None = None
        self.started: float | None = time.monotonic()
        self.noticed = False

    def due(self) -> float | None:
        if self.started is None or self.expired is not None:
            return None
        return self.started + (self.limit if self.noticed else min(self.notice, self.limit))

    def check(self, now: float) -> None:
        if self.started is None or self.expired is not None:
            return
        waited = now - self.started
        if waited >= self.limit:
            self.expired = self.expiry
            sock = getattr(self.connection, "sock", None)
            if isinstance(sock, socket.socket):
                with suppress(OSError):
                    # The plain socket's shutdown, also under TLS: the blocked read then ends with an OSError, while
                    # SSLSocket.shutdown would unwrap it under the reader's feet.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        elif waited >= self.notice and not self.noticed:
            self.noticed = True
            log.warning("still waiting for %s (%.1fs so far; giving up at %gs)", self.what, waited, self.limit)


class _Watchdog:
    """One daemon thread for every watched wait in the process, asleep until the next one is due."""

    def __init__(self) -> None:
        self._guards: set[_Guard] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake_at: float | None = None

    def add(self, guard: _Guard) -> None:
        with self._cond:
            self._guards.add(guard)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ocimodel-deadlines", daemon=True)
                self._thread.start()
            self._poke(guard)

    def remove(self, guard: _Guard) -> None:
        with self._cond:
            self._guards.discard(guard)

    def restart(self, guard: _Guard) -> None:
        """The guarded wait begins again (the next piece of a download)."""
        with self._cond:
            guard.started, guard.noticed = time.monotonic(), False
            self._poke(guard)

    def pause(self, guard: _Guard) -> None:
        """Not waiting on the registry now (the caller holds a piece): time does not count."""
        with self._cond:
            guard.started = None

    def _poke(self, guard: _Guard) -> None:
        due = guard.due()
        if due is not None and (self._wake_at is None or due < self._wake_at):
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for guard in self._guards:
                    guard.check(now)
                dues = [d for d in (g.due() for g in self._guards) if d is not None]
                self._wake_at = min(dues) if dues else None
                self._cond.wait(None if self._wake_at is None else max(0.0, self._wake_at - time.monotonic()))


_WATCHDOG = _Watchdog()


@contextmanager
def _watched(what: str, limit: float, notice: float, expiry: str, connection: object = None) -> Iterator[_Guard]:
    """Watch ``connection``, or else the one the calls made inside use (they must not yield: the thread's other
    work would be watched too): it is shut down if ``limit`` passes."""
    guard = _Guard(what, limit, notice, expiry)
    guard.connection = connection
    previous = getattr(_local, "guard", None)
    if connection is None:
        _local.guard = guard
    _WATCHDOG.add(guard)
    try:
        yield guard
    finally:
        _WATCHDOG.remove(guard)
        if connection is None:
            _local.guard = previous


class _Watched:
    """A urllib3 connection that tells the wait being watched on this thread (if any) which socket to shut down."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = getattr(_local, "guard", None)
        if guard is not None:
            guard.connection = self
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Adapter(requests.adapters.HTTPAdapter):
    """Sends bodies in 1 MiB writes instead of urllib3's 16 KiB (fewer system calls for multi-GB blobs), over
    connections the deadline watchdog can end."""

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("blocksize", 1 << 20)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def _new_session() -> requests.Session:
    """A session whose pool keeps a connection per upload thread, so parallel blobs don't reconnect."""
    session = requests.Session()
    adapter = _Adapter(pool_connections=4, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class RegistryClient:
    """One registry, one ``requests.Session``, one authentication state.

    Use as a context manager (or call ``close``) to release pooled connections.
    """

    def __init__(
        self,
        registry: str,
        *,
        plain_http: bool = False,
        keychain: Keychain | None = None,
        session: requests.Session | None = None,
        retry: RetryPolicy = RetryPolicy(),
        deadlines: Deadlines = Deadlines(),
    ) -> None:
        self.registry = registry
        self.base_url = registry_url(registry, plain_http=plain_http)
        self._origin = _origin(self.base_url)
        self._session = session or _new_session()
        self._retry = retry
        self._deadlines = deadlines
        self._timeout = (deadlines.connect, deadlines.read)
        self._auth = Authenticator(registry, keychain or default_keychain(), self._fetch_token)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def url(self, repository: str, path: str) -> str:
        return f"{self.base_url}/v2/{repository}/{path}"

    def get_manifest(
        self, repository: str, reference: str, accept: Sequence[str] = MANIFEST_ACCEPT
    ) -> tuple[bytes, str]:
        """The manifest's exact bytes and media type; by digest, the bytes are checked against it."""
        response = self.request(
            "GET", self.url(repository, f"manifests/{reference}"), repository, headers={"Accept": ", ".join(accept)}
        )
        with response:
            try:
                data = _read_capped(response, MANIFEST_MAX_BYTES)
            except requests.RequestException as exc:
                raise self._lost_connection(response, f"manifest {reference} of {repository}", exc) from None
        if data is None:
            raise OcimodelError(
                f"manifest {reference} of {repository} on registry {self.registry} is larger than "
                f"{MANIFEST_MAX_BYTES // (1024 * 1024)} MiB; refusing it"
            )
        if is_digest(reference) and sha256_digest(data) != reference:
            raise DigestMismatch(
                f"manifest {reference} of {repository} from registry {self.registry} hashes to "
                f"{sha256_digest(data)}; refusing it"
            )
        return data, response.headers.get("Content-Type", "").split(";")[0].strip()

    def head_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size, or None if the repository does not have it."""
        response = self.request("HEAD", self.url(repository, f"blobs/{digest}"), repository, ok=(200, 404))
        response.close()
        if response.status_code == 404:
            return None
        try:
            return int(response.headers["Content-Length"])
        except (KeyError, ValueError):
            raise OcimodelError(
                f"registry {self.registry} answered HEAD for blob {digest} of {repository} without a size"
            ) from None

    def stream_blob(self, repository: str, digest: str) -> Iterator[bytes]:
        """The blob in chunks of at most 64 KiB, verified: the last step raises DigestMismatch if it was wrong.

        The bytes are taken exactly as sent (no transfer decoding), since that is what the digest covers. A connection
        lost mid-body is picked up where it broke (``Range``; from the start, skipping what was already passed on, if
        the registry ignores it), as uploads resume, within the retry policy's attempts.
        """
        hasher = hashlib.sha256()
        received = 0

        def resuming(lost: Exception, delay: float) -> None:
            log.info("%s; resuming at byte %d in %.1fs", lost, received, delay)

        drops = Tries(self._retry, retryable=lambda _: True, on_retry=resuming)
        while True:
            headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={received}-"} if received else {})}
            response = self.request("GET", self.url(repository, f"blobs/{digest}"), repository, headers=headers,
                                    ok=(200, 206), patient=True)
            what = f"blob {digest} of {repository}"
            stall = self._deadlines.stall
            with response, _watched(f"{self._where(response.url)} to send more of {what}", stall,
                                    self._deadlines.notice, f"less than 64 KiB in {stall:g}s",
                                    response.raw.connection) as guard:
                skip = received if response.status_code == 200 else _range_start(response, received)
                try:
                    for chunk in response.raw.stream(_STALL_PIECE, decode_content=False):
                        if skip:
                            dropped, chunk = chunk[:skip], chunk[skip:]
                            skip -= len(dropped)
                            if not chunk:
                                continue
                        hasher.update(chunk)
                        received += len(chunk)
                        _WATCHDOG.pause(guard)
                        yield chunk
                        _WATCHDOG.restart(guard)
                    if guard.expired:  # cut short by the watchdog, an answer without a length may look whole
                        raise OSError(guard.expired)
                    break
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    lost = self._lost_connection(response, what, DeadlineExceeded(guard.expired) if guard.expired else exc)
            drops.failed(lost)  # out of the except: the error line must not chain requests' URL-bearing messages
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(
                f"blob {digest} of {repository} from registry {self.registry} hashes to {actual}; refusing it"
            )

    def request(
        self,
        method: str,
        url: str,
        repository: str,
        *,
        actions: Sequence[str] = ("pull",),
        extra_scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Body | None = None,
        ok: Container[int] = (200,),
        retry: bool | None = None,
        patient: bool = False,
    ) -> requests.Response:
        """Send one API call, authenticated for ``actions`` on ``repository``.

        A 401 triggers one re-authentication and resend. Transient failures are retried when ``retry`` (default:
        for GET and HEAD only; pass True for a request that is safe to repeat, such as a manifest PUT). Any status
        not in ``ok`` becomes an OcimodelError explaining what went wrong.

        A request sending a streamed body, or ``patient`` (its answer is a blob, or may take long: the PUT that has
        the registry check a large blob's digest), is bounded by the socket timeouts and streams its answer; any
        other is small and must be over, answer read (up to the manifest size cap), within ``Deadlines.small``.
        """
        scopes = [repository_scope(repository, actions), *extra_scopes]
        retry = method in _IDEMPOTENT if retry is None else retry
        small = not patient and not callable(body)
        what = f"registry {self.registry} to answer {method} of {_subject(url, repository)}"
        for reauthenticated in (False, True):
            response = self._with_retries(
                lambda: self._send(method, url, scopes, headers, params, body, what if small else None),
                method, url, repository, retry,
            )
            if _origin(response.url) != self._origin or response.status_code not in (401, 403) or reauthenticated:
                break
            if response.status_code == 401:
                challenge = response.headers.get("WWW-Authenticate")
                _discard(response)
                self._auth.authenticate(challenge, scopes)
            elif self._auth.relogin_after_denial():
                log.info("registry %s denied %s %s; logging in again, once", self.registry, method, _redact(url))
                _discard(response)
            else:
                break
        if response.status_code == 401 and _origin(response.url) == self._origin:
            _discard(response)
            raise self._auth.rejected(scopes)
        if response.status_code not in ok:
            with response:
                raise self._error(method, url, repository, response)
        return response

    def _send(
        self,
        method: str,
        url: str,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        body: Body | None,
        small: str | None,
    ) -> requests.Response:
        """One exchange, following redirects of reads by hand so credentials never reach another host; ``small``
        says what is waited for when it is a small request, under ``Deadlines.small``."""
        for _ in range(_MAX_REDIRECTS + 1):
            sent = dict(headers or {})
            if _origin(url) == self._origin:  # same scheme too: never a token over http after https
                authorization = self._auth.authorization(scopes)
                if authorization:
                    sent["Authorization"] = authorization
            started = time.monotonic()
            with body() if callable(body) else nullcontext(body) as data:
                response = self._exchange(
                    small,
                    method,
                    url,
                    headers=sent,
                    params=params,
                    data=data,
                    allow_redirects=False,
                )
            log.debug(
                "%s %s -> %d (%.2fs)", method, _redact(response.url), response.status_code, time.monotonic() - started
            )
            if not (response.is_redirect and method in _IDEMPOTENT):
                return response
            url = urljoin(response.url, response.headers["Location"])
            params = None
            _discard(response)
        raise OcimodelError(
            f"registry {self.registry} redirected {method} {_redact(url)} more than {_MAX_REDIRECTS} times"
        )

    def _with_retries(
        self,
        send: Callable[[], requests.Response],
        method: str,
        url: str,
        repository: str | None,
        retry_transient: bool,
    ) -> requests.Response:
        """``send()``, again after a lost connection or a transient status, when ``retry_transient``; the last
        transient answer is returned for the caller to explain."""

        def attempt() -> requests.Response:
            try:
                response = send()
            except (requests.ConnectionError, requests.Timeout):
                raise
            except requests.RequestException as exc:  # a malformed URL or answer: retrying will not help
                raise OcimodelError(
                    f"registry {self.registry}: {method} {_redact(url)} failed ({type(exc).__name__})"
                ) from None
            if response.status_code in TRANSIENT_STATUSES:
                raise _TransientAnswer(response)
            return response

        def on_retry(failure: Exception, delay: float) -> None:
            if isinstance(failure, _TransientAnswer):
                _discard(failure.response)
                log.info("%s %s answered %d; retrying in %.1fs", method, _redact(url), failure.response.status_code, delay)
            else:
                log.info("%s %s failed (%s); retrying in %.1fs", method, _redact(url), _reason(failure), delay)

        policy = self._retry if retry_transient else replace(self._retry, attempts=1)
        try:
            return retry(
                attempt,
                retryable=lambda exc: isinstance(exc, (requests.ConnectionError, requests.Timeout, _TransientAnswer)),
                policy=policy,
                on_retry=on_retry,
            )
        except _TransientAnswer as last:
            return last.response
        except (requests.ConnectionError, requests.Timeout) as exc:
            # No chained cause: requests' messages carry full URLs, presigned signatures included.
            raise self._unreachable(exc, url, repository) from None

    def _exchange(self, small: str | None, method: str, url: str, **kwargs: Any) -> requests.Response:
        """``session.request`` without netrc (it would put ~/.netrc credentials over ours); a small request (``small``
        says what for) runs under ``Deadlines.small``, its answer read into the response within that time."""
        kwargs.update(stream=True, timeout=self._timeout, auth=_no_netrc)
        if small is None:
            return self._session.request(method, url, **kwargs)
        limit = self._deadlines.small
        with _watched(small, limit, self._deadlines.notice, f"no complete answer within {limit:g}s") as guard:
            try:
                response = self._session.request(method, url, **kwargs)
            except requests.RequestException:
                if guard.expired:
                    raise DeadlineExceeded(guard.expired) from None
                raise
            try:
                _preload(response, MANIFEST_MAX_BYTES)
            except requests.RequestException as exc:
                if guard.expired:
                    raise DeadlineExceeded(guard.expired) from None
                raise requests.ConnectionError(exc) from None  # an answer broken off: worth another try
            if guard.expired:  # cut short by the watchdog, the answer may still have looked whole
                response.close()
                raise DeadlineExceeded(guard.expired)
        return response

    def _fetch_token(self, url: str, params: list[tuple[str, str]], headers: dict[str, str]) -> requests.Response:
        what = f"token service {urlsplit(url).netloc} of registry {self.registry}"
        return self._with_retries(
            lambda: self._exchange(what, "GET", url, params=params, headers=headers),
            "GET",
            url,
            None,
            retry_transient=True,
        )

    def _unreachable(self, exc: requests.RequestException, url: str, repository: str | None) -> RegistryError:
        what = f" for {repository}" if repository else ""
        if isinstance(exc, DeadlineExceeded):
            return RegistryError(
                f"{self._where(url)} accepted the connection but kept us waiting{what} ({exc}): it may be overloaded, "
                "or a proxy or firewall holds the connection; try again later"
            )
        hint = (
            "if the registry speaks plain HTTP, allow plain HTTP for it; otherwise check its certificate"
            if isinstance(exc, requests.exceptions.SSLError)
            else "check the registry address and your network"
        )
        return RegistryError(f"cannot reach {self._where(url)}{what} ({_reason(exc)}): {hint}")

    def _where(self, url: str) -> str:
        """The registry, or the other host (token service, blob storage) it sent us to."""
        host = urlsplit(url).netloc
        return f"registry {self.registry}" if _origin(url) == self._origin else f"{host} (used by registry {self.registry})"

    def _lost_connection(self, response: requests.Response, what: str, exc: BaseException) -> RegistryError:
        return RegistryError(
            f"lost the connection to {self._where(response.url)} while reading {what} ({_reason(exc)}): try again"
        )

    def _error(self, method: str, url: str, repository: str, response: requests.Response) -> RegistryError:
        status = response.status_code
        subject = _subject(url, repository)
        errors = _distribution_errors(response)
        detail = "; ".join(f"{code}: {message}".strip(": ") for code, message in errors[:3])
        detail_text = f" ({detail})" if detail else ""
        if status == 403:
            message = f"denied {method} of {subject}{detail_text}: check that your credentials have access to it"
        elif status == 404:
            message = f"has no {subject}{detail_text}: check the reference"
        elif status == 429:
            message = (
                f"is rate-limiting requests for {repository}{detail_text}: "
                "wait and try again, or log in for a higher limit"
            )
        elif status >= 500:
            message = f"failed with {status} on {method} of {subject}{detail_text}: try again later"
        else:
            message = f"answered {status} to {method} of {subject}{detail_text}"
        return RegistryError(
            f"registry {self.registry} {message}",
            status=status,
            codes=frozenset(code for code, _ in errors),
            retry_after=response.headers.get("Retry-After"),
        )


def _subject(url: str, repository: str) -> str:
    """``…/v2/<repo>/manifests/<ref>`` → ``manifest <ref> of <repo>``: what the user asked for, in their words."""
    path = urlsplit(url).path
    for kind in ("manifests", "blobs"):
        marker = f"/{repository}/{kind}/"
        if marker in path:
            return f"{kind[:-1]} {path.split(marker, 1)[1]} of {repository}"
    return f"repository {repository}"


def _distribution_errors(response: requests.Response) -> list[tuple[str, str]]:
    """(code, message) pairs of a distribution-spec error body; empty if it is not one."""
    try:
        data = _read_capped(response, _ERROR_BODY_MAX_BYTES)
        errors = json.loads(data or b"{}").get("errors") or []
        return [(str(e.get("code") or "?"), str(e.get("message") or "")[:300]) for e in errors]
    except (ValueError, AttributeError, TypeError, requests.RequestException):
        return []


def _read_capped(response: requests.Response, limit: int) -> bytes | None:
    """The whole (decoded) body, or None if it exceeds ``limit``."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def _preload(response: requests.Response, limit: int) -> None:
    """Read a small answer now (``limit`` bytes and one more at most, so an oversized one is still seen as such),
    where the caller finds it as usual (``content``, ``iter_content``)."""
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            response.close()
            break
    response._content = b"".join(parts)[: limit + 1]
    response._content_consumed = True


def _range_start(response: requests.Response, wanted: int) -> int:
    """Bytes to skip at the start of a 206 answer to ``Range: bytes=<wanted>-``: 0 when it starts where asked."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    start = int(match.group(1)) if match else -1
    if not 0 <= start <= wanted:
        raise RegistryError(f"registry answered a resumed download with the wrong range ({start}, not {wanted}): try again")
    return wanted - start


def _discard(response: requests.Response) -> None:
    """Drain a small unwanted body so its connection goes back to the pool; a big (or broken) one just closes it."""
    with suppress(requests.RequestException):
        _read_capped(response, _ERROR_BODY_MAX_BYTES)
    response.close()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An ``auth`` that changes nothing: without one, requests would put ~/.netrc credentials over ours."""
    return request


def _redact(url: str) -> str:
    """Drop the query: presigned storage URLs carry signatures and session tokens there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


_REASONS: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((ConnectionRefusedError,), "connection refused"),
    ((socket.gaierror,), "host name not found"),
    ((ConnectionResetError,), "connection reset"),
    ((http.client.IncompleteRead,), "the answer broke off"),
    ((requests.exceptions.SSLError, urllib3.exceptions.SSLError), "TLS handshake failed"),
    # Not urllib3's TimeoutError: its NewConnectionError (a refused connection, say) derives from it.
    ((requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError), "timed out"),
)


def _reason(exc: BaseException) -> str:
    """A short cause, found by type: exception texts embed URLs whose queries may hold secrets."""
    if isinstance(exc, DeadlineExceeded):
        return str(exc)
    chain: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending += [e for e in linked if isinstance(e, BaseException)]
    for kinds, reason in _REASONS:
        if any(isinstance(e, kinds) for e in chain):
            return reason
    return "connection failed"
