"""The deadlines of the edge's direct queries (predict._Deadlines): one loop timer for the
earliest, answered queries skipped, and no more held than the queries still waiting need."""

import asyncio

from clipper_core.predict import _Deadlines


class Waiting:
    """What _Deadlines needs of a query: ``q`` (None once answered) and ``give_up``."""

    def __init__(self, log, name):
        self.q = name
        self.log = log

    def give_up(self):
        self.log.append((self.q, asyncio.get_running_loop().time()))
        self.q = None


def test_deadlines_fire_in_order_on_time_and_skip_the_answered():
    async def main():
        loop = asyncio.get_running_loop()
        d = _Deadlines(loop)
        fired = []
        t0 = loop.time()
        ones = {name: Waiting(fired, name) for name in "abcde"}
        # added out of order: the timer follows the earliest
        for name, dt in (("c", 0.06), ("a", 0.02), ("e", 0.10), ("b", 0.04), ("d", 0.08)):
            d.add(t0 + dt, ones[name])
        ones["b"].q = None  # answered before its deadline
        d.answered()
        await asyncio.sleep(0.15)
        assert [n for n, _ in fired] == ["a", "c", "d", "e"]
        for (name, at), dt in zip(fired, (0.02, 0.06, 0.08, 0.10)):
            assert t0 + dt - 0.002 <= at <= t0 + dt + 0.05, (name, at - t0)
        assert d.live == 0 and not d.heap and d.alarm.handle is None

    asyncio.run(main())


def test_answered_queries_are_not_held_until_their_deadline():
    """Queries with a long SLO answered at once: their entries are dropped once they
    outnumber the waiting ones, not kept for the SLO."""
    async def main():
        loop = asyncio.get_running_loop()
        d = _Deadlines(loop)
        fired = []
        waiting = Waiting(fired, "w")
        d.add(loop.time() + 60.0, waiting)
        for i in range(20_000):
            one = Waiting(fired, i)
            d.add(loop.time() + 60.0, one)
            one.q = None
            d.answered()
        assert d.live == 1
        assert len(d.heap) <= 4 * d.live + 1025
        assert any(e[2] is waiting for e in d.heap)
        assert not fired

    asyncio.run(main())
