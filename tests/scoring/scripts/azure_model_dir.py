"""Azure ML v1's most common entry script: the model file joined to AZUREML_MODEL_DIR."""

import json
import os

import numpy as np
import onnxruntime as ort

session = None


def init():
    global session
    model_path = os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.onnx")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])


def run(raw_data):
    data = np.asarray(json.loads(raw_data)["data"], dtype=np.float32)
    labels, _ = session.run(None, {"input": data})
    return labels.tolist()
