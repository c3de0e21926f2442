"""The deployer lease's tenure (clipper_core.cluster.Tenure) on a virtual clock: a frontend
never believes it deploys once its lease may have expired in Redis, whatever the delays of
its renewals and whichever of them fail."""

from hypothesis import given, strategies as st

from clipper_core.cluster import MARGIN, Tenure

delays = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)
renewals = st.lists(st.tuples(st.floats(min_value=0.0, max_value=3.0, allow_nan=False),
                              delays, delays), min_size=1, max_size=30)


@given(lease_s=st.floats(min_value=0.3, max_value=10.0), steps=renewals,
       probes=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=5))
def test_tenure_ends_before_the_key_can_expire(lease_s, steps, probes):
    """Each step: wait ``gap``, send an acquire (or a renewal once held); Redis receives it
    ``there`` later and the answer comes ``back`` after that.  Redis grants a renewal only
    before the key expired and an acquisition only after; the frontend's tenure must never
    outlast the key."""
    tenure = Tenure(lease_s)
    expiry = float("-inf")  # when the key, holding our token, expires in Redis
    held = False
    now = 0.0
    for gap, there, back in steps:
        now += gap * lease_s
        sent, received = now, now + there * lease_s
        if held:
            ok = received < expiry
        else:
            ok = received >= expiry  # absent (the other contenders lose the race here)
        if ok:
            expiry = received + lease_s
        now = received + back * lease_s
        # the answer arrives: the frontend learns the outcome
        if ok:
            tenure.confirmed(sent)
            held = True
        elif held:
            tenure.lost()
            held = False
        for p in probes:
            t = now + p * lease_s * 2
            if tenure.holds(t):
                assert t < expiry, (t, expiry)


@given(lease_s=st.floats(min_value=0.3, max_value=10.0),
       rtt=st.floats(min_value=0.0, max_value=0.05))
def test_a_prompt_renewal_keeps_the_tenure(lease_s, rtt):
    """Renewed every third of the lease with a short round trip, the tenure never lapses."""
    tenure = Tenure(lease_s)
    t = last = 0.0
    for _ in range(20):
        tenure.confirmed(t)
        last = t
        t += lease_s / 3
        assert tenure.holds(t + rtt * lease_s)
    # and without a renewal it ends: before the key expires, after most of the lease
    assert tenure.holds(last + lease_s * (1 - MARGIN) * 0.999)
    assert not tenure.holds(last + lease_s * (1 - MARGIN))
