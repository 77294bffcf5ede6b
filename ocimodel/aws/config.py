"""``models.toml``: the models to build in AWS and the settings of what holds them, checked whole before any AWS call.

A typo must not half-create an account's resources, so every table and key is checked up front: unknown keys,
wrong types, names AWS would refuse. The first problem is reported with the model and key it concerns, and how many
more there are.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from ocimodel.aws.sizing import COMPUTE_TYPES
from ocimodel.errors import OcimodelError

DEFAULT_IMAGE = "aws/codebuild/standard:7.0"
DEFAULT_PYTHON = "3.12"
#: ocimodel's own ``requires-python``.
MIN_PYTHON = (3, 11)
#: CodeBuild's curated images: the only ones with ``runtime-versions`` and pulled with CodeBuild's credentials.
CURATED_IMAGE_PREFIX = "aws/codebuild/"
#: CodeBuild's project name limit; the project is ``<prefix>-<name>``.
MAX_PROJECT_NAME = 150
DEFAULT_REPOSITORY_PREFIX = "kserve-models"
#: The retention periods CloudWatch Logs accepts, in days.
LOG_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)
MIN_TIMEOUT_MINUTES = 5
MAX_TIMEOUT_MINUTES = 2160

_REPO_ID = re.compile(r"[\w.-]{1,96}/[\w.-]{1,96}")
#: ECR's repository name rule (2 to 256 characters), as botocore's model states it.
_ECR_PART = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_ECR_REPOSITORY = re.compile(rf"(?=.{{2,256}}$){_ECR_PART}(?:/{_ECR_PART})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
#: Short enough that ``<prefix>-<account>-<region>`` stays within S3's 63 characters.
_PREFIX = re.compile(r"[a-z][a-z0-9-]{0,18}[a-z0-9]")
#: What ``<prefix>-<name>`` must be for CodeBuild (its length is checked against the prefix's).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_SECRET_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
#: KMS's alias rule (botocore: ``^[a-zA-Z0-9:/_-]+$``, at most 256), with the ``alias/`` prefix it requires and
#: without ``alias/aws/``, which AWS keeps for its own keys.
_KMS_ALIAS = re.compile(r"alias/(?!aws/)[A-Za-z0-9/_-]{1,250}")
#: What KMS takes as a key id: an alias name, a key id, or a key or alias ARN (any partition).
_KMS_KEY_ID = re.compile(
    rf"{_KMS_ALIAS.pattern}|(?:mrk-[0-9a-f]{{32}}|[0-9a-f]{{8}}(?:-[0-9a-f]{{4}}){{3}}-[0-9a-f]{{12}})"
    r"|arn:aws[a-z-]*:kms:[a-z]{2}(?:-[a-z]+)+-\d+:\d{12}:(?:key/[A-Za-z0-9-]{1,64}|alias/[A-Za-z0-9/_-]{1,250})"
)
#: The KMS key specs ocimodel creates: ECDSA curves that OpenSSF model signing verifiers check.
SIGNING_KEY_SPECS = ("ECC_NIST_P256", "ECC_NIST_P384")


def slug(repo_id: str) -> str:
    """``Qwen/Qwen2.5-7B-Instruct`` → ``qwen-qwen2-5-7b-instruct``: usable in ECR and CodeBuild names.

    A run of separators ECR refuses between two names' parts (mixed, or ``___``) becomes one ``-``, and the slug
    neither starts nor ends with one; what ECR accepts (``-``, ``--``, ``_``, ``__``) is kept as it was.
    """
    text = repo_id.lower().replace("/", "-").replace(".", "-")
    text = re.sub(r"[-_]+", lambda m: m[0] if m[0] in ("_", "__") or set(m[0]) == {"-"} else "-", text)
    return text.strip("-_")


def short_name(repo_id: str, budget: int) -> str:
    """The default short name of a model: its slug, cut to ``budget`` characters with a hash of the id kept at its
    end, so long ids that share a beginning still get distinct, stable names."""
    name = slug(repo_id)
    if len(name) <= budget:
        return name
    digest = hashlib.sha256(repo_id.encode()).hexdigest()[:8]
    return f"{name[: budget - len(digest) - 1].rstrip('-_')}-{digest}"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    #: Short name: the CodeBuild project is ``<prefix>-<name>``, and ``ocimodel aws build NAME`` finds the model.
    name: str
    repository: str
    revision: str = "main"
    tag: str = "latest"
    compute_type: str | None = None
    timeout_minutes: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: ``--base`` of this model's build; None takes ``[aws] base``.
    base: str | None = None


@dataclass(frozen=True)
class SigningSettings:
    """``[signing]``: builds sign their images' ``model.sig`` with a KMS key whose private half never leaves KMS."""

    #: An alias (``alias/…``), key id, or key or alias ARN: what the buildspec passes to ``--sign-kms-key``.
    kms_key: str
    #: bootstrap creates the key and the alias when the alias names no key (and teardown removes them).
    create: bool = False
    key_spec: str = "ECC_NIST_P256"


