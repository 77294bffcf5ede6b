"""Registry credentials and the challenge-driven authentication of the distribution API.

Credentials are looked up where docker, podman and skopeo keep them, so a ``docker login`` (or a credential helper)
the user already has just works. Nothing here ever formats a password or token into a message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from ocimodel.errors import OcimodelError
from ocimodel.registry.reference import DOCKER_HUB, DOCKER_HUB_API, is_loopback, parse_ecr

log = logging.getLogger("ocimodel.registry")

# docker keeps Docker Hub credentials under its v1 index URL; podman under docker.io.
_DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})
_HELPER_TIMEOUT_SECONDS = 60
_TOKEN_DEFAULT_EXPIRES_IN = 60
# Basic credentials are looked up again this often, not on every request: a credential helper is a process to start,
# while a token that changes (ECR's, renewed by its source before it expires) is picked up within a minute.
_BASIC_RESOLVE_SECONDS = 60


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @property
    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


CredentialSource = Callable[[str], Credentials | None]
"""Credentials for a registry (as written in references: ``docker.io``, ``host:port``), or None if it knows none.

Sources are tried in order; this is the hook for per-registry token providers such as ECR's.
"""


@dataclass(frozen=True)
class Keychain:
    sources: tuple[CredentialSource, ...]

    def resolve(self, registry: str) -> Credentials | None:
        for source in self.sources:
            creds = source(registry)
            if creds is not None:
                return creds
        return None

    def forget(self, registry: str) -> None:
        """Drop what sources cached for ``registry`` (a login token the registry no longer takes)."""
        for source in self.sources:
            forget = getattr(source, "forget", None)
            if forget is not None:
                forget(registry)


def default_keychain(explicit: Mapping[str, Credentials] | None = None) -> Keychain:
    """Explicit credentials, then ECR's API for ECR hosts, then the docker/podman config files.

    ECR comes before the files because a ``docker login`` to ECR silently expires after 12 hours, while the AWS
    credentials behind boto3 are what the user maintains.
    """
    given = {_canonical_registry(host): creds for host, creds in (explicit or {}).items()}
    return Keychain((lambda registry: given.get(_canonical_registry(registry)), EcrCredentials(), config_credentials))


def config_credentials(registry: str) -> Credentials | None:
    """Look ``registry`` up in REGISTRY_AUTH_FILE, docker's config.json, then podman's runtime auth.json."""
    for path in _config_paths(os.environ):
        config = _load_config(path)
        if config is not None:
            creds = _credentials_from_config(config, path, registry)
            if creds is not None:
                return creds
    return None


def _config_paths(env: Mapping[str, str]) -> Iterable[Path]:
    if env.get("REGISTRY_AUTH_FILE"):
        yield Path(env["REGISTRY_AUTH_FILE"])
    docker_dir = env.get("DOCKER_CONFIG")
    yield Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json"
    if env.get("XDG_RUNTIME_DIR"):
        yield Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"


def _load_config(path: Path) -> Mapping[str, Any] | None:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise OcimodelError(f"cannot read credentials file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise OcimodelError(f"credentials file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise OcimodelError(f"credentials file {path} is not a JSON object")
    return config


def _credentials_from_config(config: Mapping[str, Any], path: Path, registry: str) -> Credentials | None:
    """docker's order: a per-registry helper, else the default credential store, else the inline ``auths``."""
    keys = _lookup_keys(registry)
    helpers = config.get("credHelpers") or {}
    helper = next((helpers[k] for k in keys if k in helpers), None) or config.get("credsStore")
    if helper:
        creds = _run_credential_helper(helper, keys[0], path)
        if creds is not None:
            return creds
    return _credentials_from_auths(config.get("auths") or {}, path, registry)


def _lookup_keys(registry: str) -> list[str]:
    """Keys a credential store may file ``registry`` under, the one docker itself uses first."""
    if _canonical_registry(registry) == DOCKER_HUB:
        return [_DOCKER_HUB_SERVER_URL, *sorted(_DOCKER_HUB_NAMES)]
    return [registry]


def _canonical_registry(registry: str) -> str:
    return DOCKER_HUB if registry in _DOCKER_HUB_NAMES else registry


def _key_host(key: str) -> str:
    """``https://host/v1/`` → ``host``: docker matches ``auths`` keys on the hostname alone."""
    return _canonical_registry(re.sub(r"^https?://", "", key).split("/", 1)[0])


