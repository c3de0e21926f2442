"""Scheduler core: queries, the deadline-ordered queue, AIMD batch sizing, admission control
and delayed batching.

Single source of truth, sans-IO, with an injected clock (every time-dependent method takes
``now``).  Built twice: imported as is (the pure twin, ``CLIPPER_PUREPYTHON=1``) and compiled by
Cython as ``_sched_c`` through ``_sched_c.pxd``, which turns these classes into ``cdef class``
types with C fields.  Nothing here logs or awaits: the asyncio glue in ``scheduler.py`` owns
timers, sockets and futures, and reads the counters below as plain attributes.
"""

from heapq import heappop, heappush

INF = float("inf")

#: verdicts of :meth:`Batcher.admit`
ADMIT = 0
#: the queue is at its capacity
FULL = 1
#: the replicas cannot answer this query by its deadline, given the queue ahead of it
LATE = 2


class Query:
    """One query waiting for a prediction.  ``answered`` is set once it has its answer."""

    def __init__(self, query_id, input, arrival, deadline, future):
        self.query_id = query_id
        self.input = input
        self.arrival = arrival
        self.deadline = deadline
        self.future = future
        self.answered = False
        self.dispatches = 0


class DeadlineQueue:
    """Bounded queue of :class:`Query`, earliest deadline first.

    Ties keep arrival order.  Answered queries (given the default output at their deadline,
    or whose client went away) stay until they reach the head and are then dropped, so the
    length counts them until then.  ``expired`` counts the queries whose deadline passed
    while they were queued (whoever answered them); ``late`` those taken out at dispatch
    because the batch would come back after their deadline.
    """

    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self._heap = []
        self._seq = 0
        self.capacity = capacity
        self.pushed = 0
        self.expired = 0
        self.late = 0
        # an upper bound of the queued deadlines (exact after pushes, stale after pops)
        self.max_deadline = -INF
        # a lower bound of the queued arrivals; recomputed lazily once its query has left
        self._oldest = INF
        self._oldest_stale = False

    def __len__(self):
        return len(self._heap)

    def _pushed(self, query):
        if query.deadline > self.max_deadline:
            self.max_deadline = query.deadline
        if query.arrival < self._oldest:
            self._oldest = query.arrival

    def _popped(self, query):
        if not self._heap:
            self.max_deadline = -INF
            self._oldest = INF
            self._oldest_stale = False
        elif query.arrival <= self._oldest:
            self._oldest_stale = True

    def push(self, query):
        """Enqueue; False (and nothing queued) when the queue is full."""
        if len(self._heap) >= self.capacity:
            return False
        self._seq += 1
        heappush(self._heap, (query.deadline, self._seq, query))
        self._pushed(query)
        self.pushed += 1
        return True

    def requeue(self, query):
        """Put back a query that a lost or late replica held; ignores the capacity bound
        (the query was admitted once, so memory stays bounded by queue plus batches)."""
        self._seq += 1
        heappush(self._heap, (query.deadline, self._seq, query))
        self._pushed(query)

    def drop_expired(self, now, expired):
        """Pop answered queries and those whose deadline has passed from the head.

        The unanswered expired ones are appended to ``expired`` (the caller answers them).
        Returns how many entries were popped.
        """
        heap = self._heap
        n = 0
        while heap:
            head = heap[0][2]
            if not head.answered and head.deadline > now:
                break
            heappop(heap)
            self._popped(head)
            n += 1
            if head.deadline <= now:
                self.expired += 1
                if not head.answered:
                    expired.append(head)
        return n

    def pop_batch(self, now, max_size, expired, horizon=-INF, per_query=0.0):
        """Pop up to ``max_size`` live queries in deadline order: only real queries, never
        padding.  Queries whose deadline passed are appended to ``expired`` instead (never
        dispatched), and so are those due by the batch's return (they cannot make it,
        counted in ``late``); answered ones are dropped.

        ``horizon`` is when a batch of ``min(len(self), max_size)`` would come back, and
        ``per_query`` what each query adds to it: every query left out (late, answered)
        makes the batch smaller, and brings its return that much earlier for the ones
        after it.  Reckoned with the batch that was first asked for, the oldest query
        that could still make it would be dropped too."""
        heap = self._heap
        batch = []
        full = len(heap)
        if full > max_size:
            full = max_size
        while heap and len(batch) < max_size:
            q = heappop(heap)[2]
            self._popped(q)
            if q.deadline <= now:
                self.expired += 1
                if not q.answered:
                    expired.append(q)
                continue
            if q.answered:
                continue
            size = len(batch) + 1 + len(heap)
            if size > max_size:
                size = max_size
            if q.deadline <= horizon - per_query * (full - size):
                self.late += 1
                expired.append(q)
            else:
                batch.append(q)
        return batch

    def items(self):
        """The queued queries, in no particular order (for inspection and tests; O(n))."""
        return [entry[2] for entry in self._heap]

    def oldest_arrival(self):
        """Earliest arrival among the queued unanswered queries (``inf`` when none).

        Amortised O(1): a rescan happens only after the oldest query left the queue, which
        is at most once per batch.
        """
        if self._oldest_stale:
            oldest = INF
            for entry in self._heap:
                q = entry[2]
                if not q.answered and q.arrival < oldest:
                    oldest = q.arrival
            self._oldest = oldest
            self._oldest_stale = False
        return self._oldest

    def count_ahead(self, deadline, limit):
        """How many queued entries are served before a query with ``deadline`` (deadline
        order, ties first come), counted up to ``limit``: the result is exact below ``limit``,
        and ``>= limit`` means "at least ``limit``".  Answered entries not yet dropped count.

        O(1) in the usual case (every queued deadline is earlier); otherwise a walk over
        the heap that never descends below a later deadline (heap order), so at most about
        ``2 * limit`` steps.  The walk keeps no stack: from a node that is not counted it
        climbs while it is a right child, then moves to the right sibling.
        """
        heap = self._heap
        n = len(heap)
        if deadline >= self.max_deadline:
            return n
        count = 0
        i = 0
        while True:
            if i < n:
                entry = heap[i]
                d = entry[0]
                if d <= deadline:
                    count += 1
                    if count >= limit:
                        break
                    i = 2 * i + 1
                    continue
            while i > 0 and i % 2 == 0:
                i = (i - 1) // 2
            if i == 0:
                break
            i += 1
        return count


