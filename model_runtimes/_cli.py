"""The command line every model runtime shares: which model it serves, where its frontend
is, and the log format (the replica's output goes to its log file or container log)."""

from __future__ import annotations

import argparse
import logging


def replica_parser(module: str) -> argparse.ArgumentParser:
    """An argument parser for ``python -m model_runtimes.<module>`` with the arguments every
    replica takes; the runtime adds its own."""
    ap = argparse.ArgumentParser(prog=f"python -m model_runtimes.{module}")
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--model-version", required=True)
    ap.add_argument("--input-type", required=True)
    ap.add_argument("--address", default=None,
                    help="the frontend's RPC address (default: CLIPPER_RPC_ADDRESS or "
                         "clipper_rpc's default)")
    return ap


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
