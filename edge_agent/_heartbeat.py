"""Presence, telemetry and inference figures, once per heartbeat period.

The inference figures come from each serving module's `/metrics`; the HTTP session for that
exists only while some module serves, so an agent with nothing deployed keeps no socket open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aiohttp

from edge_agent._module_runtime import KeysLookup, ModuleRuntime
from edge_agent._status_book import StatusBook
from modules.device_state import Presence
from modules.topics import FleetTopics
from modules.transport import Transport, TransportError

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 5.0


class Heartbeat:
    def __init__(
        self,
        topics: FleetTopics,
        book: StatusBook,
        runtime: ModuleRuntime,
        transport: Transport,
        period_s: float,
        keys_for: KeysLookup = lambda _deployment: None,
        *,
        before_beat: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`before_beat`: more to collect each period (the agent reads modules' reported
        properties); a failure there is logged and the beat goes on."""
        self.topics = topics
        self.book = book
        self.runtime = runtime
        self.transport = transport
        self.period_s = period_s
        self.keys_for = keys_for
        self.before_beat = before_beat
        self.clock = clock

    async def run(self) -> None:
        session: aiohttp.ClientSession | None = None
        try:
            while True:
                await asyncio.sleep(self.period_s)
                serving = self.runtime.serving()
                if serving and session is None:
                    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S))
                elif not serving and session is not None:
                    await session.close()
                    session = None
                if session is not None:
                    await self.collect_inference_stats(session)
                if self.before_beat is not None:
                    try:
                        await self.before_beat()
                    except Exception:
                        log.exception("heartbeat: collecting module state failed")
                if self.transport.connected:
                    await self.beat()
        finally:
            if session is not None:
                await session.close()

    async def collect_inference_stats(self, session: aiohttp.ClientSession) -> None:
        from edge_agent._inference_stats import scrape  # with the first module

        for name, record in list(self.runtime.serving().items()):
            keys = self.keys_for(record.deployment) if record.desired.auth_required else None
            stats = await scrape(
                session, record.internal_port, keys.primary.get_secret_value() if keys else None
            )
            if stats is not None:
                self.book.module_stats(name, stats.count, stats.errors, stats.latency_ms_avg)

    async def beat(self) -> None:
        device_id = self.book.device_id
        presence = Presence(device_id=device_id, online=True, at=self.clock())
        with contextlib.suppress(TransportError):
            await self.transport.publish(
                self.topics.status(device_id),
                presence.model_dump_json().encode(),
                retain=True,
                timeout=PUBLISH_TIMEOUT_S,
            )
            await self.transport.publish(
                self.topics.telemetry(device_id),
                json.dumps(self.book.telemetry()).encode(),
                qos=0,
                timeout=PUBLISH_TIMEOUT_S,
            )
