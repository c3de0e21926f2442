"""A replica's connections to the frontends of a cluster (clipper_rpc.container): it
connects to each frontend a REGISTERED lists, and lets one go only when that frontend is
both unlisted and silent, so that a list read during a Redis outage (missing a live
frontend) never cuts a frontend off."""

from clipper_rpc.container import _Links

A, B, C = (f"tcp://127.0.0.1:{p}" for p in (1, 2, 3))  # nothing listens: connects lazily


def test_listed_frontends_are_connected_and_unlisted_silent_ones_dropped():
    links = _Links(A, None)
    try:
        links.update([A, B, C])
        assert set(links.by_address) == {A, B, C}
        links.update([A, C])  # B unlisted, but still heartbeating: kept
        assert set(links.by_address) == {A, B, C}
        links.silent(links.by_address[B])  # unlisted and silent: dropped
        assert set(links.by_address) == {A, C}
        c = links.by_address[C]
        c.must_register = False
        links.silent(c)  # listed and silent (restarting?): kept, registers again
        assert links.by_address[C] is c and c.must_register
        links.update([C])
        a = links.by_address[A]
        links.silent(a)  # the address the replica was started with is always kept
        assert links.by_address[A] is a and a.must_register
    finally:
        links.close()
