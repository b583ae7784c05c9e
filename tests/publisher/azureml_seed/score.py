# The seed's scikit-learn entry script, as Azure ML v1 notebooks deploy it: the model is found with
# Model.get_model_path in init() and the input/output schemas come from inference-schema. The model
# is ONNX here (scikit-learn is not in the test environment), so init() opens it with onnxruntime
# where the seed calls joblib.load; everything else is the seed's.
import json

import numpy as np
import onnxruntime
from azureml.core.model import Model
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    global model
    # AZUREML_MODEL_DIR is the registered model's folder; get_model_path finds the file in it
    model_path = Model.get_model_path("sklearn_regression_model.pkl")
    model = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])


input_sample = np.array([[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]])
output_sample = np.array([3726.995])


@input_schema("data", NumpyParameterType(input_sample))
@output_schema(NumpyParameterType(output_sample))
def run(data):
    try:
        result = model.run(None, {"X": np.asarray(data, dtype=np.float32)})[0].ravel()
        # You can return any data type, as long as it is JSON serializable.
        return result.tolist()
    except Exception as e:
        error = str(e)
        return json.dumps({"error": error})
