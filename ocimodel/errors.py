"""The exceptions ocimodel raises for everything a user can act on.

Every one is an ``OcimodelError``: its message is one line that names the thing and says what to do, never contains
a secret, and never names a command-line flag (library callers have none; the CLI maps ``InvalidArgument`` to its
own flag names). Anything else raised is a bug and keeps its traceback (the CLI shows it with ``--debug``).
"""


class OcimodelError(Exception):
    """A failure caused by input or by a remote system, explained in one line."""


class InvalidArgument(OcimodelError, ValueError):
    """An argument of an API call is unusable; ``argument`` is its keyword (``tag``, ``platforms``, ``base``...)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.reason = message


class SourceError(OcimodelError):
    """The model's files could not be listed, fetched or read (a local directory, or a Hub repository)."""


class LayoutError(OcimodelError):
    """An OCI image layout could not be read or written."""


class VerificationError(OcimodelError):
    """Content is not what it claims to be; such bytes are never used."""


class DigestMismatch(VerificationError):
    """Content did not hash to the digest that named it."""


#: Answers that say "not now" rather than "no": worth another try.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RegistryError(OcimodelError):
    """A registry call that failed, with what a caller needs to decide whether starting over can help.

    ``status`` is None when no answer came at all (connection refused, reset, timed out): that, like 408, 429 and
    5xx, is ``transient``. ``codes`` are the distribution-spec error codes of the answer (BLOB_UPLOAD_UNKNOWN, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        codes: frozenset[str] = frozenset(),
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in TRANSIENT_STATUSES
