"""Small asyncio helpers the long-lived parts share."""

from __future__ import annotations

import asyncio

from . import log


async def cancel_and_wait(task: asyncio.Future | None) -> None:
    """Stop a background task: cancel ``task`` (if any and not done) and wait until it has
    finished unwinding, so that what it holds is released before the caller goes on.  Its
    cancellation is not the caller's error, nor is a failure while it unwound (logged); the
    caller's own cancellation goes through."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise
    except Exception:
        log.server.exception("a background task failed while it was stopped")
