"""Image references as Docker users write them: `[host[:port]/]repository[:tag][@digest]`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modules._errors import ConfigError

_REPOSITORY = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageReference:
    """`registry` is `host[:port]`, or None for "the configured registry"."""

    registry: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_registry(self, registry: str) -> ImageReference:
        return ImageReference(registry, self.repository, self.tag, self.digest)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_reference(text: str) -> ImageReference:
    """Docker's rule: the first component is a registry when it has a `.` or `:` or is `localhost`."""
    value = text.strip()
    if "://" in value:
        value = value.split("://", 1)[1]
    name, _, digest = value.partition("@")
    registry: str | None = None
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, name = first, rest
    tag = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        name, tag = name[:colon], name[colon + 1 :]
    if not _REPOSITORY.match(name):
        raise ConfigError(f"not an image reference: {text!r} (repository {name!r})")
    if tag is not None and not _TAG.match(tag):
        raise ConfigError(f"not an image reference: {text!r} (tag {tag!r})")
    if digest and not _DIGEST.match(digest):
        raise ConfigError(f"not an image reference: {text!r} (digest {digest!r})")
    return ImageReference(registry, name, tag, digest or None)
