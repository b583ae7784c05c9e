"""KServe's `InferenceRESTClient` speaking its default protocol, V1, against running hosts; run by
the tests in the kserve venv, never imported. Prints one JSON object: what the client saw for
each step.

    python kserve_rest_v1.py CNN_URL STRINGS_URL

CNN_URL serves the CNN example (`cnn`, input [N, 1, 28, 28]); STRINGS_URL serves a model named
`upper` with one string input.
"""

import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, RESTConfig

WORDS = ["héllo", "World", "ß"]


def images() -> np.ndarray:
    """Two fixed images the test can rebuild to ask the v2 route for the same numbers."""
    return (np.arange(2 * 28 * 28, dtype=np.float32) / (2 * 28 * 28)).reshape(2, 1, 28, 28)


async def _seen(call: Awaitable[Any]) -> dict[str, Any]:
    try:
        return {"status": 200, "value": await call}
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "error": str(error)}


async def main(cnn_url: str, strings_url: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    pictures = images().tolist()
    seen = {
        "live": await _seen(client.is_server_live(cnn_url)),
        "model_ready": await _seen(client.is_model_ready(cnn_url, "cnn")),
        "unknown_model_ready": await _seen(client.is_model_ready(cnn_url, "no-such-model")),
        "cnn_rows": await _seen(client.infer(cnn_url, {"instances": pictures}, model_name="cnn")),
        "cnn_columns": await _seen(client.infer(cnn_url, {"inputs": pictures}, model_name="cnn")),
        "strings": await _seen(client.infer(strings_url, {"instances": WORDS}, model_name="upper")),
        "wrong_shape": await _seen(client.infer(cnn_url, {"instances": [[1.0, 2.0]]}, model_name="cnn")),
        "numbers_for_strings": await _seen(
            client.infer(strings_url, {"instances": [1, 2]}, model_name="upper")
        ),
        "unknown_model": await _seen(
            client.infer(cnn_url, {"instances": pictures}, model_name="no-such-model")
        ),
    }
    await client.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
