"""run() answering in every way Azure ML's contract allows, chosen by the request's "kind"."""

import json
import time

from azureml.contrib.services.aml_response import AMLResponse

TEXT = "plain words from run()"


def init():
    pass


def run(raw_data):
    request = json.loads(raw_data)
    kind = request.get("kind", "echo")
    if kind == "echo":
        return request
    if kind == "raise":
        raise RuntimeError("the secret connection string is hunter2")
    if kind == "none":
        return None
    if kind == "text":
        return TEXT
    if kind == "big":
        return {"rows": [[index * 0.5, "row"] for index in range(400)]}
    if kind == "response":
        return AMLResponse("created", 201, {"X-Custom": "yes", "Content-Type": "text/plain"})
    if kind == "empty":
        return AMLResponse("", 204)
    if kind == "failed":
        return AMLResponse({"error": "bad"}, 200, json_str=True, run_function_failed=True)
    if kind == "bad_header":
        return AMLResponse("x", 200, {"X-Bad": "one\ntwo"})
    if kind == "stream":
        return AMLResponse((f"part {index};" for index in range(5)), 200)
    if kind == "big_response":
        return AMLResponse(json.dumps({"rows": list(range(1000))}), 200, {"Content-Type": "application/json"})
    if kind == "stream_fails":
        return AMLResponse(_failing_parts(), 200)
    if kind == "stream_slow":
        return AMLResponse(_slow_parts(request.get("parts", 5), request.get("pause", 0.3)), 200)
    if kind == "stream_big":
        return AMLResponse((b"x" * (1 << 20) for _ in range(request.get("parts", 30))), 200)
    if kind == "not_json":
        return {1, 2}
    raise ValueError(f"unknown kind {kind}")


def _failing_parts():
    yield "one;"
    yield "two;"
    raise RuntimeError("the generator broke")


def _slow_parts(parts, pause):
    for index in range(parts):
        time.sleep(pause)
        yield f"part {index};"
