"""clipper_core.tasks.cancel_and_wait: how the long-lived parts stop their background tasks."""

import asyncio
import logging

import pytest

from clipper_core.tasks import cancel_and_wait


async def test_the_task_has_unwound_when_it_returns():
    released = []

    async def loop():
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # unwinding takes a step of its own
            released.append(True)

    t = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait(t)
    assert t.cancelled() and released == [True]
    await cancel_and_wait(t)  # done already: nothing to do
    await cancel_and_wait(None)


async def test_a_failure_while_unwinding_is_logged_not_raised(caplog):
    async def loop():
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("cleanup broke")

    t = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="clipper.server"):
        await cancel_and_wait(t)
    assert "failed while it was stopped" in caplog.text and "cleanup broke" in caplog.text


async def test_the_callers_own_cancellation_goes_through():
    async def slow_to_unwind():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)
            raise

    inner = asyncio.get_running_loop().create_task(slow_to_unwind())
    await asyncio.sleep(0)
    outer = asyncio.get_running_loop().create_task(cancel_and_wait(inner))
    await asyncio.sleep(0.01)  # outer waits for inner to unwind
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer  # not swallowed as if it were the inner task's
    assert inner.done()
