"""Clipper: a low-latency prediction serving system (frontend, scheduler, cache, policies)."""

__version__ = "0.1.0"
