"""python -m model_runtimes.python_closure --closure FILE --model-name N --model-version V
--input-type T [--address tcp://HOST:PORT]

Loads a function serialised with cloudpickle (what ``deploy_python_closure`` stores) and serves
it; ``--function module:attr`` serves an importable function instead.
"""

from __future__ import annotations

import importlib
import logging
import sys

from clipper_rpc import serve

from .._cli import replica_parser, setup_logging


def load_function(closure: str | None, function: str | None):
    if function:
        mod, _, attr = function.partition(":")
        if not attr:
            raise SystemExit(f"--function must be module:attribute, got {function!r}")
        fn = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
        return fn
    import cloudpickle

    with open(closure, "rb") as f:
        return cloudpickle.load(f)


def main(argv: list[str] | None = None) -> int:
    ap = replica_parser("python_closure")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--closure", help="file holding the cloudpickled predict function")
    src.add_argument("--function", help="module:attribute of an importable predict function")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        fn = load_function(args.closure, args.function)
    except Exception as e:
        logging.getLogger("clipper.container").error("cannot load the model function: %s", e)
        return 2
    if not callable(fn):
        logging.getLogger("clipper.container").error("the loaded object is not callable")
        return 2
    serve(fn, model_name=args.model_name, model_version=args.model_version,
          input_type=args.input_type, address=args.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
