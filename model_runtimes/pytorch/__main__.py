"""python -m model_runtimes.pytorch --artifact model.pt --model-name N --model-version V
--input-type T [--options JSON] [--address tcp://HOST:PORT]"""

from model_runtimes._runner import run

from . import load

run("pytorch", load)
