"""KServe's own REST client (`kserve.InferenceRESTClient`, Open Inference Protocol v2) against the
host serving an ONNX model with a string input.

How: `kserve` pins FastAPI, pydantic, grpcio and more, so it is not installed beside the project.
`_reference_envs.reference_python("kserve", ...)` builds a venv of its own with `kserve==0.21.0`
(once; cached under `.pytest_cache/scoring-venvs/`, required under CI=true), and
`clients/kserve_rest.py` runs there as a subprocess against the host this test starts on a
loopback port, printing what the client saw as JSON.

The point of the error cases: the client reads an error body only when its Content-Type is
exactly `application/json`; with anything else the user sees a status line and no message.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ._reference_envs import KSERVE_PACKAGES, reference_python
from .test_v2_strictness import _string_model

CLIENT = Path(__file__).resolve().parent / "clients" / "kserve_rest.py"


@pytest.mark.timeout(1500)  # the first run builds the venv
def test_kserve_rest_client_strings_and_error_messages(serve_host, tmp_path: Path) -> None:
    python = reference_python("kserve", KSERVE_PACKAGES)
    host = serve_host(model_dir=_string_model(tmp_path / "upper"), model_name="upper")
    assert host.wait_loaded()["status"] == "Healthy"

    done = subprocess.run(
        [str(python), str(CLIENT), host.url, "upper"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["live"] is True and seen["ready"] is True
    assert seen["model_ready"] is True and seen["unknown_model_ready"] is False
    strings = {"echo": ["héllo", "World", "ß"], "is_hello": [True, False, False]}
    assert seen["json"] == {"status": 200, "outputs": strings}
    assert seen["binary"] == {"status": 200, "outputs": strings}
    # The server's own words reach the user through the client's exception.
    assert seen["not_utf8"]["status"] == 400
    assert seen["not_utf8"]["error"].startswith("input 'text': BYTES elements must be UTF-8 text, '400")
    assert seen["unknown_model"]["status"] == 404
    assert seen["unknown_model"]["error"].startswith("unknown model 'no-such-model'")
    assert seen["wrong_datatype"]["status"] == 400
    assert seen["wrong_datatype"]["error"].startswith("input 'text': datatype mismatch, model expects BYTES")
