"""Registry addresses as users type them (`127.0.0.1:5000`, `https://r.example`) made exact."""

from __future__ import annotations

from urllib.parse import urlsplit

from modules._errors import ConfigError

_LOOPBACK = ("localhost", "127.", "[::1]", "::1")


def normalize_registry_url(url: str) -> str:
    """Add a scheme when missing: plain HTTP only for loopback hosts, HTTPS otherwise."""
    url = url.strip().rstrip("/")
    if not url:
        raise ConfigError("no registry configured: pass --registry or set MODELFLEET_REGISTRY")
    if "://" not in url:
        host = url.split("/")[0]
        scheme = "http" if host.startswith(_LOOPBACK) else "https"
        url = f"{scheme}://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"not a registry URL: {url!r} (expected http(s)://host[:port])")
    if parts.path not in ("", "/"):
        raise ConfigError(f"registry URL must not have a path: {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def registry_host(url: str) -> str:
    """`host:port` as used in image references (and by skopeo)."""
    return urlsplit(normalize_registry_url(url)).netloc
