"""Inference counts and latency per module, read from each scoring host's own /metrics.

The agent does not sit in the request path's accounting: the front proxy only forwards, the host
counts. Scraping its Prometheus text once per heartbeat is cheap and survives agent restarts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp

_REQUESTS = re.compile(
    r'^modelfleet_scoring_requests_total\{[^}]*route="([^"]+)"[^}]*status="(\d+)"\} (\d+)', re.M
)
_DURATION = re.compile(
    r'^modelfleet_scoring_request_duration_seconds_(sum|count)\{route="([^"]+)"\} ([0-9.e+-]+)', re.M
)


def _is_inference(route: str) -> bool:
    return route == "/score" or route.endswith("/infer")


@dataclass(frozen=True)
class InferenceStats:
    count: int
    errors: int
    latency_ms_avg: float | None


def parse_metrics(text: str) -> InferenceStats:
    count = errors = 0
    for route, status, value in _REQUESTS.findall(text):
        if _is_inference(route):
            count += int(value)
            if int(status) >= 500:
                errors += int(value)
    total_s = 0.0
    total_n = 0
    for kind, route, value in _DURATION.findall(text):
        if _is_inference(route):
            if kind == "sum":
                total_s += float(value)
            else:
                total_n += int(float(value))
    return InferenceStats(count, errors, round(total_s / total_n * 1000, 3) if total_n else None)


async def scrape(session: aiohttp.ClientSession, port: int, key: str | None = None) -> InferenceStats | None:
    """A module with key auth guards `/metrics` too: the agent presents the primary key."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
            if resp.status != 200:
                return None
            return parse_metrics(await resp.text())
    except (aiohttp.ClientError, TimeoutError):
        return None
