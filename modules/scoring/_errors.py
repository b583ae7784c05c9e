"""Failures that map to one HTTP status each, so handlers raise and the app answers.

A handler never builds error responses itself: it raises one of these and the middleware turns it
into `{"message": ...}` (or `{"error": ...}` on the v2 routes) with the status it carries.
"""

from __future__ import annotations

from .._errors import ModelfleetError


class ScoringError(ModelfleetError):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(ScoringError):
    """The body does not match what the model or the schema expects."""

    status = 400


class ModelNotFoundError(ScoringError):
    status = 404


class PayloadTooLargeError(ScoringError):
    status = 413


class UnsupportedMediaTypeError(ScoringError):
    status = 415


class RunFailedError(ScoringError):
    """`run()` (or the model) raised; the message is the exception's, the traceback is logged."""

    status = 500


class NotReadyError(ScoringError):
    """init() has not succeeded (yet, or at all)."""

    status = 503


class ScoringTimeoutError(ScoringError):
    status = 504
