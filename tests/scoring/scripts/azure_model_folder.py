"""Azure ML's online-endpoint style: a model registered from a folder named `model`, found by
joining AZUREML_MODEL_DIR with the folder's name and the file's."""

import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    # AZUREML_MODEL_DIR is the model's version folder; the registered folder's name comes first.
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model/model.onnx")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    labels, _ = session.run(None, {"input": data})
    return labels.tolist()