@dataclass(frozen=True)
class AwsSettings:
    region: str | None = None
    #: Start of every name bootstrap gives: projects, role, bucket, default secret.
    prefix: str = "ocimodel"
    tag_mutability: str = "MUTABLE"
    encryption: str = "AES256"
    kms_key: str | None = None
    keep_images: int = 10
    untagged_days: int = 1
    log_retention_days: int = 30
    hf_token: bool = True
    hf_token_secret: str = "ocimodel/hf-token"
    image: str = DEFAULT_IMAGE
    python: str = DEFAULT_PYTHON
    #: ``--base`` of the builds, e.g. a busybox mirrored into ECR; None keeps ocimodel's default.
    base: str | None = None
    #: The ``[signing]`` table (it is not under ``[aws]`` in the file); None: builds do not sign.
    signing: SigningSettings | None = None

    @property
    def curated_image(self) -> bool:
        return self.image.startswith(CURATED_IMAGE_PREFIX)


@dataclass(frozen=True)
class Config:
    aws: AwsSettings
    models: tuple[ModelSpec, ...]

    def find(self, wanted: str) -> ModelSpec:
        """A model by Hub id (any case), short name, or repository."""
        for model in self.models:
            if wanted.lower() in (model.id.lower(), model.name.lower(), model.repository):
                return model
        known = ", ".join(m.name for m in self.models)
        raise OcimodelError(f"no model {wanted!r} in the config; its models are: {known}")


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OcimodelError(f"config file {path} not found: pass --config PATH (see examples/models.toml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OcimodelError(f"cannot read config file {path}: {exc}") from None
    return parse_config(text, str(path))


def parse_config(text: str, origin: str) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OcimodelError(f"{origin} is not valid TOML: {exc}") from None
    problems: list[str] = []
    _unknown(document, {"aws", "models", "signing"}, "top level", problems)
    aws = _aws(_table(document.get("aws", {}), "[aws]", problems), problems)
    if "signing" in document:
        signing = _signing(_table(document["signing"], "[signing]", problems), aws.prefix, problems)
        aws = replace(aws, signing=signing)
    raw_models = document.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        problems.append("no [[models]] table: list at least one model")
        raw_models = []
    models = [_model(entry, i, aws.prefix, problems) for i, entry in enumerate(raw_models, 1)]
    _check_unique(models, problems)
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise OcimodelError(f"{origin}: {problems[0]}{more}")
    return Config(aws, tuple(m for m in models if m is not None))


def _aws(table: dict[str, Any], problems: list[str]) -> AwsSettings:
    where = "[aws]"
    fields = {
        "region",
        "prefix",
        "tag_mutability",
        "encryption",
        "kms_key",
        "keep_images",
        "untagged_days",
        "log_retention_days",
        "hf_token",
        "hf_token_secret",
        "image",
        "python",
        "base",
    }
    _unknown(table, fields, where, problems)
    read = _Reader(table, where, problems)
    prefix = read.text(
        "prefix", AwsSettings.prefix, _PREFIX, "3 to 20 lowercase letters, digits or -, starting with a letter"
    )
    encryption = read.choice("encryption", AwsSettings.encryption, ("AES256", "KMS"))
    kms_key = read.text("kms_key", None)
    if kms_key and encryption != "KMS":
        problems.append(
            f'{where}: kms_key is set but encryption is {encryption}; set encryption = "KMS" or drop kms_key'
        )
    retention = read.integer("log_retention_days", AwsSettings.log_retention_days, 1, 3653)
    if retention not in LOG_RETENTION_DAYS:
        problems.append(
            f"{where}: log_retention_days = {retention} is not a period CloudWatch Logs offers "
            f"({', '.join(map(str, sorted(LOG_RETENTION_DAYS)))})"
        )
    base = _base(read)
    image = read.text("image", AwsSettings.image)
    python = read.text("python", AwsSettings.python, re.compile(r"\d+\.\d+"), "a version such as 3.12")
    if tuple(int(part) for part in python.split(".")) < MIN_PYTHON:
        problems.append(f"{where}: python = {python!r}: ocimodel needs Python 3.11 or newer")
    if "python" in table and not image.startswith(CURATED_IMAGE_PREFIX):
        problems.append(
            f"{where}: python applies to CodeBuild's curated images (aws/codebuild/…) only, not {image!r}: drop "
            "it; a custom image must bring python3 3.11 or newer, with pip"
        )
    return AwsSettings(
        region=read.text("region", None, _REGION, "an AWS region such as us-east-1"),
        prefix=prefix,
        tag_mutability=read.choice("tag_mutability", AwsSettings.tag_mutability, ("MUTABLE", "IMMUTABLE")),
        encryption=encryption,
        kms_key=kms_key,
        keep_images=read.integer("keep_images", AwsSettings.keep_images, 1, 10000),
        untagged_days=read.integer("untagged_days", AwsSettings.untagged_days, 1, 3650),
        log_retention_days=retention,
        hf_token=read.boolean("hf_token", AwsSettings.hf_token),
        hf_token_secret=read.text("hf_token_secret", f"{prefix}/hf-token", _SECRET_NAME, "a Secrets Manager name"),
        image=image,
        python=python,
        base=base,
    )


def _signing(table: dict[str, Any], prefix: str, problems: list[str]) -> SigningSettings:
    where = "[signing]"
    _unknown(table, {"kms_key", "create", "key_spec"}, where, problems)
    read = _Reader(table, where, problems)
    create = read.boolean("create", SigningSettings.create)
    default = f"alias/{prefix}-model-signing" if create else None
    kms_key = read.text(
        "kms_key", default, _KMS_KEY_ID, "a KMS key: alias/NAME, a key id, or a key or alias ARN (not alias/aws/…)"
    )
    key_spec = read.choice("key_spec", SigningSettings.key_spec, SIGNING_KEY_SPECS)
    if kms_key is None and "kms_key" not in table:
        problems.append(
            f'{where}: name the signing key (kms_key = "alias/…"), or set create = true to let bootstrap make one'
        )
    elif create and not _KMS_ALIAS.fullmatch(kms_key):
        problems.append(
            f"{where}: with create = true, kms_key must be an alias (alias/NAME) for bootstrap to give the new key, "
            f"not {kms_key!r}"
        )
    if "key_spec" in table and not create:
        problems.append(f"{where}: key_spec applies to a key bootstrap creates (create = true) only: drop it")
    return SigningSettings(kms_key=kms_key or "", create=create, key_spec=key_spec)


def _base(read: _Reader) -> str | None:
    base = read.text("base", None)
    if base and base != "scratch" and "@sha256:" not in base:
        read.problems.append(
            f"{read.where}: base must be pinned by digest (REPO@sha256:…) or be 'scratch', not {base!r}"
        )
        return None
    return base


def _model(entry: object, index: int, prefix: str, problems: list[str]) -> ModelSpec | None:
    if not isinstance(entry, dict):
        problems.append(f"model {index}: [[models]] entries must be tables")
        return None
    repo_id = entry.get("id")
    where = f"model {index} ({repo_id})" if isinstance(repo_id, str) else f"model {index}"
    fields = {
        "id", "name", "revision", "repository", "tag", "compute_type", "timeout_minutes", "include", "exclude", "base"
    }
    _unknown(entry, fields, where, problems)
    if "id" not in entry:
        problems.append(f"{where}: missing required key 'id' (the HuggingFace repo id, org/name)")
        return None
    read = _Reader(entry, where, problems)
    repo_id = read.text("id", "", _REPO_ID, "a HuggingFace repo id, org/name")
    budget = MAX_PROJECT_NAME - len(prefix) - 1
    name = read.text(
        "name",
        short_name(repo_id, budget),
        _NAME,
        "letters, digits, - and _ (the CodeBuild project is <prefix>-<name>)",
    )
    if len(name) > budget:
        problems.append(
            f"{where}: name {name!r} is {len(name)} characters; with the prefix the CodeBuild project name may have "
            f"{budget}: choose a shorter name"
        )
    repository = read.text(
        "repository",
        f"{DEFAULT_REPOSITORY_PREFIX}/{slug(repo_id)}",
        _ECR_REPOSITORY,
        "an ECR repository name: lowercase letters, digits, and single . _ - or / between them",
    )
    return ModelSpec(
        id=repo_id,
        name=name,
        repository=repository,
        revision=read.text("revision", ModelSpec.revision),
        tag=read.text("tag", ModelSpec.tag, _TAG, "a tag: letters, digits, _ . - (at most 128, no leading . or -)"),
        compute_type=read.choice("compute_type", None, tuple(c.name for c in COMPUTE_TYPES)),
        timeout_minutes=read.integer("timeout_minutes", None, MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES),
        include=read.globs("include"),
        exclude=read.globs("exclude"),
        base=_base(read),
    )


def _check_unique(models: list[ModelSpec | None], problems: list[str]) -> None:
    """Two models may not share a project (name) or a repository: each would overwrite the other."""
    seen: dict[tuple[str, str], int] = {}
    for index, model in enumerate(models, 1):
        if model is None:
            continue
        for key, value in (("name", model.name.lower()), ("repository", model.repository)):
            first = seen.setdefault((key, value), index)
            if first != index:
                problems.append(
                    f"model {index} ({model.id}): {key} {value!r} is already model {first}'s; "
                    f"give one of them another {key}"
                )


def _table(value: object, where: str, problems: list[str]) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    problems.append(f"{where} must be a table")
    return {}


def _unknown(table: dict[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in table:
        if key not in known:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


T = TypeVar("T")


@dataclass(frozen=True)
class _Reader:
    """Typed reads of one table's keys; a bad value is noted as a problem and replaced by the default."""

    table: dict[str, Any]
    where: str
    problems: list[str]

    def _get(self, key: str, default: T, check: Callable[[Any], str | None]) -> T:
        if key not in self.table:
            return default
        value = self.table[key]
        problem = check(value)
        if problem:
            self.problems.append(f"{self.where}: {key} = {value!r}: {problem}")
            return default
        return value  # type: ignore[no-any-return]

    def text(self, key: str, default: T, pattern: re.Pattern[str] | None = None, what: str = "") -> str | T:
        def check(value: Any) -> str | None:
            if not isinstance(value, str) or not value:
                return "expected a non-empty string"
            if pattern is not None and not pattern.fullmatch(value):
                return f"expected {what}"
            return None

        return self._get(key, default, check)

    def choice(self, key: str, default: T, choices: tuple[str, ...]) -> str | T:
        return self._get(key, default, lambda v: None if v in choices else f"expected one of {', '.join(choices)}")

    def integer(self, key: str, default: T, low: int, high: int) -> int | T:
        def check(value: Any) -> str | None:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                return f"expected a whole number from {low} to {high}"
            return None

        return self._get(key, default, check)

    def boolean(self, key: str, default: bool) -> bool:
        return self._get(key, default, lambda v: None if isinstance(v, bool) else "expected true or false")

    def globs(self, key: str) -> tuple[str, ...]:
        def check(value: Any) -> str | None:
            if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
                return "expected a list of glob strings"
            return None

        return tuple(self._get(key, [], check))
