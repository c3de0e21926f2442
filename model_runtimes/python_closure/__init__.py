"""Runs a cloudpickled Python function (a "closure") as a Clipper model container."""
