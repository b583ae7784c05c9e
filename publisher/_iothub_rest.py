"""IoT Hub's service REST API, the little of it the publisher needs: read twins, patch desired
properties, invoke direct methods. `aiohttp` and a SAS token made from the hub's connection
string; no service SDK (the Python one pulls in uAMQP and a second HTTP stack for these calls).

The base URL is `https://<HostName>`; certificates are verified with the system's trust store
(`SSL_CERT_FILE` names another bundle, as for any Python TLS client).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from modules import ConfigError, ModelfleetError
from modules.azureiot import parse_connection_string

API_VERSION = "2021-04-12"
SAS_TTL_S = 3600
_QUERY_PAGE = 100


class IotHubApiError(ModelfleetError):
    """IoT Hub refused or failed a service call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServiceCredentials:
    """A shared access policy of the hub (e.g. `service` or `iothubowner`): who the publisher is."""

    host: str
    policy: str
    key: str

    @classmethod
    def from_connection_string(cls, text: str) -> ServiceCredentials:
        fields = parse_connection_string(text)
        missing = [k for k in ("HostName", "SharedAccessKeyName", "SharedAccessKey") if not fields.get(k)]
        if missing:
            raise ConfigError(
                "the IoT Hub service connection string needs HostName, SharedAccessKeyName and "
                f"SharedAccessKey (missing: {', '.join(missing)}); it is the hub's, not a device's"
            )
        try:
            base64.b64decode(fields["SharedAccessKey"], validate=True)
        except ValueError:
            raise ConfigError("the SharedAccessKey of the IoT Hub connection string is not base64") from None
        return cls(fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"])

    def sas_token(self, now: float | None = None, ttl_s: int = SAS_TTL_S) -> str:
        """`SharedAccessSignature sr=<host>&sig=<HMAC-SHA256 of "<sr>\\n<se>">&se=<expiry>&skn=<policy>`."""
        expiry = int((time.time() if now is None else now) + ttl_s)
        resource = quote(self.host.lower(), safe="")
        digest = hmac.new(base64.b64decode(self.key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
        signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
        return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn={self.policy}"


class TwinApi:
    """One session with the hub's REST API; `async with TwinApi(creds, base_url) as api`."""

    def __init__(self, credentials: ServiceCredentials, base_url: str | None = None, timeout_s: float = 30.0):
        self._credentials = credentials
        self._base = (base_url or f"https://{credentials.host}").rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TwinApi:
        # Made now, so the trust store (and SSL_CERT_FILE) is read when the session opens.
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[Any, dict[str, str]]:
        assert self._session is not None, "use TwinApi as an async context manager"
        url = f"{self._base}{path}{'&' if '?' in path else '?'}api-version={API_VERSION}"
        sent = {"Authorization": self._credentials.sas_token(), **(headers or {})}
        try:
            async with self._session.request(method, url, json=body, headers=sent) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise IotHubApiError(
                        f"IoT Hub answered {method} {path} with {resp.status}: {text[:300]}", resp.status
                    )
                return (await resp.json(content_type=None) if text else None), dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise IotHubApiError(
                f"cannot reach IoT Hub at {self._base}: {exc or type(exc).__name__}"
            ) from None

    async def twins(self) -> list[dict[str, Any]]:
        """Every device twin of the hub (the query API, page by page)."""
        out: list[dict[str, Any]] = []
        continuation: str | None = None
        while True:
            headers = {"x-ms-max-item-count": str(_QUERY_PAGE)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            page, response_headers = await self._call(
                "POST", "/devices/query", {"query": "SELECT * FROM devices"}, headers
            )
            out.extend(t for t in page or [] if isinstance(t, dict))
            continuation = response_headers.get("x-ms-continuation") or response_headers.get(
                "X-Ms-Continuation"
            )
            if not continuation:
                return out

    async def twin(self, device_id: str) -> dict[str, Any]:
        body, _ = await self._call("GET", f"/twins/{quote(device_id, safe='')}")
        return body

    async def patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        body, _ = await self._call(
            "PATCH", f"/twins/{quote(device_id, safe='')}", {"properties": {"desired": patch}}
        )
        return body

    async def invoke(self, device_id: str, method: str, payload: Any, timeout_s: int) -> tuple[int, Any]:
        """A direct method; (the device's status, its payload)."""
        body, _ = await self._call(
            "POST",
            f"/twins/{quote(device_id, safe='')}/methods",
            {"methodName": method, "payload": payload, "responseTimeoutInSeconds": timeout_s},
        )
        return int(body.get("status", 500)), body.get("payload")
