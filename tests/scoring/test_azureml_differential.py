"""The same entry scripts served by Azure's own server and by modelfleet, the same requests sent to
both, the answers compared: status, body, Content-Type and the Azure ML headers.

The reference is `azureml-inference-server-http` 1.5.1 in a venv of its own (see
`_reference_envs.py`: built on first use, cached, required under CI=true), started with its
defaults as `azmlinfsrv` would be, one server per script, all at once so start-up is paid once.
modelfleet runs in this process with its defaults (no `error_details`), as a module would.

Where modelfleet answers differently on purpose, `DIFFERENCES` names the case, the field and
both values, and `docs/scoring.md` lists it; any other difference fails, and so does an entry of
the table that no longer holds, so the table stays the truth.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from modules.scoring import ScoringSettings

from ._reference_envs import AZUREML_PACKAGES, reference_python
from .conftest import IRIS_DIR, SCRIPTS, RunningHost

# Every script here runs unchanged under both servers.
SERVED = (
    "echo_json",
    "azure_json_model",
    "azure_failing_run",
    "failing_run",
    "azure_raw_echo",
    "raw_flask",
    "raw_png",
    "schema_numpy",
    "azure_schema_standard",
    "powerbi_nested",
    "azure_model_dir",
)
GENERIC_500 = "An unexpected error occurred in scoring script. Check the logs for more info."
# What is compared besides status and body; Transfer-Encoding shows a streamed body stays streamed.
HEADERS = (
    "Content-Type",
    "Transfer-Encoding",
    "x-request-id",
    "x-ms-request-id",
    "x-ms-client-request-id",
    "x-ms-run-function-failed",
    "x-ms-run-fn-exec-ms",
    "TraceId",
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_EXEC_MS = re.compile(r"^\d+\.\d{3}$")


@dataclass(frozen=True)
class Case:
    id: str
    script: str
    method: str = "POST"
    path: str = "/score"
    json_body: Any = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes, str]] | None = None
    form: dict[str, str] | None = None


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 40, 10)).save(out, format="PNG")
    return out.getvalue()


IRIS_ROW = [[5.1, 3.5, 1.4, 0.2]]
ID_HEADERS = {"x-request-id": "rid-7", "x-ms-client-request-id": "client-7", "TraceId": "trace-7"}
JSON = {"Content-Type": "application/json"}

CASES = [
    # JSON in, JSON out: the body reaches run() as a string, the result comes back as JSON.
    Case("json-object", "echo_json", json_body={"a": [1, 2.5], "b": None, "c": "héllo"}),
    Case("json-array", "echo_json", json_body=[1, 2, 3]),
    Case("json-scalar", "echo_json", data=b"42"),
    Case("json-get-query", "echo_json", "GET", "/score?a=1&b=[1,2]&c=text&k=x&k=y&d=null"),
    Case("json-not-json", "echo_json", data=b"{not json"),
    Case("json-not-utf8", "echo_json", data=b'{"a": "\xff"}', headers=JSON),
    Case("json-empty", "echo_json", data=b""),
    Case("json-put", "echo_json", "PUT", json_body={}),
    Case("json-options", "echo_json", "OPTIONS"),
    Case("json-request-ids", "echo_json", json_body={}, headers=ID_HEADERS),
    Case("json-legacy-request-id", "echo_json", json_body={}, headers={"x-ms-request-id": "legacy-7"}),
    Case(
        "json-both-client-ids",
        "echo_json",
        json_body={},
        headers={"x-ms-request-id": "l", "x-ms-client-request-id": "c"},
    ),
    Case("json-request-id-too-long", "echo_json", json_body={}, headers={"x-request-id": "x" * 101}),
    Case("json-client-id-too-long", "echo_json", json_body={}, headers={"x-ms-client-request-id": "x" * 101}),
    Case("json-legacy-id-too-long", "echo_json", json_body={}, headers={"x-ms-request-id": "x" * 101}),
    Case("model-predict", "azure_json_model", json_body={"data": IRIS_ROW * 2}),
    Case("model-error-in-200", "azure_json_model", json_body={"data": [[1.0, 2.0]]}),
    Case("model-returns-none", "azure_json_model", json_body={"return": "none"}),
    Case("model-returns-string", "azure_json_model", json_body={"return": "string"}),
    Case("model-returns-mixed", "azure_json_model", json_body={"return": "mixed"}),
    Case("model-returns-float", "azure_json_model", json_body={"return": "float"}),
    Case("model-returns-numpy", "azure_json_model", json_body={"return": "numpy"}),
    Case("model-dir-join", "azure_model_dir", json_body={"data": IRIS_ROW}),
    # A failing run(): a generic 500, the exception's text (a secret here) only in the log.
    Case("fails-with-secret", "azure_failing_run", json_body={"fail": "secret"}, headers=ID_HEADERS),
    Case("fails-key-error", "azure_failing_run", json_body={"fail": "key"}),
    Case("fails-not-json", "azure_failing_run", data=b"nope"),
    Case("fails-not", "azure_failing_run", json_body={}),
    Case("fails-always", "failing_run", json_body={"x": 1}),
    # Raw mode: the request in, a whole response out.
    Case("raw-describe-json", "azure_raw_echo", path="/score?action=describe&x=1&x=2", json_body={"k": 1}),
    Case(
        "raw-describe-form",
        "azure_raw_echo",
        path="/score?action=describe",
        form={"a": "1", "b": "two"},
        headers={"X-Caller": "me"},
    ),
    Case("raw-describe-get", "azure_raw_echo", "GET", "/score?action=describe"),
    Case("raw-describe-options", "azure_raw_echo", "OPTIONS", "/score?action=describe"),
    Case("raw-status-201", "azure_raw_echo", path="/score?action=status&code=201"),
    Case("raw-status-404", "azure_raw_echo", path="/score?action=status&code=404"),
    Case("raw-status-500", "azure_raw_echo", path="/score?action=status&code=500"),
    Case("raw-status-503", "azure_raw_echo", path="/score?action=status&code=503"),
    Case("raw-text", "azure_raw_echo", path="/score?action=text"),
    Case("raw-none", "azure_raw_echo", path="/score?action=none"),
    Case("raw-plain-dict", "azure_raw_echo", path="/score?action=dict"),
    Case("raw-headers", "azure_raw_echo", path="/score?action=headers"),
    Case(
        "raw-bytes-echo",
        "azure_raw_echo",
        data=bytes(range(256)),
        headers={"Content-Type": "application/x-bin"},
    ),
    Case(
        "raw-multipart",
        "raw_flask",
        path="/score?action=upload",
        files={"image": ("cat.png", b"\x89PNG" + b"\0" * 96, "image/png")},
        form={"label": "cat"},
    ),
    Case("raw-header-pairs", "raw_flask", "GET", "/score?action=headers", headers={"X-Probe-A": "1"}),
    Case("raw-stream", "raw_flask", "GET", "/score?action=stream"),
    Case("raw-mimetype", "raw_flask", "GET", "/score?action=mimetype"),
    Case("raw-run-function-failed", "raw_flask", "GET", "/score?action=failed"),
    Case("raw-repeated-keys", "raw_flask", "GET", "/score?k=1&k=2"),
    Case("raw-options-cors-pattern", "raw_flask", "OPTIONS"),
    Case("raw-png-describe", "raw_png", data=_png(), headers={"Content-Type": "image/png"}),
    Case(
        "raw-png-binary",
        "raw_png",
        path="/score?format=png",
        data=_png(),
        headers={"Content-Type": "image/png"},
    ),
    Case("raw-png-get", "raw_png", "GET"),
    # inference-schema decorated: the body's fields become run()'s arguments, converted.
    Case("schema-numpy", "schema_numpy", json_body={"data": IRIS_ROW, "top": 2}),
    Case("schema-numpy-default", "schema_numpy", json_body={"data": IRIS_ROW}),
    Case("schema-numpy-missing", "schema_numpy", json_body={"top": 2}),
    Case("schema-numpy-wrong-shape", "schema_numpy", json_body={"data": [[1.0, 2.0, 3.0]]}),
    Case("schema-numpy-not-json", "schema_numpy", data=b"{nope", headers=JSON),
    Case("schema-numpy-empty", "schema_numpy", data=b"", headers=JSON),
    Case("schema-numpy-array-body", "schema_numpy", data=b"[1, 2]", headers=JSON),
    Case("schema-numpy-no-content-type", "schema_numpy", data=json.dumps({"data": IRIS_ROW}).encode()),
    Case("schema-numpy-get", "schema_numpy", "GET", "/score?data=[[5.1,3.5,1.4,0.2]]"),
    Case(
        "schema-standard-headers",
        "azure_schema_standard",
        json_body={"reading": {"sensor": "a", "values": [1, 2, 3]}, "scale": 2},
        headers={"x-caller": "lower-case-sent"},
    ),
    Case(
        "schema-standard-default",
        "azure_schema_standard",
        json_body={"reading": {"sensor": "b", "values": []}},
    ),
    Case(
        "schema-powerbi",
        "powerbi_nested",
        json_body={
            "Inputs": {
                "data": [{"age": 30, "income": 1000.25, "city": "Bergen"}],
                "extra": [[4.0, 5.0, 6.0]],
            },
            "GlobalParameters": {"method": "predict_proba", "threshold": 0.25},
        },
    ),
    # Routes other than /score.
    Case("unknown-route", "echo_json", "GET", "/nothing-here"),
    Case("liveness", "echo_json", "GET", "/"),
]


@dataclass(frozen=True)
class Difference:
    """One field of one case where modelfleet answers differently from Azure's server on purpose."""

    case: str
    field: str
    azure: Any
    modelfleet: Any
    why: str


