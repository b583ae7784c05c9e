import pytest
import requests

from modules.scoring._auth import KeyAuth, keys_from_file

from .conftest import IRIS_DIR, IRIS_SCRIPT

BODY = {"data": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.fixture
def keyed_host(serve_host):
    return serve_host(model_dir=IRIS_DIR, entry_script=IRIS_SCRIPT, primary_key="one", secondary_key="two")


@pytest.mark.parametrize("key", ["one", "two"])
def test_primary_and_secondary_keys_both_open_scoring(keyed_host, key):
    response = requests.post(
        keyed_host.url + "/score", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )

    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer three"}, {"Authorization": "Basic one"}])
def test_missing_or_wrong_key_is_401(keyed_host, headers):
    response = requests.post(keyed_host.url + "/score", json=BODY, headers=headers, timeout=30)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_v2_inference_and_metrics_need_the_key_but_probes_do_not(keyed_host):
    assert requests.get(keyed_host.url + "/", timeout=5).status_code == 200
    assert requests.get(keyed_host.url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(keyed_host.url + "/metrics", timeout=5).status_code == 401
    infer = requests.post(keyed_host.url + "/v2/models/iris/infer", json={}, timeout=5)
    assert infer.status_code == 401
    assert infer.json() == {"error": "missing or invalid key"}


def test_without_keys_everything_is_open():
    assert KeyAuth([]).allows(None)
    assert not KeyAuth(["k"]).allows(None)
    assert KeyAuth(["k"]).allows("bearer k")


def test_keys_file_accepts_azure_style_json_and_plain_lines(tmp_path):
    as_json = tmp_path / "keys.json"
    as_json.write_text('{"primaryKey": "p", "secondaryKey": "s"}')
    as_lines = tmp_path / "keys.txt"
    as_lines.write_text("p\ns\n")

    assert keys_from_file(as_json) == ("p", "s")
    assert keys_from_file(as_lines) == ("p", "s")
