"""python -m model_runtimes.onnx --artifact model.onnx --model-name N --model-version V
--input-type T [--options JSON] [--address tcp://HOST:PORT]"""

from model_runtimes._runner import run

from . import load

run("onnx", load)
