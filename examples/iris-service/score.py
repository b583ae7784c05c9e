"""Entry script in Azure ML's style: init() once, run() per request.

It runs unchanged under Azure ML's scoring server and under modelfleet's scoring host.
"""

import glob
import json
import os

import numpy as np
import onnxruntime as ort

session = None
CLASSES = ["setosa", "versicolor", "virginica"]


def init():
    global session
    model_dir = os.environ["AZUREML_MODEL_DIR"]
    # <model_dir>/<model name>/model.onnx when packaged, <model_dir>/model.onnx in development
    found = sorted(glob.glob(os.path.join(model_dir, "**", "model.onnx"), recursive=True))
    if not found:
        raise FileNotFoundError(f"no model.onnx under {model_dir}")
    path = found[0]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    labels, probabilities = session.run(None, {"input": data})
    return {
        "predictions": [CLASSES[int(i)] for i in labels],
        "probabilities": probabilities.round(4).tolist(),
    }
