"""What Azure ML's clients, scripts and operators rely on: raw-mode Flask behaviour, response
headers, CORS, repeated query keys, health without a key."""

from __future__ import annotations

import io

import pytest
import requests
import tritonclient.http as triton

from .conftest import IRIS_DIR, SCRIPTS


@pytest.fixture
def raw(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "raw_flask.py")
    assert host.wait_loaded()["status"] == "Healthy"
    return host


def test_multipart_upload_reaches_request_files_and_form(raw) -> None:
    files = {"image": ("cat.png", io.BytesIO(b"\x89PNG" + b"\0" * 96), "image/png")}
    response = requests.post(raw.url + "/score?action=upload", files=files, data={"label": "cat"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"filename": "cat.png", "mimetype": "image/png", "size": 100, "label": "cat"}


def test_iterating_request_headers_yields_name_value_pairs(raw) -> None:
    response = requests.get(raw.url + "/score?action=headers", headers={"X-Probe-A": "1"}, timeout=30)
    assert response.json() == [["x-probe-a", "1"]]


def test_generator_body_is_streamed_chunked(raw) -> None:
    response = requests.get(raw.url + "/score?action=stream", stream=True, timeout=30)
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert b"".join(response.iter_content(None)) == b"line 0\nline 1\nline 2\n"


def test_setting_mimetype_sets_the_content_type(raw) -> None:
    response = requests.get(raw.url + "/score?action=mimetype", timeout=30)
    assert response.headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert response.text == "<svg/>"


def test_run_function_failed_is_honoured(raw) -> None:
    response = requests.get(raw.url + "/score?action=failed", timeout=30)
    assert response.status_code == 200
    assert response.headers["x-ms-run-function-failed"] == "True"


def test_repeated_query_keys_reach_the_script_as_a_list(raw, serve_host, tmp_path) -> None:
    assert requests.get(raw.url + "/score?k=1&k=2", timeout=30).json() == {"args": ["1", "2"]}
    script = tmp_path / "echo.py"
    script.write_text("def init():\n    pass\n\ndef run(raw):\n    return raw\n")
    host = serve_host(model_dir=IRIS_DIR, entry_script=script)
    response = requests.get(host.url + "/score?k=1&k=2&x=y", timeout=30)
    assert response.json() == '{"k": [1, 2], "x": "y"}'


def test_azure_ml_response_headers(raw) -> None:
    plain = requests.get(raw.url + "/score", timeout=30)
    request_id = plain.headers["x-request-id"]
    assert len(request_id) == 36 and plain.headers["x-ms-request-id"] == request_id
    assert "x-ms-client-request-id" not in plain.headers
    assert plain.headers["x-ms-run-function-failed"] == "False"
    assert float(plain.headers["x-ms-run-fn-exec-ms"]) >= 0
    assert "e" not in plain.headers["x-ms-run-fn-exec-ms"]

    sent = {"x-request-id": "rid-1", "x-ms-client-request-id": "client-1", "TraceId": "trace-9"}
    echoed = requests.get(raw.url + "/score", headers=sent, timeout=30)
    assert echoed.headers["x-request-id"] == "rid-1"
    assert echoed.headers["x-ms-request-id"] == "client-1"
    assert echoed.headers["x-ms-client-request-id"] == "client-1"
    assert echoed.headers["TraceId"] == "trace-9"

    legacy = requests.get(raw.url + "/score", headers={"x-ms-request-id": "old-style"}, timeout=30)
    assert legacy.headers["x-ms-request-id"] == "old-style"
    assert legacy.headers["x-ms-client-request-id"] == "old-style"

    for header in ("x-request-id", "x-ms-client-request-id", "x-ms-request-id"):
        too_long = requests.get(raw.url + "/score", headers={header: "x" * 101}, timeout=30)
        assert too_long.status_code == 431
        assert too_long.headers["Content-Type"] == "application/json"


def test_options_reaches_a_raw_run_without_cors_settings(raw) -> None:
    response = requests.options(raw.url + "/score", timeout=30)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_answer_preflight_on_azure_and_v2_routes(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, cors_origins=["https://app.example"], primary_key="k" * 32)
    host.wait_loaded()
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for path in ("/score", "/v2/models/iris/infer"):
        response = requests.options(host.url + path, headers=preflight, timeout=30)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    scored = requests.post(
        host.url + "/score",
        json={"data": [[5.1, 3.5, 1.4, 0.2]]},
        headers={"Origin": "https://app.example", "Authorization": "Bearer " + "k" * 32},
        timeout=30,
    )
    assert scored.status_code == 200
    assert scored.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = requests.options(
        host.url + "/score", headers={**preflight, "Origin": "https://evil.example"}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_health_and_readiness_answer_without_a_key_when_auth_is_on(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, primary_key="k" * 32)
    host.wait_loaded()
    client = triton.InferenceServerClient(url=host.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris")
    assert requests.get(host.url + "/v2/models/iris/versions/1/ready", timeout=5).status_code == 200
    assert requests.get(host.url + "/", timeout=5).status_code == 200
    assert requests.get(host.url + "/v2/models/iris", timeout=5).status_code == 401
    assert requests.post(host.url + "/v2/models/iris/infer", json={}, timeout=5).status_code == 401
    assert requests.post(host.url + "/score", json={}, timeout=5).status_code == 401


def test_request_headers_are_named_and_joined_as_werkzeug_under_gunicorn() -> None:
    """Scripts copy headers with dict(request.headers) and read `["X-Caller"]`: under Azure ML a
    name comes back in title case whatever case was sent, and a repeated header is one value."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from modules.scoring._raw_http import RequestHeaders

    sent = CIMultiDict([("x-caller", "a"), ("X-CALLER", "b"), ("content-type", "text/plain")])
    headers = RequestHeaders(CIMultiDictProxy(sent))
    assert dict(headers) == {"X-Caller": "a,b", "Content-Type": "text/plain"}
    assert list(headers) == [("X-Caller", "a,b"), ("Content-Type", "text/plain")]
    assert headers["x-caller"] == headers.get("X-Caller") == "a,b"
    assert headers.get("missing", "default") == "default"