class BatchSizer:
    """One replica's maximum batch size, fixed or tuned by AIMD, and its measured latency.

    AIMD (the Clipper paper's rule): while full batches come back under the budget, add
    ``step``; when a batch overruns its budget, multiply by ``backoff``.  A batch that was not
    full says nothing about a larger size, so it never grows the size.  AIMD judges a batch
    by what the model cost: the compute time the container reported with the result when it
    did, else the round trip.  The round trip also holds the frontend's own delays (CPU
    contention, a busy event loop), and shrinking batches for those lowers throughput just
    when the frontend needs it most; admission control still reckons with the round trip.  ``expected()`` (the
    measured latency as a function of batch size), ``busy_until`` and ``available`` are what
    admission control reads; ``latency`` is the exponentially weighted mean latency.
    """

    def __init__(self, fixed_max, initial, step, backoff, budget, cap):
        self.increases = 0
        self.decreases = 0
        self.batches = 0
        self.latency = 0.0
        # exponentially decayed sums of (size, latency) samples: a line fitted through them
        # predicts the latency of a batch of another size (see expected())
        self._w = 0.0
        self._sn = 0.0
        self._sl = 0.0
        self._snn = 0.0
        self._snl = 0.0
        self.busy_until = 0.0
        self.available = True
        #: the part of a round trip that is not the model's compute (transfer both ways,
        #: encoding, the event loops), s; -1.0 until measured (see observe's ``rtt``)
        self.lead = -1.0
        if budget <= 0.0:
            raise ValueError("the latency budget must be positive")
        self.budget = budget
        self.current = 1
        self.reconfigure(fixed_max, step, backoff, cap)
        if not self.fixed:
            self.current = max(1, min(initial, self.cap))

    def reconfigure(self, fixed_max, step, backoff, cap):
        """Change the rule at run time.  The learned size carries over, within the new cap;
        a fixed size takes effect at once."""
        if fixed_max == 0 or fixed_max < -1:
            raise ValueError("fixed_max must be -1 (adaptive) or a positive batch size")
        if step < 1 or not 0.0 < backoff < 1.0 or cap < 1:
            raise ValueError("AIMD needs step >= 1, 0 < backoff < 1 and cap >= 1")
        self.fixed = fixed_max > 0
        self.cap = fixed_max if fixed_max > 0 else cap
        self.step = step
        self.backoff = backoff
        if self.fixed or self.current > self.cap:
            self.current = self.cap

    def observe(self, batch_size, latency, budget=-1.0, compute=-1.0, rtt=-1.0):
        """Feed back one completed batch of ``batch_size`` queries that took ``latency`` s
        (what it cost the replica) against ``budget`` s (the sizer's last budget when not
        given); ``compute`` is the model's own time for it as the container reported it
        (negative: not reported), and what AIMD goes by when given.  ``rtt``: the round trip
        of a batch that found the replica idle (negative: not known); with ``compute`` it
        measures ``lead``."""
        if budget > 0.0:
            self.budget = budget
        if rtt >= 0.0 and compute >= 0.0:
            gap = rtt - compute
            if gap < 0.0:
                gap = 0.0
            if self.lead < 0.0:
                self.lead = gap
            else:
                self.lead += 0.2 * (gap - self.lead)
        self.batches += 1
        if self.batches == 1:
            self.latency = latency
        else:
            self.latency += 0.2 * (latency - self.latency)
        # one stall (a descheduled process, a GC pause) must not throw the line off for the
        # next ten batches: a sample counts at most 4x what the line expected
        sample = latency
        if self._w > 0.0:
            cap = 4.0 * self.expected(batch_size)
            if sample > cap:
                sample = cap
        self._w = 0.9 * self._w + 1.0
        self._sn = 0.9 * self._sn + batch_size
        self._sl = 0.9 * self._sl + sample
        self._snn = 0.9 * self._snn + batch_size * batch_size
        self._snl = 0.9 * self._snl + batch_size * sample
        if self.fixed:
            return
        cost = compute if compute >= 0.0 else latency
        if cost > self.budget:
            self._decrease()
        elif batch_size >= self.current and self.current < self.cap:
            self.current = min(self.cap, self.current + self.step)
            self.increases += 1

    def expected(self, batch_size):
        """Predicted latency (s) of a batch of ``batch_size``; 0.0 before any measurement.

        A least-squares line through the recent (size, latency) samples, weighted towards the
        latest.  When they all had one size there is no slope to go by, and the latency is
        taken as measured, whatever the size: a cautious guess (proportional to size) would
        shed the larger batches that could correct it, and stay wrong; an optimistic one is
        corrected by the next batch.
        """
        if self._w <= 0.0:
            return 0.0
        mn = self._sn / self._w
        ml = self._sl / self._w
        var = self._snn / self._w - mn * mn
        if var > 1e-6 * (mn * mn + 1.0):
            slope = (self._snl / self._w - mn * ml) / var
            if slope < 0.0:
                slope = 0.0
            est = ml + slope * (batch_size - mn)
        else:
            est = ml
        floor = 0.1 * ml if ml > 1e-5 else 1e-6  # never zero: callers divide by it
        return est if est > floor else floor

    def fixed_share(self):
        """The share of a batch's expected latency at the current size that a batch of one
        takes too (1.0: a fixed cost per batch; near 0: a cost per query); 0.0 before any
        measurement."""
        full = self.expected(self.current)
        if full <= 0.0:
            return 0.0
        return self.expected(1) / full

    def overrun(self):
        """A batch missed its RPC timeout: back off as for an overrun, without a sample."""
        if not self.fixed:
            self._decrease()

    def _decrease(self):
        new = int(self.current * self.backoff)
        self.current = new if new >= 1 else 1
        self.decreases += 1


