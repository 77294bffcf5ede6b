"""One exception type for everything the user can act on.

The CLI turns an ``OcimodelError`` into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback (shown with ``--debug``). Messages must name the thing and say what to do, and must never
contain a secret.
"""


class OcimodelError(Exception):
    """A failure caused by input or by a remote system, explained in one line."""


class DigestMismatch(OcimodelError):
    """Content did not hash to the digest that named it: never use such bytes."""
