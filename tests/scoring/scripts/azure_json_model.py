"""JSON in, JSON out, the way Azure ML's v1 samples write it: the body parsed by the script, the
model from AZUREML_MODEL_DIR, and the samples' habit of returning an error as a 200 body."""

import json
import os

import numpy as np
import onnxruntime

session = None


def init():
    global session
    path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.onnx")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(raw_data):
    request = json.loads(raw_data)
    kind = request.get("return") if isinstance(request, dict) else None
    if kind == "none":
        return None
    if kind == "string":
        return "plain text"
    if kind == "mixed":
        return [1, 2.5, "x", None, True, {"nested": "héllo ✓"}]
    if kind == "numpy":
        return np.arange(3)
    if kind == "float":
        return 0.1 + 0.2
    try:
        data = np.array(request["data"], dtype=np.float32)
        labels, probabilities = session.run(None, {"input": data})
        return {"labels": labels.tolist(), "best": [round(float(p.max()), 4) for p in probabilities]}
    except Exception as error:
        return {"error": str(error)}
