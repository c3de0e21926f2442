"""The prediction cache core, pure twin and compiled build, against a small reference model."""

import importlib
import sys

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

IMPLS = {"py": importlib.import_module("clipper_core._cache_py"),
         "c": importlib.import_module("clipper_core._cache_c")}


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


def r16(n):
    return -(-n // 16) * 16


def ref_size(key, value):
    """Bytes an entry is charged, computed independently of the implementation: a fixed
    overhead plus every object it holds, rounded up to the allocator's 16-byte granule."""
    n = r16(sys.getsizeof(value))
    if isinstance(value, list):
        n += sum(r16(sys.getsizeof(v)) for v in value)
    return IMPLS["py"].ENTRY_OVERHEAD + r16(sys.getsizeof(key)) + n


class RefClock:
    """The reference: a dict plus the CLOCK rule, written as plainly as possible.

    ``order`` is the ring read from the hand: new keys go to the back with their reference
    bit clear; to make room, the front key either loses its bit and goes to the back, or goes.
    """

    def __init__(self, capacity):
        self.capacity = capacity
        self.d = {}  # key -> [value, size, ref, stored_at]
        self.order = []
        self.hits = self.misses = self.evictions = self.expired = 0

    def used(self):
        return sum(e[1] for e in self.d.values())

    def _evict_one(self):
        k = self.order.pop(0)
        if self.d[k][2]:
            self.d[k][2] = False
            self.order.append(k)
        else:
            del self.d[k]
            self.evictions += 1

    def get(self, key, now, max_age):
        e = self.d.get(key)
        if e is None or (max_age >= 0 and now - e[3] > max_age):
            self.misses += 1
            self.expired += e is not None
            return "MISS"
        e[2] = True
        self.hits += 1
        return e[0]

    def put(self, key, value, now):
        size = ref_size(key, value)
        if size > self.capacity:
            return False
        if key in self.d:
            e = self.d[key]
            e[0], e[1], e[3] = value, size, now
            while self.used() > self.capacity:
                self._evict_one()
            return True
        while self.used() + size > self.capacity:
            self._evict_one()
        self.d[key] = [value, size, False, now]
        self.order.append(key)
        return True


KEYS = [b"", b"a", b"b", b"ab", b"ba", b"\x00", b"a" * 40, b"b" * 40, b"c" * 100, b"xyz"]
VALUES = st.one_of(st.floats(allow_nan=False), st.integers(-2**40, 2**40), st.none(),
                   st.text(max_size=120), st.lists(st.floats(allow_nan=False), max_size=12))
HASHES = {"builtin": None, "len-mod-3": lambda k: len(k) % 3, "constant": lambda k: 7}


class CacheMachine(RuleBasedStateMachine):
    """Both implementations and the reference see the same operations and must agree."""

    @initialize(capacity=st.integers(0, 3000), hash_name=st.sampled_from(sorted(HASHES)))
    def setup(self, capacity, hash_name):
        self.now = 0.0
        self.ref = RefClock(capacity)
        self.caches = {n: m.PredictionCache(capacity, HASHES[hash_name])
                       for n, m in IMPLS.items()}

    @rule(key=st.sampled_from(KEYS), value=VALUES)
    def put(self, key, value):
        want = self.ref.put(key, value, self.now)
        for n, c in self.caches.items():
            assert c.put(key, value, self.now) == want, n

    @rule(key=st.sampled_from(KEYS), max_age=st.sampled_from([-1.0, 0.0, 1.5, 10.0]))
    def get(self, key, max_age):
        want = self.ref.get(key, self.now, max_age)
        for n, c in self.caches.items():
            got = c.get(key, self.now, max_age)
            if want == "MISS":
                assert got is IMPLS[n].MISS, n
            else:
                assert got == want, n

    @rule(dt=st.sampled_from([0.5, 1.0, 5.0]))
    def tick(self, dt):
        self.now += dt

    @rule(key=st.sampled_from(KEYS))
    def peek(self, key):
        e = self.ref.d.get(key)
        for n, c in self.caches.items():
            got = c.peek(key)
            assert (got is IMPLS[n].MISS) if e is None else (got == e[0]), n

    @precondition(lambda self: self.caches["py"].in_flight < 5)
    @rule(key=st.sampled_from(KEYS))
    def flights(self, key):
        for c in self.caches.values():
            assert c.flight(key) is None
            f = c.start_flight(key, ("q", key))
            assert c.flight(key) is f and f.query == ("q", key)
            for other in KEYS:
                if other != key:
                    assert c.flight(other) is None
            c.end_flight(f)
            c.end_flight(f)
            assert c.flight(key) is None and c.in_flight == 0

    @invariant()
    def agree(self):
        ref = self.ref
        used = ref.used()
        assert used <= ref.capacity
        for n, c in self.caches.items():
            assert c.bytes_used == used, n
            assert c.bytes_used <= c.capacity, n
            assert c.entries == len(c) == len(ref.d), n
            assert c.keys() == ref.order, n
            assert (c.hits, c.misses, c.evictions, c.expired) == (
                ref.hits, ref.misses, ref.evictions, ref.expired), n


TestCacheAgainstReference = CacheMachine.TestCase
TestCacheAgainstReference.settings = settings(max_examples=150, stateful_step_count=60,
                                              deadline=None)


def test_colliding_hashes_never_mix_answers(impl):
    c = impl.PredictionCache(1 << 20, hash_fn=lambda key: 42)
    a = impl.key_prefix("m", "1", "doubles") + b"\x00" * 8
    b = impl.key_prefix("m", "1", "doubles") + b"\x01" * 8
    assert c.hash_key(a) == c.hash_key(b)
    assert c.get(a, 0.0, -1.0) is impl.MISS
    c.put(a, "answer for a", 0.0)
    assert c.get(b, 0.0, -1.0) is impl.MISS, "b must not get a's answer"
    c.put(b, "answer for b", 0.0)
    assert c.get(a, 0.0, -1.0) == "answer for a"
    assert c.get(b, 0.0, -1.0) == "answer for b"
    # flights are keyed the same way
    fa = c.start_flight(a, "query a")
    assert c.flight(b) is None
    fb = c.start_flight(b, "query b")
    assert c.flight(a) is fa and c.flight(b) is fb
    c.finish(fa, True, "new a", 1.0)
    assert c.flight(a) is None and c.flight(b) is fb
    assert c.get(a, 1.0, -1.0) == "new a" and c.get(b, 1.0, -1.0) == "answer for b"


def test_only_successful_outputs_are_stored(impl):
    c = impl.PredictionCache(1 << 20)
    f = c.start_flight(b"k", None)
    c.finish(f, False, "model raised", 0.0)
    assert c.in_flight == 0 and c.peek(b"k") is impl.MISS and c.entries == 0
    f = c.start_flight(b"k", None)
    c.finish(f, True, [1.0, 2.0], 0.0)
    assert c.peek(b"k") == [1.0, 2.0] and c.entries == 1


def test_ttl_is_per_lookup(impl):
    c = impl.PredictionCache(1 << 20)
    c.put(b"k", 1.0, 100.0)
    assert c.get(b"k", 105.0, 10.0) == 1.0
    assert c.get(b"k", 105.0, -1.0) == 1.0  # an app without TTL still sees it
    assert c.get(b"k", 111.0, 10.0) is impl.MISS and c.expired == 1
    c.put(b"k", 2.0, 111.0)  # recomputed: overwritten in place
    assert c.get(b"k", 112.0, 10.0) == 2.0 and c.entries == 1 and c.replaced == 1


def test_new_version_misses_by_construction(impl):
    c = impl.PredictionCache(1 << 20)
    x = b"\x00\x00\x80?"
    c.put(impl.key_prefix("m", "1", "floats") + x, "v1", 0.0)
    assert c.get(impl.key_prefix("m", "2", "floats") + x, 0.0, -1.0) is impl.MISS
    assert c.get(impl.key_prefix("m", "1", "ints") + x, 0.0, -1.0) is impl.MISS
    assert c.get(impl.key_prefix("m", "1", "floats") + x, 0.0, -1.0) == "v1"


def test_lookup_versions_joins_feedback(impl):
    c = impl.PredictionCache(1 << 20)
    x = b"some input"
    c.put(impl.key_prefix("m", "1", "bytes") + x, "cat", 0.0)
    c.put(impl.key_prefix("m", "3", "bytes") + x, "dog", 0.0)
    c.put(impl.key_prefix("m", "2", "bytes") + b"other", "emu", 0.0)
    hits = c.hits
    assert c.lookup_versions("m", ["1", "2", "3"], "bytes", x) == {"1": "cat", "3": "dog"}
    assert c.lookup_versions("n", ["1"], "bytes", x) == {}
    assert c.hits == hits, "a feedback lookup is not a query"


def test_budget_holds_under_many_inserts_and_oversize_is_rejected(impl):
    cap = 50_000
    c = impl.PredictionCache(cap)
    for i in range(5_000):
        assert c.put(b"key-%d" % i, float(i), 0.0)
        assert c.bytes_used <= cap
    assert c.evictions == 5_000 - c.entries and c.entries > 10
    assert c.put(b"huge", "x" * cap, 0.0) is False and c.rejected == 1
    assert c.bytes_used <= cap and c.peek(b"huge") is impl.MISS
    c.clear()
    assert c.entries == 0 and c.bytes_used == 0 and c.keys() == []


def test_second_chance_keeps_hot_entries(impl):
    per = ref_size(b"k0", 1.0)
    assert impl.entry_size(b"k0", 1.0) == per
    c = impl.PredictionCache(per * 4)
    for k in (b"k0", b"k1", b"k2", b"k3"):
        c.put(k, 1.0, 0.0)
    assert c.get(b"k0", 0.0, -1.0) == 1.0  # k0 is hot
    c.put(b"k4", 1.0, 0.0)  # the hand passes k0 (second chance) and evicts k1
    assert c.keys() == [b"k2", b"k3", b"k0", b"k4"]
    assert c.peek(b"k1") is impl.MISS and c.evictions == 1


def test_output_size_counts_nested_values_without_recursion(impl):
    assert impl.output_size(1.5) == r16(sys.getsizeof(1.5))
    assert impl.output_size("x" * 100) == r16(sys.getsizeof("x" * 100))
    v = {"label": "cat", "scores": [0.1, 0.9]}
    want = sum(r16(sys.getsizeof(o)) for o in (v, "label", "cat", "scores", v["scores"], 0.1, 0.9))
    assert impl.output_size(v) == want
    deep = []
    for _ in range(100_000):
        deep = [deep]
    assert impl.output_size(deep) == 100_000 * r16(sys.getsizeof([[]])) + r16(sys.getsizeof([]))


def test_counters_are_readonly_in_the_compiled_build():
    c = IMPLS["c"].PredictionCache(1000)
    for name in ("hits", "misses", "coalesced", "evictions", "bytes_used", "entries"):
        assert getattr(c, name) == 0
        with pytest.raises(AttributeError):
            setattr(c, name, 1)
    assert not hasattr(c, "__dict__")
    assert not hasattr(c.start_flight(b"k", None), "__dict__")


def test_key_prefix_is_injective():
    kp = IMPLS["c"].key_prefix
    assert kp("a", "1", "ints") + b"2" != kp("a", "12", "ints")
    assert kp("ab", "1", "ints") != kp("a", "b1", "ints")
    assert kp("m", "1", "ints") + b"x" != kp("m", "1", "floats") + b"x"


def test_drop_version_forgets_only_that_version(impl):
    c = impl.PredictionCache(1 << 20)
    k = lambda m, v, x: impl.key_prefix(m, v, "doubles") + x
    for x in (b"a", b"b", b"c"):
        c.put(k("cx", "1", x), "old", 0.0)
        c.put(k("cx", "10", x), "ten", 0.0)
        c.put(k("cy", "1", x), "other", 0.0)
    used = c.bytes_used
    assert c.drop_version("cx", "1") == 3
    assert c.peek(k("cx", "1", b"a")) is impl.MISS
    assert c.peek(k("cx", "10", b"a")) == "ten" and c.peek(k("cy", "1", b"b")) == "other"
    assert c.entries == 6 and c.bytes_used < used
    c.put(k("cx", "1", b"a"), "new", 0.0)  # the table and the ring stay consistent
    assert c.peek(k("cx", "1", b"a")) == "new"
    assert len(c.keys()) == 7