_GENERIC = {"message": GENERIC_500}
_FORM_DESCRIBED = {
    "method": "POST",
    "path": "/score",
    "args": {"action": ["describe"]},
    "content_type": "application/x-www-form-urlencoded",
    "mimetype": "application/x-www-form-urlencoded",
    "is_json": False,
    "json": None,
    "form": {"a": ["1"], "b": ["two"]},
    "caller": "me",
}
_NO_IDS = "every answer carries the request ids, routing errors included, so any answer can be traced"
DIFFERENCES = [
    *(
        Difference(
            case,
            "body",
            _GENERIC,
            {**_GENERIC, "request_id": "<x-request-id>"},
            "the generic 500 carries the request id, so a user can quote it to whoever reads the log",
        )
        for case in ("json-not-json", "json-empty", "fails-key-error", "fails-not-json", "fails-always")
    ),
    Difference("fails-with-secret", "body", _GENERIC, {**_GENERIC, "request_id": "rid-7"}, "as above"),
    Difference(
        "schema-numpy-wrong-shape",
        "status",
        500,
        400,
        "a body that does not match the schema is the client's error: 400 naming the field",
    ),
    Difference(
        "schema-numpy-wrong-shape",
        "body",
        _GENERIC,
        {
            "message": "field 'data': Invalid input array: array has size 3 on dimension #1, while expected "
            "value is 4"
        },
        "as above",
    ),
    Difference(
        "schema-numpy-wrong-shape", "x-ms-run-function-failed", "True", "False", "run() was never called"
    ),
    Difference(
        "schema-numpy-no-content-type",
        "status",
        415,
        200,
        "a schema-decorated run() takes a JSON body whatever its Content-Type, as every JSON route here",
    ),
    Difference(
        "schema-numpy-no-content-type",
        "body",
        {"message": "Expects Content-Type to be application/json"},
        {"labels": [0], "dtype": "float32", "top": 1},
        "as above",
    ),
    Difference("schema-numpy-no-content-type", "x-ms-run-fn-exec-ms", None, "<ms>", "as above: run() ran"),
    Difference(
        "model-returns-numpy",
        "status",
        500,
        200,
        "numpy arrays and scalars in run()'s result are serialised (Azure's json.dumps raises on them)",
    ),
    Difference(
        "model-returns-numpy",
        "body",
        {"message": "An unexpected internal error occurred. Check the logs for more info."},
        [0, 1, 2],
        "as above",
    ),
    Difference("model-returns-numpy", "x-ms-run-fn-exec-ms", None, "<ms>", "as above"),
    Difference(
        "raw-describe-form",
        "body",
        {**_FORM_DESCRIBED, "length": 0},
        {**_FORM_DESCRIBED, "length": 9},
        "get_data() still returns the body after request.form was read (Werkzeug's has consumed it)",
    ),
    *(
        Difference(case, header, None, value, _NO_IDS)
        for case in ("json-put", "unknown-route")
        for header, value in (("x-request-id", "<uuid>"), ("x-ms-request-id", "<x-request-id>"))
    ),
    Difference(
        "liveness",
        "body",
        "Healthy",
        {"status": "Healthy", "ready": True, "model": "iris"},
        "liveness says more than 'Healthy': the state, readiness and the error when init() failed",
    ),
    Difference(
        "liveness", "Content-Type", "text/html; charset=utf-8", "application/json; charset=utf-8", "JSON"
    ),
]


