"""Prediction cache core: byte-bounded, CLOCK-evicted, and the table of queries in flight.

Single source of truth, sans-IO (every time-dependent method takes ``now``).  Built twice:
imported as is (the pure twin) and compiled by Cython as ``_cache_c`` through ``_cache_c.pxd``,
which turns these classes into ``cdef class`` types with C fields.

Keys are bytes: :func:`key_prefix` (model, version, input type, each NUL-terminated; none of
them can contain NUL) followed by the input's bytes, so equal keys mean equal queries.  The
table is indexed by ``hash_fn(key)`` (injectable; the default is Python's ``hash`` of the bytes,
which bytes objects cache) and every entry keeps its whole key: a lookup compares the stored key
with the asked one, so two inputs whose hashes collide each get their own answer.

Eviction is CLOCK over a byte budget.  The ring is kept as a FIFO whose front is the hand:
a new entry enters at the back (the hand reaches it last) with its reference bit clear; a hit
sets the bit; to make room the hand looks at the front entry: referenced, it loses the bit and
goes to the back (its second chance); not referenced, it is evicted.  Entries never point at one
another (the FIFO is a list), so dropping the cache frees them without the cycle collector.

Every entry is charged ``ENTRY_OVERHEAD`` bytes on top of its key and output (the entry object,
its table slot, its hash and its FIFO slot, plus what the allocator loses to churn; calibrated
with ``benchmarks/cache.py``, which checks RSS after a million inserts), so the budget bounds
the memory the cache really holds.  Stored outputs are shared between answers: callers
must not mutate them.
"""

import sys

_getsizeof = sys.getsizeof


def _alloc(n):
    """Bytes the allocator hands out for an object of ``n`` bytes (16-byte granules)."""
    return (n + 15) & -16


_BYTES_HEADER = _getsizeof(b"")
_FLOAT_SIZE = _alloc(_getsizeof(0.0))  # every float has the same size; the commonest output

#: what a lookup answers when no fresh entry exists (a model output may be ``None``)
MISS = object()

#: bytes charged per entry beyond its key object and its output (see :func:`entry_size`)
ENTRY_OVERHEAD = 320
_OVERHEAD = ENTRY_OVERHEAD

_COMPACT_AT = 4096  # FIFO slots consumed by the hand before the list is compacted


def key_prefix(model, version, input_type):
    """The key bytes that precede the input's bytes for one (model, version, input type)."""
    return (model + "\x00" + version + "\x00" + input_type + "\x00").encode("utf-8")


def output_size(value):
    """Bytes a model output holds: ``sys.getsizeof`` summed over nested lists, tuples and dicts,
    each object rounded up to the allocator's 16-byte granule.

    Shared singletons (small ints, ``None``, interned strings) are charged too: the estimate
    errs on the side of the budget.  Iterative, so deep nesting cannot exhaust the C stack.
    """
    t = type(value)
    if t is float:
        return _FLOAT_SIZE
    if t is not list and t is not dict and t is not tuple:
        return _alloc(_getsizeof(value))
    n = 0
    stack = [value]
    while stack:
        v = stack.pop()
        n += _alloc(_getsizeof(v))
        t = type(v)
        if t is list or t is tuple:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
    return n


def entry_size(key, value):
    """Bytes an entry is charged: ``ENTRY_OVERHEAD``, the key object and the output."""
    return _OVERHEAD + _alloc(_BYTES_HEADER + len(key)) + output_size(value)


class Entry:
    """One cached output.  ``next`` chains entries whose keys share a hash."""

    def __init__(self, key, h, value, size, stored_at):
        self.key = key
        self.hash = h
        self.value = value
        self.size = size
        self.stored_at = stored_at
        self.ref = False
        self.next = None


class Flight:
    """A query being computed that identical queries share (see ``PredictionCache.flight``).

    ``query`` is whatever the caller registered (the scheduler's query); ``active`` turns False
    when :meth:`PredictionCache.end_flight` removes it from the table.
    """

    def __init__(self, key, h, query):
        self.key = key
        self.hash = h
        self.query = query
        self.active = True
        self.next = None


