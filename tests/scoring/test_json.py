"""The host's JSON: orjson where it can, the standard library's results and wording everywhere."""

import json

import numpy as np
import pytest
import requests

from modules.scoring import _json

from .conftest import CNN_DIR


@pytest.mark.parametrize(
    "text",
    [b'{"a": [1.5, 2, -0.0]}', b'{"x": NaN, "y": Infinity}', b'"\\ud800"', '{"k": "\u00e9"}', b"[]"],
)
def test_loads_accepts_what_the_standard_library_accepts(text):
    expected = json.loads(text)
    got = _json.loads(text)

    assert json.dumps(got) == json.dumps(expected)


@pytest.mark.parametrize("text", [b"{", b"not json", b'{"a": 1,}'])
def test_loads_errors_are_the_standard_librarys(text):
    with pytest.raises(json.JSONDecodeError) as ours:
        _json.loads(text)
    with pytest.raises(json.JSONDecodeError) as theirs:
        json.loads(text)

    assert str(ours.value) == str(theirs.value)


def test_dumps_finite_round_trips_and_falls_back_for_what_orjson_refuses():
    value = {"a": [0.1, 1e-7, 3], "b": "é", "c": None}

    assert json.loads(_json.dumps_finite(value)) == value
    assert json.loads(_json.dumps_finite({1: "int key"})) == {"1": "int key"}
    assert _json.dumps_finite({"big": 2**70}) == b'{"big": 1180591620717411303424}'


def test_all_finite():
    assert _json.all_finite(np.array([1.0, 2.0], dtype=np.float32))
    assert _json.all_finite(np.array([1, 2]))
    assert not _json.all_finite(np.array([1.0, np.nan]))


def test_zero_code_reply_matches_the_standard_librarys_values(serve_host):
    host = serve_host(model_dir=CNN_DIR)
    body = (CNN_DIR / "sample-input.json").read_bytes()
    response = requests.post(host.url + "/score", data=body, timeout=30)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    values = next(iter(response.json().values()))
    assert len(values[0]) == 10