# ---------------------------------------------------------------- the two servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AzureServer:
    """`azmlinfsrv` (gunicorn, one sync worker, its defaults) on one entry script."""

    def __init__(
        self, python: Path, script: Path, model_dir: Path, log_dir: Path, env: dict[str, str]
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"azureml-{script.stem}-{self.port}.log"
        command = [
            str(python),
            "-m",
            "azureml_inference_server_http.amlserver",
            "--entry_script",
            str(script),
            "--model_dir",
            str(model_dir),
            "--port",
            str(self.port),
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=log_dir,
                # The app root is where Azure ML's server looks for shipped swagger files: the
                # script's folder, as in a deployment where the script is at the root.
                env={**os.environ, "AZUREML_LOG_LEVEL": "WARNING", "AML_APP_ROOT": str(script.parent), **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"azmlinfsrv exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if requests.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"azmlinfsrv never became healthy:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_pair(
    scripts: dict[str, Path], model_dir: Path, log_dir: Path, service_name: str | None = None
) -> tuple[dict[str, AzureServer], dict[str, RunningHost]]:
    """Azure's server and modelfleet's host for each script; the Azure ones start in parallel."""
    python = reference_python("azureml", AZUREML_PACKAGES)
    env = {"SERVICE_NAME": service_name} if service_name else {}
    azure = {name: AzureServer(python, path, model_dir, log_dir, env) for name, path in scripts.items()}
    ours: dict[str, RunningHost] = {}
    try:
        for name, path in scripts.items():
            settings = ScoringSettings(model_dir=model_dir, entry_script=path, service_name=service_name)
            ours[name] = RunningHost(settings).__enter__()
        deadline = time.monotonic() + 120
        for server in azure.values():
            server.wait_ready(deadline)
        for host in ours.values():
            assert host.wait_loaded()["status"] == "Healthy"
    except BaseException:
        stop_pair(azure, ours)
        raise
    return azure, ours


def stop_pair(azure: dict[str, AzureServer], ours: dict[str, RunningHost]) -> None:
    for server in azure.values():
        server.stop()
    for host in ours.values():
        host.__exit__(None, None, None)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    scripts = {name: SCRIPTS / f"{name}.py" for name in SERVED}
    azure, ours = start_pair(scripts, IRIS_DIR, tmp_path_factory.mktemp("logs"))
    yield azure, ours
    stop_pair(azure, ours)


# ---------------------------------------------------------------- comparing answers


def send(base_url: str, case: Case) -> requests.Response:
    files = {
        name: (filename, io.BytesIO(data), kind)
        for name, (filename, data, kind) in (case.files or {}).items()
    }
    return requests.request(
        case.method,
        base_url + case.path,
        json=case.json_body,
        data=case.form if case.form is not None else case.data,
        files=files or None,
        headers=case.headers,
        timeout=30,
    )


def observed(response: requests.Response, sent: dict[str, str]) -> dict[str, Any]:
    """The answer with what must differ between two runs (generated ids, timings) made comparable:
    a generated request id is shown as a placeholder, and where the same id is echoed elsewhere
    it is shown as the placeholder of that header."""
    own_id = response.headers.get("x-request-id")
    generated = own_id is not None and own_id not in sent.values()
    fields: dict[str, Any] = {"status": response.status_code}
    for name in HEADERS:
        value = response.headers.get(name)
        if name == "x-ms-run-fn-exec-ms" and value is not None:
            value = "<ms>" if _EXEC_MS.match(value) else value
        elif name == "x-request-id" and generated:
            value = "<uuid>" if _UUID.match(value or "") else value
        elif generated and value == own_id:
            value = "<x-request-id>"
        fields[name] = value
    mimetype = response.headers.get("Content-Type", "").split(";")[0]
    body: Any = response.content
    if mimetype == "application/json":
        body = response.json()
        if generated and isinstance(body, dict) and body.get("request_id") == own_id:
            body = {**body, "request_id": "<x-request-id>"}
    elif mimetype.startswith("text/"):
        body = response.text
    fields["body"] = body
    return fields


def compare(azure_url: str, our_url: str, case: Case) -> dict[str, tuple[Any, Any]]:
    theirs = observed(send(azure_url, case), case.headers)
    ours = observed(send(our_url, case), case.headers)
    return {key: (theirs[key], ours[key]) for key in theirs if theirs[key] != ours[key]}


def expected_differences(case_id: str) -> dict[str, tuple[Any, Any]]:
    return {d.field: (d.azure, d.modelfleet) for d in DIFFERENCES if d.case == case_id}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_answer_as_azure_ml(servers, case: Case) -> None:
    azure, ours = servers
    differences = compare(azure[case.script].url, ours[case.script].url, case)
    assert differences == expected_differences(case.id), json.dumps(
        {key: {"azure": a, "modelfleet": b} for key, (a, b) in differences.items()}, indent=1, default=repr
    )


def test_the_difference_table_names_only_known_cases() -> None:
    known = {case.id for case in CASES} | {case.id for case in SWAGGER_CASES}
    assert {d.case for d in DIFFERENCES} <= known


# ---------------------------------------------------------------- swagger shipped with the script

SWAGGER2 = {
    "swagger": "2.0",
    "info": {"title": "Hand-written ✓", "version": "7"},
    "paths": {"/score": {"post": {"operationId": "score", "responses": {"200": {"description": "ok"}}}}},
    "x-numbers": {"b": 1, "a": [1.0, 2.50, 1e3, -0.0]},
}
SWAGGER3 = {"openapi": "3.0.0", "info": {"title": "Hand-written 3", "version": "7"}, "paths": {}}
SWAGGER_CASES = [
    Case("swagger-default", "two-and-three", "GET", "/swagger.json"),
    *(
        Case(f"swagger-{version}", "two-and-three", "GET", f"/swagger.json?version={version}")
        for version in ("2", "2.0", "3", "3.0")
    ),
    *(
        Case(
            f"swagger-unknown-{version or 'empty'}",
            "two-and-three",
            "GET",
            f"/swagger.json?version={version}",
        )
        for version in ("4", "3.2", "1", "")
    ),
    Case("swagger-json-wins", "plain-and-two", "GET", "/swagger.json"),
    Case("swagger-json-wins-2.0", "plain-and-two", "GET", "/swagger.json?version=2.0"),
]


@pytest.fixture(scope="module")
def swagger_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    """Two script folders: one shipping swagger2.json and swagger3.json, one shipping
    swagger.json beside swagger2.json (Azure ML's server prefers the first)."""
    shipped = {
        "two-and-three": {"swagger2.json": SWAGGER2, "swagger3.json": SWAGGER3},
        "plain-and-two": {
            "swagger.json": {**SWAGGER2, "info": {"title": "from swagger.json", "version": "1"}},
            "swagger2.json": SWAGGER2,
        },
    }
    scripts = {}
    for name, files in shipped.items():
        folder = tmp_path_factory.mktemp(name)
        (folder / "score.py").write_text((SCRIPTS / "echo_json.py").read_text())
        for filename, document in files.items():
            # Indented and not ASCII-escaped: both servers must parse and re-write it.
            (folder / filename).write_text(
                json.dumps(document, indent=4, ensure_ascii=False), encoding="utf-8"
            )
        scripts[name] = folder / "score.py"
    azure, ours = start_pair(scripts, IRIS_DIR, tmp_path_factory.mktemp("logs"), "swagger-service")
    yield azure, ours
    stop_pair(azure, ours)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", SWAGGER_CASES, ids=[case.id for case in SWAGGER_CASES])
def test_shipped_swagger_same_bytes_as_azure_ml(swagger_servers, case: Case) -> None:
    azure, ours = swagger_servers
    differences = compare(azure[case.script].url, ours[case.script].url, case)
    assert differences == expected_differences(case.id), differences
    theirs = send(azure[case.script].url, case)
    mine = send(ours[case.script].url, case)
    if theirs.status_code == 200:
        assert mine.content == theirs.content


@pytest.mark.parametrize(
    ("script", "version", "field", "value"),
    [
        ("plain-and-two", "3", "openapi", "3.0.3"),
        ("plain-and-two", "3.0", "openapi", "3.0.3"),
        ("two-and-three", "3.1", "openapi", "3.1.0"),
        ("plain-and-two", "3.1", "openapi", "3.1.0"),
    ],
)
def test_generated_swagger_has_the_service_name_and_version_as_azure_ml(
    swagger_servers, script: str, version: str, field: str, value: str
) -> None:
    """Generated documents differ in their prose; the title, the OpenAPI version and where the
    paths are must not."""
    azure, ours = swagger_servers
    documents = [
        requests.get(f"{server[script].url}/swagger.json?version={version}", timeout=10).json()
        for server in (azure, ours)
    ]
    for document in documents:
        assert document["info"]["title"] == "swagger-service"
        assert document[field] == value
        assert {"/", "/score"} <= set(document["paths"])
