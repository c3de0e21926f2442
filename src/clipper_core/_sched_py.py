"""Scheduler core: queries, the deadline-ordered queue and the batch sizer.

Single source of truth, sans-IO, with an injected clock (every method takes ``now``).  Built
twice: imported as is (the pure twin) and compiled by Cython as ``_sched_c`` through
``_sched_c.pxd``, which turns these classes into ``cdef class`` types with C fields.
"""

import heapq


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
    or whose client went away) are dropped lazily when they reach the head.
    """

    def __init__(self, capacity):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self._heap = []
        self._seq = 0
        self.capacity = capacity
        self.pushed = 0
        self.expired = 0

    def __len__(self):
        return len(self._heap)

    def push(self, query):
        """Enqueue; False (and nothing queued) when the queue is full."""
        if len(self._heap) >= self.capacity:
            return False
        self._seq += 1
        heapq.heappush(self._heap, (query.deadline, self._seq, query))
        self.pushed += 1
        return True

    def requeue(self, query):
        """Put back a query that a lost replica held; ignores the capacity bound."""
        self._seq += 1
        heapq.heappush(self._heap, (query.deadline, self._seq, query))

    def drop_expired(self, now, expired):
        """Pop answered queries and those whose deadline has passed from the head.

        The unanswered expired ones are appended to ``expired``.  Returns how many were popped.
        """
        heap = self._heap
        n = 0
        while heap:
            head = heap[0][2]
            if not head.answered and head.deadline > now:
                break
            heapq.heappop(heap)
            n += 1
            if not head.answered:
                expired.append(head)
                self.expired += 1
        return n

    def live_head(self, now):
        """The earliest-deadline unanswered, unexpired query, or None (pops dead heads)."""
        expired = []
        self.drop_expired(now, expired)
        for q in expired:
            q.answered = True
        return self._heap[0][2] if self._heap else None

    def pop_batch(self, now, max_size, expired):
        """Pop up to ``max_size`` live queries in deadline order.

        Queries whose deadline passed are appended to ``expired`` instead (never dispatched).
        """
        heap = self._heap
        batch = []
        while heap and len(batch) < max_size:
            q = heapq.heappop(heap)[2]
            if q.answered:
                continue
            if q.deadline <= now:
                expired.append(q)
                self.expired += 1
                continue
            batch.append(q)
        return batch

    def head_arrival(self):
        """Arrival time of the query at the head, or -1.0 when empty."""
        if not self._heap:
            return -1.0
        return self._heap[0][2].arrival


class BatchSizer:
    """Maximum batch size of one replica: fixed, or tuned by AIMD against a latency budget.

    AIMD (the Clipper paper's rule): while a full batch comes back under ``budget`` seconds,
    add ``step``; when a batch overruns the budget, multiply by ``backoff``.
    """

    def __init__(self, fixed_max, initial, step, backoff, budget, cap):
        if fixed_max == 0 or fixed_max < -1:
            raise ValueError("fixed_max must be -1 (adaptive) or a positive batch size")
        if step < 1 or not 0.0 < backoff < 1.0 or cap < 1 or budget <= 0.0:
            raise ValueError("AIMD needs step >= 1, 0 < backoff < 1, cap >= 1, budget > 0")
        self.fixed = fixed_max > 0
        self.cap = fixed_max if fixed_max > 0 else cap
        self.current = fixed_max if fixed_max > 0 else max(1, min(initial, cap))
        self.step = step
        self.backoff = backoff
        self.budget = budget
        self.increases = 0
        self.decreases = 0

    def observe(self, batch_size, latency):
        """Feed back one completed batch of ``batch_size`` queries taking ``latency`` s."""
        if self.fixed:
            return
        if latency > self.budget:
            new = int(self.current * self.backoff)
            self.current = new if new >= 1 else 1
            self.decreases += 1
        elif batch_size >= self.current and self.current < self.cap:
            self.current = min(self.cap, self.current + self.step)
            self.increases += 1
