"""Prometheus text exposition without a client library: a few counters and histograms.

The host is started on every device, so it avoids a dependency for what is a few dozen lines;
label sets are bounded (route templates, not raw paths) so memory stays flat.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += 1
        self.sum += value

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines = []
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            lines.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.sum:.6f}")
        lines.append(f"{name}_count{suffix} {self.total}")
        return lines


class ScoringMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.model_load_seconds: float | None = None
        self.ready = False
        # The handler's InlineGate, once it has one: whether runs are answered on the loop.
        self.inline_gate: Any = None

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def render(self) -> str:
        lines = [
            "# HELP modelfleet_scoring_requests_total Requests answered, by route and status.",
            "# TYPE modelfleet_scoring_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(
                f'modelfleet_scoring_requests_total{{method="{method}",route="{route}",'
                f'status="{status}"}} {count}'
            )
        lines += [
            "# HELP modelfleet_scoring_request_duration_seconds Time to answer a request.",
            "# TYPE modelfleet_scoring_request_duration_seconds histogram",
        ]
        for route, histogram in sorted(self.latency.items()):
            lines += histogram.render("modelfleet_scoring_request_duration_seconds", f'route="{route}"')
        lines += [
            "# HELP modelfleet_scoring_batch_size Rows per ONNX Runtime call.",
            "# TYPE modelfleet_scoring_batch_size histogram",
            *self.batch_size.render("modelfleet_scoring_batch_size"),
            "# HELP modelfleet_scoring_model_load_seconds Time taken by loading and init().",
            "# TYPE modelfleet_scoring_model_load_seconds gauge",
        ]
        if self.model_load_seconds is not None:
            lines.append(f"modelfleet_scoring_model_load_seconds {self.model_load_seconds:.6f}")
        lines += [
            "# HELP modelfleet_scoring_ready 1 once init() succeeded.",
            "# TYPE modelfleet_scoring_ready gauge",
            f"modelfleet_scoring_ready {int(self.ready)}",
        ]
        if self.inline_gate is not None:
            lines += [
                "# HELP modelfleet_scoring_inline 1 while runs (measured tiny) are answered on the loop.",
                "# TYPE modelfleet_scoring_inline gauge",
                f"modelfleet_scoring_inline {int(self.inline_gate.inline)}",
                "# HELP modelfleet_scoring_inline_moves_back_total Times runs went back to the threads.",
                "# TYPE modelfleet_scoring_inline_moves_back_total counter",
                f"modelfleet_scoring_inline_moves_back_total {self.inline_gate.moves_back}",
            ]
        return "\n".join(lines) + "\n"
