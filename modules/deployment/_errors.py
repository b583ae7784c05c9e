"""Why a deployment was refused, as exceptions precise enough for the agent to report upstream.

An agent that refuses a document must say which rule it broke (unsigned, mis-signed, untrusted,
replayed, unparsable condition), so each rule has its own class; `TrustError` lets a caller treat
every signature and replay refusal alike.
"""

from __future__ import annotations

from modules._errors import ModelfleetError

_SHOWN_CONDITION = 200
"""Characters of a refused condition quoted in its error message."""


class DeploymentError(ModelfleetError):
    """Base of every refusal of a deployment document or manifest."""


class CanonicalFormError(DeploymentError):
    """A value that has no canonical JSON form (NaN, infinity, a non-string key, a lone surrogate)."""


class ConditionSyntaxError(DeploymentError):
    """A target condition that does not parse; `column` is 1-based, pointing at the offending token."""

    def __init__(self, message: str, text: str, column: int) -> None:
        self.message = message
        self.text = text
        self.column = column
        # The message is quoted into refusal reports; a megabyte condition must not be copied there.
        shown = text if len(text) <= _SHOWN_CONDITION else text[:_SHOWN_CONDITION] + "..."
        super().__init__(f"{message} at column {column} in condition {shown!r}")


class TrustError(DeploymentError):
    """A document the agent must not apply because its origin or freshness is not proven."""


class UnsignedDocumentError(TrustError):
    """The document carries no signature at all."""


class BadSignatureError(TrustError):
    """The signature is malformed or does not match the document's canonical form (tampering)."""


class UntrustedKeyError(TrustError):
    """Signed, but by a key that is not among the agent's trusted publisher keys."""


class ReplayedDocumentError(TrustError):
    """A version not above the last one applied for that deployment: a replay or a rollback attempt."""

    def __init__(self, name: str, version: int, last_applied: int) -> None:
        self.name = name
        self.version = version
        self.last_applied = last_applied
        super().__init__(
            f"deployment {name!r} version {version} is not above the last applied version {last_applied}"
        )
