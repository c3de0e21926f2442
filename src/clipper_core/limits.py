"""The process's open-file limit: what keeps idle or slow clients from taking the file
descriptors that queries and management need, together with the per-listener connection cap
of :class:`clipper_core.edge.Edge`.

:func:`raise_open_file_limit` lifts the soft limit to the hard one at start.
"""

from __future__ import annotations

import resource


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft
