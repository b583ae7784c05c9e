"""Raw mode as Azure ML's samples use it: the script reads the request and writes the whole
response (own status, headers and body)."""

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    action = request.args.get("action", "echo")
    if action == "describe":
        return AMLResponse(
            {
                "method": request.method,
                "path": request.path,
                "args": request.args.to_dict(flat=False),
                "content_type": request.content_type,
                "mimetype": request.mimetype,
                "is_json": request.is_json,
                "json": request.get_json(silent=True),
                "form": request.form.to_dict(flat=False),
                "length": len(request.get_data()),
                "caller": request.headers.get("X-Caller"),
            },
            200,
            json_str=True,
        )
    if action == "status":
        code = int(request.args.get("code", "200"))
        return AMLResponse({"code": code}, code, {"X-Script": "yes"}, json_str=True)
    if action == "text":
        return AMLResponse("plain answer", 200)
    if action == "none":
        return AMLResponse(None, 202)
    if action == "dict":
        return {"not": "a response"}
    if action == "headers":
        return AMLResponse("ok", 200, {"Content-Type": "text/plain", "X-Multi": "a, b"})
    return AMLResponse(request.get_data(), 200)
