"""The iris service, printing a line for every request (as many entry scripts do)."""

import glob
import json
import os

import numpy as np
import onnxruntime as ort

session = None
CLASSES = ["setosa", "versicolor", "virginica"]


def init():
    global session
    path = sorted(
        glob.glob(os.path.join(os.environ["AZUREML_MODEL_DIR"], "**", "model.onnx"), recursive=True)
    )[0]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    labels, _ = session.run(None, {"input": data})
    print(f"scored {len(labels)} rows", flush=True)
    return {"predictions": [CLASSES[int(i)] for i in labels]}
