"""The image builder's one error: something about the inputs makes the image impossible."""

from __future__ import annotations

from modules._errors import InvalidPackageError


class ImageBuildError(InvalidPackageError):
    """A module image cannot be built from what was given (base image, platform, packages)."""
