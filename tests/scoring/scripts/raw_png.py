"""Raw mode as written for Azure ML: the request in, a full response out."""

import io

from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from PIL import Image, ImageStat


def init():
    pass


@rawhttp
def run(request: AMLRequest):
    if request.method != "POST":
        return AMLResponse("POST a PNG image", 405)
    image = Image.open(io.BytesIO(request.get_data(cache=False)))
    if request.args.get("format") == "png":
        out = io.BytesIO()
        image.convert("L").save(out, format="PNG")
        return AMLResponse(out.getvalue(), 200, {"Content-Type": "image/png"})
    return AMLResponse(
        {
            "size": list(image.size),
            "mode": image.mode,
            "mean": ImageStat.Stat(image.convert("L")).mean[0],
            "content_type": request.headers.get("Content-Type"),
        },
        200,
        json_str=True,
    )
