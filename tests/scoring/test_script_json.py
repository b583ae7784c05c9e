"""The fast `json.loads` given to entry scripts must answer exactly as the standard library does.

Differential tests: generated documents, and generated garbage, go through both, and values
(types and float bits included) or errors (type and wording) must match.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import threading
import types

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.scoring import _json, _script_json

from .conftest import CNN_DIR, SCRIPTS


def same(a: object, b: object) -> bool:
    """Equal with identical types, float bits (-0.0, NaN) and key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(parse, text):
    try:
        return "value", parse(text)
    except Exception as exc:  # the error itself is what is compared
        return "error", (type(exc), str(exc))


def assert_same_outcome(text):
    # The original function: json.loads itself is replaced while an entry script is served.
    ours, theirs = outcome(_json.loads, text), outcome(_json.stdlib_loads, text)
    assert ours[0] == theirs[0], (text, ours, theirs)
    if ours[0] == "value":
        assert same(ours[1], theirs[1]), (text, ours[1], theirs[1])
    else:
        assert ours[1] == theirs[1]


numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(width=32),
    st.floats(min_value=1e-5, max_value=1e-3),  # float32 data written as 0.000xxxx: long fractions
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text())
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=40,
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents, st.booleans(), st.sampled_from([None, 1]))
def test_generated_documents_read_the_same(document, ensure_ascii, indent):
    text = json.dumps(document, ensure_ascii=ensure_ascii, indent=indent)
    assert_same_outcome(text)
    assert_same_outcome(text.encode("utf-8", "surrogatepass"))


number_texts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,25})?\Z")


@settings(max_examples=600, deadline=None)
@given(st.lists(number_texts, min_size=1, max_size=5))
def test_number_literals_read_the_same(literals):
    assert_same_outcome("[" + ", ".join(literals) + "]")
    assert_same_outcome(literals[0])


