"""python -m model_runtimes.sklearn --artifact model.joblib --model-name N --model-version V
--input-type T [--options JSON] [--address tcp://HOST:PORT]"""

from model_runtimes._runner import run

from . import load

run("sklearn", load)
