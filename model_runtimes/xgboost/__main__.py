"""python -m model_runtimes.xgboost --artifact model.json --model-name N --model-version V
--input-type T [--options JSON] [--address tcp://HOST:PORT]"""

from model_runtimes._runner import run

from . import load

run("xgboost", load)
