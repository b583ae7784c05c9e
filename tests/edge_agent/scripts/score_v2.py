"""Version 2 of the iris service: same model, says which version answered."""

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
    return {"predictions": [CLASSES[int(i)] for i in labels], "version": 2}