#: the share of a batch's room that :meth:`Batcher.dispatch_at` may expect to stay empty and
#: still wait for the rest
FILL_SLACK = 0.15


class Batcher:
    """Batching decisions for one model version: admission, delayed batching, batch budget.

    ``sizers`` arguments are the :class:`BatchSizer` of every replica of the version; the
    unavailable ones (suspect, draining) are skipped.
    """

    def __init__(self, capacity, batch_wait, budget_fraction):
        self.queue = DeadlineQueue(capacity)
        self.batch_wait = 0.0
        self.budget_fraction = 0.5
        self.configure(batch_wait, budget_fraction)
        #: a replica idle this long (s), and for 10 of its batch latencies, has a stale
        #: measurement: admit, and let it measure again
        self.probe_after = 1.0
        self.admitted = 0
        self.shed_late = 0
        self.shed_full = 0
        self.last_budget = 0.0
        self.last_latest = 0.0
        self.last_arrivals = 0.0
        self.last_horizon = 0.0
        self.last_ahead = 0
        self.last_capacity = 0
        #: queries taken into batches and not yet back (answered, failed, timed out or lost):
        #: the glue reports their return with :meth:`returned`
        self.in_flight = 0
        #: what dispatch_at reads about demand, over the current and the previous window of
        #: ``window`` s: ``population()``, the most queries seen in the system at once
        #: (queued + in flight; a closed loop of c users never has more than c), and
        #: ``arrival_rate(now)``, admitted queries per second
        self.window = 0.25
        self._window_end = -INF
        self._pop_cur = 0
        self._pop_prev = 0
        self._arrivals_cur = 0
        self._arrivals_prev = 0
        #: the queries of the batch answered last, at ``_returned_at``, and the arrivals
        #: since (those within ``batch_wait`` in ``_came_back``); ``comeback``: the share of
        #: answered queries followed by an arrival within ``batch_wait`` or before the next
        #: answer (EWMA): about 1 in a closed loop, whose answered users ask again a
        #: turnaround later, together; about the arrival rate times ``batch_wait`` in a
        #: light open loop
        self._returned_n = 0
        self._returned_at = -INF
        self._since_return = 0
        self._came_back = 0
        self.comeback = 1.0
        #: how the answered users ask again: the first after ``refill_delay`` s, the others
        #: ``refill`` s apart (-1.0 until measured; the frontend answers and reads them one
        #: by one), from the arrivals after an answer until as many came as it answered, or
        #: until the next answer: sums over recent answers (decayed), so that a ms-grained
        #: clock averages out.  A closed loop's users all ask again in about
        #: ``refill_delay + refill * population()``.
        self.refill = -1.0
        self.refill_delay = 0.0
        self._refill_open = False
        self._first_at = 0.0
        self._last_at = 0.0
        self._gap_s = 0.0
        self._gap_n = 0.0
        self._delay_s = 0.0
        self._delay_n = 0.0
        #: how many batches dispatch_at let go before their wait bound because waiting could
        #: not fill them, and how many it held back
        self.early = 0
        self.held = 0

    def configure(self, batch_wait, budget_fraction):
        if batch_wait < 0.0:
            raise ValueError("batch_wait must be >= 0")
        if not 0.0 < budget_fraction <= 1.0:
            raise ValueError("budget_fraction must be in (0, 1]")
        self.batch_wait = batch_wait
        self.budget_fraction = budget_fraction

    def _fresh(self, s, now):
        """Whether the replica of ``s`` has a latency measurement recent enough to judge by
        (a model that was slow once must not be shed for ever)."""
        if not s.batches:
            return False
        stale = 10.0 * s.latency
        if stale < self.probe_after:
            stale = self.probe_after
        return now - s.busy_until <= stale

    def capacity_by(self, deadline, now, sizers):
        """How many queries the available replicas can answer by ``deadline``, from their
        batch sizes, measured batch latencies and current work; -1 when unknown (no
        available replica, or one without a fresh latency: none measured yet, or idle for
        long, see ``_fresh``)."""
        total = 0
        known = False
        for s in sizers:
            if not s.available:
                continue
            if not self._fresh(s, now):
                return -1
            start = s.busy_until if s.busy_until > now else now
            if deadline > start:
                full = s.expected(s.current)
                rounds = (deadline - start) / full
                if rounds > 1e9:
                    rounds = 1e9
                whole = int(rounds)
                total += s.current * whole
                # the time left after the full batches still fits a smaller one: the queue
                # ahead need not be a multiple of the batch size (at 1x load it rarely is)
                if whole < 1e9:
                    total += self._partial(s, deadline - start - whole * full)
            known = True
        return total if known else -1

    def _partial(self, s, left):
        """The largest batch (< ``s.current``) the replica of ``s`` answers within ``left``
        seconds, by its measured latency line; 0 when not even one query fits."""
        lo = 0
        hi = s.current - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if s.expected(mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _fits_one_batch(self, deadline, now, sizers):
        """Whether an idle replica can take the whole queue and one more in its next batch,
        and answer by ``deadline``: then that batch is smaller than the full batches
        ``capacity_by`` reckons with (a query whose SLO is tighter than the one the batch
        size was tuned for, at light load)."""
        n = len(self.queue) + 1
        for s in sizers:
            if (s.available and s.busy_until <= now and s.current >= n
                    and self._fresh(s, now) and now + s.expected(n) <= deadline):
                return True
        return False

    def admit(self, q, now, sizers, expired):
        """Queue ``q`` or say why not: :data:`ADMIT`, :data:`FULL` or :data:`LATE`.

        LATE means the queries served before ``q`` (earlier deadlines) fill every batch the
        replicas can finish by ``q.deadline``, so ``q`` would miss it.  Expired queries
        dropped on the way go to ``expired``.
        """
        queue = self.queue
        if len(queue) >= queue.capacity:
            queue.drop_expired(now, expired)
            if len(queue) >= queue.capacity:
                self.shed_full += 1
                return FULL
        cap = self.capacity_by(q.deadline, now, sizers)
        if cap >= 0 and len(queue) >= cap:  # fewer queued than that: nothing to count
            ahead = queue.count_ahead(q.deadline, cap)
            if ahead >= cap and not self._fits_one_batch(q.deadline, now, sizers):
                self.last_ahead = ahead
                self.last_capacity = cap
                self.shed_late += 1
                return LATE
        queue.push(q)
        self.admitted += 1
        self._roll(now)
        self._arrivals_cur += 1
        self._since_return += 1
        if now - self._returned_at < self.batch_wait:
            self._came_back += 1
        if self._refill_open:
            if self._since_return == 1:
                self._first_at = now
            self._last_at = now
            if self._since_return >= self._returned_n:
                self._time_refill()
        n = len(queue) + self.in_flight
        if n > self._pop_cur:
            self._pop_cur = n
        return ADMIT

    def _roll(self, now):
        if now >= self._window_end:
            self._pop_prev = self._pop_cur
            self._pop_cur = len(self.queue) + self.in_flight
            self._arrivals_prev = self._arrivals_cur if now < self._window_end + self.window else 0
            self._arrivals_cur = 0
            self._window_end = now + self.window

    def population(self):
        """The most queries recently in the system at once (queued + in flight)."""
        return self._pop_cur if self._pop_cur > self._pop_prev else self._pop_prev

    def arrival_rate(self, now):
        """Admitted queries per second over the current and the previous window."""
        span = now - (self._window_end - 2.0 * self.window)
        if span <= 0.0:
            return 0.0
        return (self._arrivals_cur + self._arrivals_prev) / span

    def returned(self, n, now):
        """``n`` queries of a batch came back from a replica at ``now`` (or will not: its
        timeout, its loss); they no longer count as in flight."""
        self.in_flight -= n
        if self.in_flight < 0:
            self.in_flight = 0
        if self._returned_n > 0:
            share = self._came_back / self._returned_n
            self.comeback += 0.2 * ((share if share < 1.0 else 1.0) - self.comeback)
        if self._refill_open and self._since_return > 0:
            self._time_refill()
        self._refill_open = n > 0
        self._returned_n = n
        self._came_back = 0
        self._returned_at = now
        self._since_return = 0

    def _time_refill(self):
        self._refill_open = False
        self._delay_s = 0.8 * self._delay_s + (self._first_at - self._returned_at)
        self._delay_n = 0.8 * self._delay_n + 1.0
        self.refill_delay = self._delay_s / self._delay_n
        if self._since_return > 1:
            self._gap_s = 0.8 * self._gap_s + (self._last_at - self._first_at)
            self._gap_n = 0.8 * self._gap_n + (self._since_return - 1)
            self.refill = self._gap_s / self._gap_n

    def _one_round(self, cost):
        """Whether all the users ask again (:attr:`refill`) within ``cost``,
        the replica's time for a batch (assumed while either is not known, 0.0): then
        the answered users are worth waiting for, to join the waiting ones in one batch
        before the replica could have finished another.  Users slower to ask again than
        that (many of them, or a busy frontend) are served in turns instead: while the
        replica computes one group's batch, the frontend answers the other group and reads
        its next queries, and the replica never waits for them."""
        return self.refill < 0.0 or cost <= 0.0 or (
            self.refill_delay + self.refill * self.population() < cost)

    def dispatch_at(self, now, size, busy=False, free_since=-INF, lead=-1.0, fixed_share=0.0,
                    cost=0.0):
        """When to send the next batch of at most ``size`` to a replica (``busy``: one that
        still works on a batch and is expected to answer at ``free_since``; else free since
        ``free_since``): ``now``, or a later time to wait until for the batch to fill, never
        later than ``batch_wait`` after the oldest queued query's arrival or after the
        replica became free, whichever is later (a query that waited for a busy replica has
        not waited for company).

        A busy replica gets its next batch just in time: ``lead`` (its measured transfer
        time, :attr:`BatchSizer.lead`) before it answers, so that the batch reaches it as it
        frees up, and holds the queries that came until then.  Sent earlier, the batch would
        wait there, its queries' deadlines running, while queries arriving meanwhile are
        shed for want of room (with a model whose batch takes half the SLO, pipelining
        early halves the batches and the goodput).  From that time on it is decided as for
        a free replica.  Without a measured ``lead`` (a container that does not report its
        compute time), a busy replica gets only a full batch, at once, and otherwise waits
        for its answer (``inf``); so it does when most answered queries come back within
        ``batch_wait`` (``comeback``), ``fixed_share`` (:meth:`BatchSizer.fixed_share`) is
        at least a half, and the users come back in one round (:meth:`_one_round` of
        ``cost``, the replica's expected time for a full batch).

        A query is never held back when waiting cannot fill the batch.  What can still come
        is read from what was observed: at most ``population() - in_flight`` queries can be
        queued at once (a closed loop of c users sends no more until answered: once every
        one of them waits, the batch is as full as it gets; users who do not come back in
        one round are served in two turns, half of them per batch); of those, the users
        answered within the last ``batch_wait`` who have not asked again yet are expected
        back shortly (their ``comeback`` share), and others come at the observed arrival
        rate, about ``arrival_rate() * (end - now)`` before the wait would end.  Nor is a
        query held back, when queries come on their own (``comeback`` under a half), once
        more are queued than come during the batch's fixed cost (``fixed_share * cost``, a
        batch of one's expected time): waiting then costs the replica more than it fills.
        """
        queue = self.queue
        n = len(queue)
        if not n:
            return now
        if busy:
            if lead < 0.0 or (n < size and self.comeback >= 0.5 and fixed_share >= 0.5
                              and self._one_round(cost)):
                # a second batch in flight keeps the replica busy, but only a full one: a
                # partial one would split the queries that could still go together.  Also
                # when the answered come back at once (a closed loop of users) to a model
                # whose batch costs about the same whatever its size, sooner than the
                # replica could finish a batch: its answer's users then join these in one
                # batch, where pipelining would keep two half batches taking turns for
                # good (a third of the throughput at 16 users)
                return now if n >= size else INF
            free_since -= lead
            if free_since > now:
                return free_since
        if n >= size:
            return now
        if self.batch_wait <= 0.0:
            return now
        self._roll(now)
        pop = self.population()
        target = pop - self.in_flight
        if target > pop // 2 and self.comeback >= 0.5 and not self._one_round(cost):
            # users who come back in turns: half of them make a batch, the other half the
            # next one, pipelined behind it
            target = pop // 2
        if target > size:
            target = size
        if n >= target:
            self.early += 1
            return now
        rate = self.arrival_rate(now)
        if self.comeback < 0.5 and cost > 0.0 and n >= rate * fixed_share * cost:
            # queries that come on their own (an open loop): a wait of w for rate * w more
            # pays only while fewer are queued than come during the batch's fixed cost (the
            # expected time of a batch of one).  With a cost a + b * n per batch of n, the
            # rate (n + rate * w) / (w + a + b * (n + rate * w)) beats n / (a + b * n) just
            # when n < rate * a: past it, the replica waiting loses more than the larger
            # batch gains
            self.early += 1
            return now
        end = queue.oldest_arrival()
        if free_since > end:
            end = free_since
        end += self.batch_wait
        if end <= now:
            return now
        more = rate * (end - now)
        if now - self._returned_at < self.batch_wait:
            back = self.comeback * self._returned_n - self._since_return
            if back > more:
                more = back
        # what is expected is inexact (``comeback`` is a mean): a batch a few queries short
        # of full (FILL_SLACK of it, whole queries) counts as filled; else the first of 16
        # users to come back would go alone, and a batch of one would take turns with the
        # other 15 for good
        if n + more < target - int(FILL_SLACK * target) - 1e-6:
            self.early += 1
            return now
        self.held += 1
        return end

    def take(self, now, sizer, expired):
        """Pop the next batch for the replica of ``sizer``: at most ``sizer.current`` live
        queries, in deadline order, and count one more dispatch of each; they are in flight
        until :meth:`returned`.

        Queries the batch cannot answer in time (deadline passed, or due before the batch's
        expected return) go to ``expired`` instead.  Sets ``last_budget``,
        ``budget_fraction`` of the tightest SLO in the batch: the time the batch may take
        (queueing and transfer need the rest); ``last_latest``, its latest deadline;
        ``last_arrivals``, the sum of its arrivals; ``last_horizon``, the expected return.
        """
        size = sizer.current
        horizon = now
        per_query = 0.0
        if self._fresh(sizer, now):
            n = len(self.queue)
            if n > size:
                n = size
            full = sizer.expected(n)
            horizon = (sizer.busy_until if sizer.busy_until > now else now) + full
            if n > 1:
                per_query = full - sizer.expected(n - 1)
        self.last_horizon = horizon
        batch = self.queue.pop_batch(now, size, expired, horizon, per_query)
        self.in_flight += len(batch)
        if batch:
            slo = INF
            latest = -INF
            arrivals = 0.0
            for q in batch:
                q.dispatches += 1
                arrivals += q.arrival
                if q.deadline - q.arrival < slo:
                    slo = q.deadline - q.arrival
                if q.deadline > latest:
                    latest = q.deadline
            self.last_budget = self.budget_fraction * slo
            self.last_latest = latest
            self.last_arrivals = arrivals
        return batch
