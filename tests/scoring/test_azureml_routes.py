import json

import requests

from .conftest import IRIS_DIR, IRIS_SCRIPT, SCRIPTS

KEY = "primary-key-for-tests"


def test_seed_style_client_scores_the_iris_entry_script(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT, primary_key=KEY)
    scoring_uri = host.url + "/score"
    input_data = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]})
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + KEY}

    response = requests.post(scoring_uri, input_data, headers=headers, timeout=30)

    assert response.status_code == 200
    assert response.json()["predictions"] == ["setosa", "virginica"]
    assert len(response.json()["probabilities"]) == 2


def test_entry_script_sees_model_dir_in_both_variables_and_init_runs_once(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "env_echo.py")
    first = requests.post(host.url + "/score", json={"x": 1}, timeout=30).json()
    second = requests.post(host.url + "/score", json={"x": 2}, timeout=30).json()

    assert first["azureml_model_dir"] == str(IRIS_DIR)
    assert first["modelfleet_model_dir"] == str(IRIS_DIR)
    assert first["at_import"] == str(IRIS_DIR)
    assert first["echo"] == {"x": 1}
    assert second["init_calls"] == 1


def test_liveness_and_readiness_are_green_after_init(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT)
    details = host.wait_loaded()

    assert details == {"status": "Healthy", "ready": True, "model": "iris"}
    assert requests.get(host.url + "/ready", timeout=5).status_code == 200
    assert requests.get(host.url + "/v2/health/ready", timeout=5).status_code == 200


def test_swagger_is_served_for_an_undecorated_script(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT)
    host.wait_loaded()
    document = requests.get(host.url + "/swagger.json", timeout=5).json()

    assert document["swagger"] == "2.0"
    assert "/score" in document["paths"]
    assert "ServiceInput" in document["definitions"]


def test_metrics_count_requests_by_status_and_report_load_time(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT)
    requests.post(host.url + "/score", json={"data": [[1, 2, 3, 4]]}, timeout=30)
    requests.post(host.url + "/score", data=b"not json", timeout=30)

    text = requests.get(host.url + "/metrics", timeout=5).text

    assert 'modelfleet_scoring_requests_total{method="POST",route="/score",status="200"} 1' in text
    assert 'modelfleet_scoring_requests_total{method="POST",route="/score",status="500"} 1' in text
    assert "modelfleet_scoring_request_duration_seconds_bucket" in text
    assert "modelfleet_scoring_model_load_seconds " in text
    assert "modelfleet_scoring_ready 1" in text
