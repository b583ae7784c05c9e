"""Raw mode the way public Azure ML samples use Flask's request and response objects."""

import json

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    if request.method == "OPTIONS":  # Azure ML's documented CORS pattern
        return AMLResponse(
            "", 200, {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST"}
        )
    action = request.args.get("action")
    if action == "upload":
        upload = request.files["image"]
        return AMLResponse(
            {
                "filename": upload.filename,
                "mimetype": upload.mimetype,
                "size": len(upload.read()),
                "label": request.form["label"],
            },
            200,
            json_str=True,
        )
    if action == "headers":
        pairs = [
            [name.lower(), value] for name, value in request.headers if name.lower().startswith("x-probe")
        ]
        return AMLResponse(pairs, 200, json_str=True)
    if action == "stream":

        def chunks():
            for index in range(3):
                yield f"line {index}\n"

        return AMLResponse(chunks(), 200)
    if action == "mimetype":
        response = AMLResponse("<svg/>", 200)
        response.mimetype = "image/svg+xml"
        return response
    if action == "failed":
        return AMLResponse(json.dumps({"error": "bad sensor"}), 200, run_function_failed=True)
    return AMLResponse(json.dumps({"args": request.args.getlist("k")}), 200)