def _credentials_from_auths(auths: Mapping[str, Any], path: Path, registry: str) -> Credentials | None:
    wanted = _canonical_registry(registry)
    exact = [k for k in auths if k in _lookup_keys(registry)]
    for key in exact + [k for k in auths if k not in exact and _key_host(k) == wanted]:
        entry = auths[key]
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                username, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise OcimodelError(f"the 'auth' entry for {key} in {path} is not base64 user:password") from None
            if not sep:
                raise OcimodelError(f"the 'auth' entry for {key} in {path} is not base64 user:password")
            return Credentials(username, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
    return None


def _run_credential_helper(helper: str, server_url: str, path: Path) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run(
            [program, "get"],
            input=server_url,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        raise OcimodelError(
            f"credential helper {program} (named in {path}) is not on PATH: install it or remove it from that file"
        ) from None
    except subprocess.TimeoutExpired:
        raise OcimodelError(f"credential helper {program} did not answer within {_HELPER_TIMEOUT_SECONDS}s") from None
    if result.returncode != 0:
        output = (result.stdout.strip() or result.stderr.strip()).splitlines()
        if output and "credentials not found" in output[0].lower():
            return None
        reason = output[0][:200] if output else f"exit status {result.returncode}"
        raise OcimodelError(f"credential helper {program} failed for {server_url}: {reason}")
    try:
        answer = json.loads(result.stdout)
        return Credentials(answer["Username"], answer["Secret"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise OcimodelError(f"credential helper {program} did not answer with JSON Username/Secret") from None


# ECR tokens live 12 hours; renewing well before the end keeps a long push from starting with a dying token.
_ECR_TOKEN_LIFETIME_SECONDS = 12 * 3600
_ECR_RENEW_MARGIN_SECONDS = 30 * 60


class EcrCredentials:
    """A credential source for private ECR registries, asking ECR's API for a 12-hour login token.

    boto3 is imported only when an ECR host is actually used, so other registries never pay for it.
    """

    def __init__(self, client_factory: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.time):
        self._client_factory = client_factory or _boto3_ecr_client
        self._clock = clock
        self._cache: dict[str, tuple[Credentials, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, registry: str) -> Credentials | None:
        ecr = parse_ecr(registry)
        if ecr is None:
            return None
        with self._lock:
            cached = self._cache.get(registry)
            if cached is not None and self._clock() < cached[1]:
                return cached[0]
            creds, expires_at = self._fetch(registry, ecr.region)
            self._cache[registry] = (creds, expires_at - _ECR_RENEW_MARGIN_SECONDS)
            return creds

    def forget(self, registry: str) -> None:
        with self._lock:
            self._cache.pop(registry, None)

    def _fetch(self, registry: str, region: str) -> tuple[Credentials, float]:
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise OcimodelError(f"logging in to ECR registry {registry} needs boto3: pip install boto3") from None
        try:
            data = self._client_factory(region).get_authorization_token()["authorizationData"][0]
        except (BotoCoreError, ClientError) as exc:
            raise OcimodelError(
                f"cannot get an ECR login token for {registry}: {exc}; configure AWS credentials (AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) allowed ecr:GetAuthorizationToken"
            ) from None
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        expires_at = data.get("expiresAt")
        lifetime_end = expires_at.timestamp() if expires_at else self._clock() + _ECR_TOKEN_LIFETIME_SECONDS
        return Credentials(username, password), lifetime_end


def _boto3_ecr_client(region: str) -> Any:
    import boto3

    return boto3.client("ecr", region_name=region)


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        params = {
            key.lower(): re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
            for key, quoted, bare in re.findall(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', rest)
        }
        return cls(scheme.lower(), params)


def repository_scope(repository: str, actions: Sequence[str]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


TokenFetcher = Callable[[str, list[tuple[str, str]], dict[str, str]], requests.Response]
"""GET ``url`` with query ``params`` and ``headers``: how the registry client lends its retrying HTTP to auth."""


@dataclass(frozen=True)
class _Token:
    header: str = field(repr=False)
    renew_at: float = 0.0


class Authenticator:
    """The authentication state for one registry host, shared by every request to it.

    It learns the scheme from the first 401 and from then on authorises requests up front: Basic credentials on
    every request, or a Bearer token per set of scopes, cached until shortly before it expires. Thread-safe, so
    parallel blob transfers share tokens.
    """

    def __init__(
        self,
        registry: str,
        keychain: Keychain,
        fetch_token: TokenFetcher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._keychain = keychain
        self._fetch_token = fetch_token
        self._clock = clock
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._credentials: Credentials | None = None
        self._resolved_at = 0.0
        self._tokens: dict[tuple[str, str, frozenset[str]], _Token] = {}

    def authorization(self, scopes: Sequence[str]) -> str | None:
        """The Authorization header for a request needing ``scopes``, or None until the registry asked for one."""
        with self._lock:
            if self._challenge is None:
                return None
            if self._challenge.scheme == "basic":
                if self._clock() >= self._resolved_at + _BASIC_RESOLVE_SECONDS:
                    self._resolve()
                return self._credentials.basic_header if self._credentials else None
            token = self._tokens.get(self._token_key(self._challenge, scopes))
            if token is None or self._clock() >= token.renew_at:
                token = self._bearer(self._challenge, scopes)
            return token.header

    def authenticate(self, www_authenticate: str | None, scopes: Sequence[str]) -> None:
        """React to a 401: re-read credentials and get a fresh token, so the request can be retried once."""
        if not www_authenticate:
            raise OcimodelError(
                f"registry {self.registry} answered 401 without saying how to authenticate "
                f"(for {_describe(scopes)}): check the registry address"
            )
        challenge = Challenge.parse(www_authenticate)
        if challenge.scheme not in ("basic", "bearer"):
            raise OcimodelError(
                f"registry {self.registry} asks for unsupported {challenge.scheme!r} authentication; "
                "only Basic and Bearer are supported"
            )
        with self._lock:
            if self._credentials is not None and self._challenge is not None:
                self._keychain.forget(self.registry)  # they were sent and refused: a cached login token is stale
            self._challenge = challenge
            self._resolve()
            if challenge.scheme == "basic":
                if self._credentials is None:
                    raise self.rejected(scopes)
                log.debug("registry %s: using Basic authentication", self.registry)
                return
            self._tokens.pop(self._token_key(challenge, scopes), None)
            self._bearer(challenge, scopes)

    def relogin_after_denial(self) -> bool:
        """After a 403 from ECR, log in again (True), once per refusal: ECR answers an expired token with 403
        ("Your authorization token has expired") where other registries say 401. Other registries: False."""
        with self._lock:
            if parse_ecr(self.registry) is None or self._challenge is None or self._challenge.scheme != "basic":
                return False
            self._keychain.forget(self.registry)
            self._resolve()
            return self._credentials is not None

    def _resolve(self) -> None:
        self._credentials = self._keychain.resolve(self.registry)
        self._resolved_at = self._clock()

    def rejected(self, scopes: Sequence[str]) -> OcimodelError:
        """The error for a registry that still says 401 after we authenticated as well as we could."""
        if self._credentials is None:
            return OcimodelError(
                f"registry {self.registry} requires credentials for {_describe(scopes)} (or it does not exist): "
                f"run docker login {self.registry} or set REGISTRY_AUTH_FILE"
            )
        return OcimodelError(
            f"registry {self.registry} refused the credentials for {_describe(scopes)}: "
            "check docker login / REGISTRY_AUTH_FILE"
        )

    @staticmethod
    def _token_key(challenge: Challenge, scopes: Sequence[str]) -> tuple[str, str, frozenset[str]]:
        return challenge.params.get("realm", ""), challenge.params.get("service", ""), frozenset(scopes)

    def _bearer(self, challenge: Challenge, scopes: Sequence[str]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm:
            raise OcimodelError(f"registry {self.registry} sent a Bearer challenge without a realm to get tokens from")
        wanted = dict.fromkeys([*scopes, *challenge.params.get("scope", "").split()])
        params = [("service", challenge.params["service"])] if challenge.params.get("service") else []
        params += [("scope", scope) for scope in wanted]
        realm_host = urlsplit(realm).hostname or ""
        plain_ok = is_loopback(realm_host) or realm_host == urlsplit(f"//{self.registry}").hostname
        if self._credentials and realm.startswith("http://") and not plain_ok:
            raise OcimodelError(
                f"registry {self.registry} asks for credentials to be sent to {realm} over plain HTTP; refusing: "
                "its token service must use https"
            )
        headers = {"Authorization": self._credentials.basic_header} if self._credentials else {}
        log.debug(
            "registry %s: requesting a token from %s for %s (%s)",
            self.registry,
            realm,
            " ".join(wanted),
            "with credentials" if self._credentials else "anonymously",
        )
        response = self._fetch_token(realm, params, headers)
        with response:
            if response.status_code in (401, 403):
                raise self.rejected(scopes)
            if response.status_code != 200:
                raise OcimodelError(
                    f"token service {realm} of registry {self.registry} answered {response.status_code} "
                    f"for {_describe(scopes)}: try again later"
                )
            try:
                answer = response.json()
            except ValueError:
                answer = None
        value = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
        if not value:
            raise OcimodelError(f"token service {realm} of registry {self.registry} answered without a token")
        try:
            expires_in = int(answer.get("expires_in") or _TOKEN_DEFAULT_EXPIRES_IN)
        except (TypeError, ValueError):
            expires_in = _TOKEN_DEFAULT_EXPIRES_IN
        # Renew a little early so a token cannot expire between our check and the registry's.
        token = _Token(f"Bearer {value}", self._clock() + expires_in - min(30, expires_in / 5))
        self._tokens[self._token_key(challenge, scopes)] = token
        return token


def _describe(scopes: Sequence[str]) -> str:
    """``repository:a/b:pull`` → ``a/b``: the repositories a user recognises, not the protocol's scope strings."""
    names = [s.split(":")[1] for s in scopes if s.startswith("repository:") and s.count(":") >= 2]
    return ", ".join(dict.fromkeys(names)) or "the registry"
