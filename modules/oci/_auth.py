"""Registry credentials and the Basic / Bearer-token challenge dance of the distribution spec."""

from __future__ import annotations

import base64
import re

from pydantic import BaseModel, ConfigDict, SecretStr

_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


class RegistryCredentials(BaseModel):
    """Anonymous when empty; a static `token` is sent as `Bearer` without a challenge."""

    model_config = ConfigDict(defer_build=True)

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None

    @property
    def has_basic(self) -> bool:
        return self.username is not None and self.password is not None

    def basic_header(self) -> str:
        assert self.username is not None and self.password is not None
        raw = f"{self.username}:{self.password.get_secret_value()}".encode()
        return "Basic " + base64.b64encode(raw).decode()


class Challenge(BaseModel):
    model_config = ConfigDict(defer_build=True)

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse one `WWW-Authenticate` value, e.g. `Bearer realm="...",service="...",scope="..."`."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    return Challenge(scheme=scheme.lower(), params=dict(_PARAM_RE.findall(rest)))
