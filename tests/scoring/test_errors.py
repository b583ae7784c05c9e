import json

import requests

from .conftest import IRIS_DIR, IRIS_SCRIPT, SCRIPTS


def test_run_exception_is_a_generic_500_with_the_request_id_by_default(serve_host, caplog):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "failing_run.py")
    response = requests.post(host.url + "/score", json={"data": 1}, timeout=30)

    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["x-ms-run-function-failed"] == "True"
    body = response.json()
    assert body["message"] == "An unexpected error occurred in scoring script. Check the logs for more info."
    assert body["request_id"] == response.headers["x-request-id"]
    assert "sensor value" not in response.text and "Traceback" not in response.text
    assert any(record.exc_info for record in caplog.records if "run() raised" in record.message)
    assert any(
        body["request_id"] in record.message and "the sensor value is out of range" in record.message
        for record in caplog.records
    )


def test_run_exception_text_is_returned_only_with_error_details(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "failing_run.py", error_details=True)
    response = requests.post(host.url + "/score", json={"data": 1}, timeout=30)

    assert response.status_code == 500
    assert "ValueError: the sensor value is out of range" in response.json()["message"]
    assert "Traceback" not in response.text


def test_bad_json_body_is_400_with_a_message_for_a_bare_model(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    response = requests.post(host.url + "/score", data=b"{not json", timeout=30)

    assert response.status_code == 400
    assert response.json()["message"].startswith("body is not valid JSON")


def test_body_over_the_limit_is_413(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT, max_request_bytes=1000)
    body = json.dumps({"data": [[1.0, 2.0, 3.0, 4.0]] * 100})
    response = requests.post(host.url + "/score", data=body, timeout=30)

    assert response.status_code == 413
    assert "over the 1000 byte limit" in response.json()["message"]


def test_chunked_body_over_the_limit_is_413(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT, max_request_bytes=1000)
    chunks = (b"x" * 500 for _ in range(10))  # a generator: sent chunked, no Content-Length
    response = requests.post(host.url + "/score", data=chunks, timeout=30)

    assert response.status_code == 413


def test_scoring_timeout_is_504(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "slow_run.py", scoring_timeout_ms=100)
    host.wait_loaded()
    response = requests.post(host.url + "/score", json={"sleep": 1.0}, timeout=30)

    assert response.status_code == 504
    assert response.json()["message"] == "scoring timed out after 100 ms"


def test_failed_init_keeps_process_up_with_readiness_red_and_error_visible(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "failing_init.py")
    details = host.wait_loaded()

    assert details["status"] == "Unhealthy"
    assert details["ready"] is False
    assert details["error"] == "RuntimeError: weights file is missing"
    assert requests.get(host.url + "/ready", timeout=5).status_code == 503
    assert requests.get(host.url + "/v2/health/ready", timeout=5).status_code == 503
    score = requests.post(host.url + "/score", json={}, timeout=5)
    assert score.status_code == 503
    assert "weights file is missing" in score.json()["message"]
    assert "modelfleet_scoring_ready 0" in requests.get(host.url + "/metrics", timeout=5).text


def test_script_that_fails_to_import_is_reported_like_a_failed_init(serve_host, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import not_a_real_module_anywhere\n")
    host = serve_host(model_dir=IRIS_DIR, entry_script=script)

    details = host.wait_loaded()

    assert details["status"] == "Unhealthy"
    assert "not_a_real_module_anywhere" in details["error"]


def test_unserialisable_result_is_500_not_a_hidden_200(serve_host, tmp_path):
    script = tmp_path / "returns_object.py"
    script.write_text("def init():\n    pass\n\ndef run(raw):\n    return object()\n")
    host = serve_host(model_dir=IRIS_DIR, entry_script=script)
    response = requests.post(host.url + "/score", json={}, timeout=30)

    assert response.status_code == 500
    assert "not JSON-serialisable" in response.json()["message"]


def test_unknown_route_is_404_json(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    response = requests.get(host.url + "/nope", timeout=5)

    assert response.status_code == 404
    assert "message" in response.json()