json_alphabet = st.sampled_from(list('{}[],:"\\ -+.eE0123456789truefalsnNaIfiy\t\n\u00e9\ud800\ufeff'))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=json_alphabet, max_size=40))
def test_near_json_garbage_reads_or_fails_the_same(text):
    assert_same_outcome(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_read_or_fail_the_same(data):
    assert_same_outcome(data)


@pytest.mark.parametrize(
    "text",
    [
        "18446744073709551616",
        "[-9223372036854775809]",
        '{"id": 123456789012345678901234567890}',
        "[1e400, -1e400]",
        "NaN",
        '"\\ud800"',
        "\ufeff{}",
        '{"a": 1, "a": 2}',
        json.dumps([1.5]).encode("utf-16"),
        json.dumps([1.5]).encode("utf-32"),
        "[" * 2000 + "]" * 2000,
        "[" * 1000 + "]" * 1000,  # beyond the standard library's stack, within orjson's 1024 levels
        '{"a": ' * 990 + "1" + "}" * 990,
        "[0.0012739233206957579, " * 300 + "12345678901234567890" + "]" * 300,
        "[" + "0.0012739233206957579, " * 300 + "-12345678901234567890]",
        "[" + "12345678901234567890.5, " * 300 + "1]",
    ],
)
def test_what_orjson_refuses_or_reads_otherwise_is_the_standard_librarys(text):
    assert_same_outcome(text)


def test_nesting_past_a_lowered_recursion_limit_fails_as_in_the_standard_library():
    texts = ["[" * depth + "]" * depth for depth in (100, 150, 190, 300)]
    texts.append('{"data": "]]]]", "x": ' + "[" * 300 + "]" * 300 + "}")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        outcomes = [(outcome(_json.loads, t), outcome(_json.stdlib_loads, t)) for t in texts]
    finally:
        sys.setrecursionlimit(limit)

    assert [ours[0] for ours, _ in outcomes][-2:] == ["error", "error"]
    for ours, theirs in outcomes:
        assert ours[0] == theirs[0]
        if ours[0] == "value":
            assert same(ours[1], theirs[1])
        else:
            assert ours[1][0] is RecursionError and theirs[1][0] is RecursionError


class _Text(str):
    def encode(self, *args, **kwargs):
        return b"[2]"


class _Data(bytes):
    def __bytes__(self):
        return b"[2]"


def test_keywords_subclasses_and_wrong_types_go_to_the_standard_library():
    assert _json.loads("[1.5]", parse_float=str) == ["1.5"]
    assert _json.loads(_Text("[1]")) == [1]
    assert _json.loads(_Data(b"[1]")) == [1]
    assert _json.loads(bytearray(b"[1]")) == [1]
    for value in (None, 12, memoryview(b"[1]")):
        assert_same_outcome(value)


def test_many_long_fractions_still_take_the_fast_path(monkeypatch):
    body = json.dumps({"data": [0.0012739233206957579 + i * 1e-9 for i in range(800)]})
    assert body.count("0.00127") == 800
    monkeypatch.setattr(_json, "stdlib_loads", lambda *a, **k: pytest.fail("fell back to json.loads"))

    assert len(_json.loads(body)["data"]) == 800


def test_float32_data_takes_the_fast_path(monkeypatch):
    body = (CNN_DIR / "sample-input.json").read_bytes()
    assert b"0.0010000000474974513" in body  # a 19-digit fraction: must not look like a big integer
    monkeypatch.setattr(_json, "stdlib_loads", lambda *a, **k: pytest.fail("fell back to json.loads"))

    assert len(_json.loads(body)["data"][0][0]) == 28
    assert len(_json.loads(body.decode())["data"][0][0]) == 28


@pytest.fixture
def script_module(monkeypatch):
    monkeypatch.delenv(_script_json.SWITCH, raising=False)
    module = types.ModuleType("a_script")
    exec("import json\nfrom json import loads, dumps\nfrom json import loads as parse\n", module.__dict__)
    yield module
    _script_json.restore()


def test_accelerate_replaces_json_loads_and_the_scripts_own_names(script_module):
    assert _script_json.accelerate(script_module)

    assert json.loads is _script_json.fast_loads and script_module.json is json
    assert script_module.loads is _script_json.fast_loads and script_module.parse is _script_json.fast_loads
    assert script_module.dumps is json.dumps
    assert json.loads("[1, 2.5]") == [1, 2.5]
    with pytest.raises(json.JSONDecodeError, match="Expecting"):
        json.loads("{")
    assert json.loads.__name__ == "loads" and "object_hook" in str(inspect.signature(json.loads))

    _script_json.restore()
    assert json.loads is _json.stdlib_loads


def test_a_json_loads_replaced_before_is_left_alone(script_module, monkeypatch):
    def theirs(s, **kwargs):
        return "theirs"

    monkeypatch.setattr(json, "loads", theirs)

    assert not _script_json.accelerate(script_module)
    assert json.loads is theirs


def test_the_switch_turns_it_off(script_module, monkeypatch):
    monkeypatch.setenv(_script_json.SWITCH, "stdlib")

    assert not _script_json.accelerate(script_module)
    assert json.loads is _json.stdlib_loads and script_module.loads is _json.stdlib_loads


@pytest.mark.parametrize(
    "body",
    [
        '{"big": 123456789012345678901234567890, "f": 0.1, "neg": -0.0}',
        '{"n": NaN, "inf": -Infinity}',
        '{"s": "\\ud800"}',
    ],
)
def test_a_served_script_reads_big_integers_and_nan_as_before(serve_host, body):
    host = serve_host(model_dir=CNN_DIR, entry_script=SCRIPTS / "env_echo.py")

    response = requests.post(host.url + "/score", data=body, timeout=30)

    assert response.status_code == 200
    assert f'"echo": {body}' in response.text


def test_the_text_of_a_body_the_host_decoded_is_read_from_its_own_bytes_on_that_thread_only():
    # The slot's contract is that the bytes are the text's UTF-8; bytes that differ show which
    # one was read.
    text = "[1]"
    _json.known_utf8(text, b"[2]")
    try:
        assert _json.loads(text) == [2]
        assert _json.loads("[1]" + "") == [2]  # the same object, interned
        assert _json.loads("".join(["[", "1", "]"])) == [1]  # equal text, another object
        seen = []
        thread = threading.Thread(target=lambda: seen.append(_json.loads(text)))
        thread.start()
        thread.join()
        assert seen == [[1]]
    finally:
        _json.forget_utf8()
    assert _json.loads(text) == [1]


@pytest.mark.parametrize(
    "text",
    [
        "12345678901234567890",
        "-12345678901234567890",
        "12345678901234567890.5",
        "1234567890123456789e5",
        "[" + "0.0012739233206957579, " * 20 + "-12345678901234567890]",
        "[" + "0.0012739233206957579, " * 20 + "12345678901234567890]",
        "[" + "0.0012739233206957579, " * 20 + "12345678901234567890.25]",
        "[" + "0.0012739233206957579, " * 20 + "[-12345678901234567890]]",
        "[" + "0.0012739233206957579, " * 20 + "1e-12345678901234567890]",
        "[" + "0.0012739233206957579, " * 20 + "1E+12345678901234567890]",
        '{"a": [' + "0.0012739233206957579, " * 20 + '0], "b": 12345678901234567890}',
        "[" + "12345678901234567890.5, " * 20 + "-1234567890123456789.0]",
    ],
)
def test_long_digit_runs_at_the_start_or_after_many_fractions_read_the_same(text):
    assert_same_outcome(text)
