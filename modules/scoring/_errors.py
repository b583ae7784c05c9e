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
    """The model or the host could not produce a result; the message says why."""

    status = 500


class ScriptFailedError(RunFailedError):
    """`run()` itself raised. Its text may hold anything the script had at hand (a connection
    string, a customer's data), so clients get a generic message with the request id unless the
    host runs with `error_details`; the text and the traceback go to the log."""

    public_message = "An unexpected error occurred in scoring script. Check the logs for more info."


class RequestHeaderTooLargeError(ScoringError):
    status = 431


class NotReadyError(ScoringError):
    """init() has not succeeded (yet, or at all)."""

    status = 503


class ScoringTimeoutError(ScoringError):
    status = 504