class PredictionCache:
    """Outputs of model versions by input, at most ``capacity_bytes``, CLOCK eviction.

    ``hash_fn(key: bytes) -> int`` indexes the table (default: ``hash``); it only spreads keys,
    correctness never depends on it.  Counters (readonly in the compiled build) are for the
    metrics layer: ``hits``, ``misses`` (lookups without a fresh entry, coalesced ones
    included), ``expired`` (misses because of the TTL), ``coalesced`` (misses that joined a
    computation in flight), ``evictions``, ``inserts``, ``replaced`` (an entry's output
    overwritten in place), ``rejected`` (outputs larger than the whole budget), ``bytes_used``,
    ``entries`` and ``in_flight``.
    """

    #: the module's :data:`MISS`, for callers that hold an instance of either build
    MISS = MISS

    def __init__(self, capacity_bytes, hash_fn=None):
        if capacity_bytes < 0:
            raise ValueError("cache capacity must be >= 0 bytes")
        self.capacity = capacity_bytes
        self._hash_fn = hash_fn
        self._table = {}
        self._flights = {}
        self._fifo = []
        self._hand = 0
        self.bytes_used = 0
        self.entries = 0
        self.in_flight = 0
        self.hits = 0
        self.misses = 0
        self.expired = 0
        self.coalesced = 0
        self.evictions = 0
        self.inserts = 0
        self.replaced = 0
        self.rejected = 0

    def __len__(self):
        return self.entries

    def hash_key(self, key):
        """The table index of ``key``."""
        if self._hash_fn is None:
            return hash(key)
        return self._hash_fn(key)

    def _find(self, key, h):
        e = self._table.get(h)
        while e is not None:
            if e.key == key:
                return e
            e = e.next
        return None

    # ---------------------------------------------------------------- lookups
    def get(self, key, now, max_age):
        """The stored output for ``key``, or :data:`MISS`; counts a hit or a miss.

        ``max_age`` (seconds, negative = no limit) is the asking app's TTL: an entry stored
        more than ``max_age`` before ``now`` is a miss and stays until overwritten or evicted.
        A hit sets the entry's reference bit.
        """
        e = self._find(key, self.hash_key(key))
        if e is None:
            self.misses += 1
            return MISS
        if max_age >= 0.0 and now - e.stored_at > max_age:
            self.expired += 1
            self.misses += 1
            return MISS
        e.ref = True
        self.hits += 1
        return e.value

    def peek(self, key):
        """The stored output for ``key`` or :data:`MISS`, however old; no counter or reference
        bit changes (for feedback and tests)."""
        e = self._find(key, self.hash_key(key))
        if e is None:
            return MISS
        return e.value

    def lookup_versions(self, model, versions, input_type, input_key):
        """``{version: output}`` for each of ``versions`` of ``model`` that has a cached output
        for this input (``input_key`` as ``inputs.input_key`` makes it).

        This is the feedback join: ``/update`` pairs a label with the prediction each linked
        model version made for the same input.  Read-only, like :meth:`peek`.
        """
        out = {}
        for v in versions:
            val = self.peek(key_prefix(model, v, input_type) + input_key)
            if val is not MISS:
                out[v] = val
        return out

    # ---------------------------------------------------------------- inserts
    def put(self, key, value, now):
        """Store ``value`` (a model's successful output) for ``key``; evict to stay within
        the budget.  An existing entry is overwritten in place (keeping its place in the
        ring).  False when the output alone exceeds the whole budget (nothing changes then).
        """
        size = entry_size(key, value)
        if size > self.capacity:
            self.rejected += 1
            return False
        h = self.hash_key(key)
        e = self._find(key, h)
        if e is not None:
            self.bytes_used += size - e.size
            e.value = value
            e.size = size
            e.stored_at = now
            self.replaced += 1
            while self.bytes_used > self.capacity:
                self._evict_step()
            return True
        while self.bytes_used + size > self.capacity:
            self._evict_step()
        e = Entry(key, h, value, size, now)
        e.next = self._table.get(h)
        self._table[h] = e
        self._fifo.append(e)
        self.bytes_used += size
        self.entries += 1
        self.inserts += 1
        return True

    def _evict_step(self):
        """Move the hand one entry: a second chance for a referenced one, else eviction."""
        fifo = self._fifo
        e = fifo[self._hand]
        fifo[self._hand] = None
        self._hand += 1
        if e.ref:
            e.ref = False
            fifo.append(e)
        else:
            self._unlink(e)
            self.bytes_used -= e.size
            self.entries -= 1
            self.evictions += 1
        if self._hand >= _COMPACT_AT and self._hand * 2 >= len(fifo):
            del fifo[:self._hand]
            self._hand = 0

    def _unlink(self, e):
        head = self._table[e.hash]
        if head is e:
            if e.next is None:
                del self._table[e.hash]
            else:
                self._table[e.hash] = e.next
        else:
            while head.next is not e:
                head = head.next
            head.next = e.next
        e.next = None

    def clear(self):
        """Drop every stored output (flights in progress stay)."""
        self._table = {}
        self._fifo = []
        self._hand = 0
        self.bytes_used = 0
        self.entries = 0

    def drop_version(self, model, version):
        """Drop every stored output of one model version (it was deleted: a new version of
        the same name must never answer from its predecessor's outputs).  Linear in the
        entries held; versions are deleted rarely.  Returns how many were dropped."""
        prefix = (model + "\x00" + version + "\x00").encode("utf-8")
        keep = []
        dropped = 0
        for e in self._fifo[self._hand:]:
            if e.key.startswith(prefix):
                self._unlink(e)
                self.bytes_used -= e.size
                self.entries -= 1
                dropped += 1
            else:
                keep.append(e)
        self._fifo = keep
        self._hand = 0
        return dropped

    def keys(self):
        """Stored keys in ring order, the hand's next candidate first (for tests)."""
        return [e.key for e in self._fifo[self._hand:]]

    # ---------------------------------------------------------------- flights
    def flight(self, key):
        """The :class:`Flight` registered for ``key``, or None."""
        f = self._flights.get(self.hash_key(key))
        while f is not None:
            if f.key == key:
                return f
            f = f.next
        return None

    def start_flight(self, key, query):
        """Register ``query`` as the computation of ``key`` that identical queries join."""
        h = self.hash_key(key)
        f = Flight(key, h, query)
        f.next = self._flights.get(h)
        self._flights[h] = f
        self.in_flight += 1
        return f

    def join(self, f):
        """Count a query that shares the computation of flight ``f`` instead of its own."""
        self.coalesced += 1

    def end_flight(self, f):
        """Remove ``f`` from the table (idempotent)."""
        if not f.active:
            return
        f.active = False
        head = self._flights[f.hash]
        if head is f:
            if f.next is None:
                del self._flights[f.hash]
            else:
                self._flights[f.hash] = f.next
        else:
            while head.next is not f:
                head = head.next
            head.next = f.next
        f.next = None
        self.in_flight -= 1

    def finish(self, f, ok, value, now):
        """Flight ``f`` has its answer: end it and, when ``ok``, store ``value``."""
        self.end_flight(f)
        if ok:
            self.put(f.key, value, now)

    def stats(self):
        """The counters as a dict."""
        return {"hits": self.hits, "misses": self.misses, "expired": self.expired,
                "coalesced": self.coalesced, "evictions": self.evictions,
                "inserts": self.inserts, "replaced": self.replaced, "rejected": self.rejected,
                "bytes_used": self.bytes_used, "capacity_bytes": self.capacity,
                "entries": self.entries, "in_flight": self.in_flight}
