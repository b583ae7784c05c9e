"""KServe's `InferenceRESTClient` (v2) against a running host; run by the tests in the kserve
venv, never imported. Prints one JSON object: what the client saw for each step.

    python kserve_rest.py BASE_URL MODEL_NAME
"""

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

WORDS = ["héllo", "World", "ß"]


def _text(item):
    return item.decode() if isinstance(item, bytes) else item


async def _infer(client, base_url, model, request):
    try:
        response = await client.infer(base_url, request, model_name=model)
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "error": str(error)}
    return {
        "status": 200,
        "outputs": {
            output.name: [_text(item) for item in output.as_numpy().reshape(-1).tolist()]
            for output in response.outputs
        },
    }


def _strings(model, values, binary):
    tensor = InferInput("text", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor])


async def main(base_url, model):
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    seen = {
        "live": await client.is_server_live(base_url),
        "ready": await client.is_server_ready(base_url),
        "model_ready": await client.is_model_ready(base_url, model),
        "unknown_model_ready": await client.is_model_ready(base_url, "no-such-model"),
        "json": await _infer(client, base_url, model, _strings(model, WORDS, binary=False)),
        "binary": await _infer(client, base_url, model, _strings(model, [w.encode() for w in WORDS], True)),
        "not_utf8": await _infer(client, base_url, model, _strings(model, [b"\xff\xfe"], binary=True)),
        "unknown_model": await _infer(client, base_url, "no-such-model", _strings(model, WORDS, False)),
    }
    wrong = InferInput("text", [2], "FP32")
    wrong.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32), binary_data=False)
    seen["wrong_datatype"] = await _infer(
        client, base_url, model, InferRequest(model_name=model, infer_inputs=[wrong])
    )
    await client.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
