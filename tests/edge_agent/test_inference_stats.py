"""Reading a scoring host's Prometheus text into reported inference counts."""

from edge_agent._inference_stats import parse_metrics

TEXT = """\
# TYPE modelfleet_scoring_requests_total counter
modelfleet_scoring_requests_total{method="POST",route="/score",status="200"} 40
modelfleet_scoring_requests_total{method="POST",route="/score",status="500"} 2
modelfleet_scoring_requests_total{method="POST",route="/score",status="400"} 3
modelfleet_scoring_requests_total{method="GET",route="/v2/health/ready",status="200"} 900
modelfleet_scoring_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"} 5
modelfleet_scoring_request_duration_seconds_sum{route="/score"} 0.090000
modelfleet_scoring_request_duration_seconds_count{route="/score"} 45
modelfleet_scoring_request_duration_seconds_sum{route="/v2/models/{name}/infer"} 0.010000
modelfleet_scoring_request_duration_seconds_count{route="/v2/models/{name}/infer"} 5
modelfleet_scoring_request_duration_seconds_sum{route="/v2/health/ready"} 9.0
modelfleet_scoring_request_duration_seconds_count{route="/v2/health/ready"} 900
"""


def test_counts_inference_routes_only_and_server_errors_as_errors() -> None:
    stats = parse_metrics(TEXT)
    assert (stats.count, stats.errors) == (50, 2)
    assert stats.latency_ms_avg == 2.0  # (0.09 + 0.01) s / 50


def test_no_traffic_means_no_latency() -> None:
    assert parse_metrics("").latency_ms_avg is None
