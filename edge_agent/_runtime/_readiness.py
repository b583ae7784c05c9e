"""Readiness and the smoke request, over HTTP: the same for a module's process and its container.

Both runtimes' instances serve the scoring host on 127.0.0.1 at their own internal port (host
networking for containers), so a new instance is judged the same way before it gets traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

import aiohttp

from ._config import InstanceConfig
from ._errors import ModuleStartError

_POLL_S = 0.1


class Checked(Protocol):
    """What the checks need of an instance."""

    config: InstanceConfig

    @property
    def returncode(self) -> int | None: ...

    @property
    def url(self) -> str: ...

    async def wait(self) -> int: ...

    def reason(self, lines: int = ...) -> str: ...


class HttpChecks:
    async def wait_ready(self, instance: Checked, timeout: float) -> None:
        """Until GET /v2/health/ready answers 200; fails fast on exit or a failed init()."""
        deadline = time.monotonic() + timeout
        exited = asyncio.ensure_future(instance.wait())
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
                while True:
                    if instance.returncode is not None or exited.done():
                        raise ModuleStartError(self._exit_reason(instance))
                    if await self._ready(session, instance):
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        detail = instance.reason()
                        raise ModuleStartError(
                            f"{instance.config.instance_id} not ready after {timeout:.0f}s"
                            + (f"; last output:\n{detail}" if detail else "")
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(exited), min(_POLL_S, remaining))
        finally:
            exited.cancel()

    async def _ready(self, session: aiohttp.ClientSession, instance: Checked) -> bool:
        """One readiness check; raises when the host reports that init() failed."""
        try:
            async with session.get(instance.url + "/v2/health/ready") as response:
                if response.status == 200:
                    return True
            # Not ready: the liveness route says whether it is still loading or has given up.
            async with session.get(instance.url + "/") as response:
                details = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False  # not listening yet
        if isinstance(details, dict) and details.get("status") == "Unhealthy":
            error = details.get("error") or "init() failed"
            raise ModuleStartError(f"{instance.config.instance_id}: {error}")
        return False

    def _exit_reason(self, instance: Checked) -> str:
        code = instance.returncode
        detail = instance.reason()
        return f"{instance.config.instance_id} exited with code {code} before it was ready" + (
            f"; last output:\n{detail}" if detail else ""
        )

    async def smoke_test(self, instance: Checked) -> None:
        """POST the spec's sample input to /score; anything but 2xx means the module is broken."""
        sample = instance.config.spec.sample_input
        if sample is None:
            return
        headers = {}
        if instance.config.primary_key is not None:
            headers["Authorization"] = f"Bearer {instance.config.primary_key.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=instance.config.spec.scoring.timeout_ms / 1000 + 5)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(instance.url + "/score", json=sample, headers=headers) as response,
            ):
                body = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ModuleStartError(f"smoke test of {instance.config.instance_id} failed: {exc!r}") from exc
        if not 200 <= status < 300:
            raise ModuleStartError(
                f"smoke test of {instance.config.instance_id}: HTTP {status}: {body[:1000]}"
            )
