# Augmenting declarations for _sched_c.py, a build-time copy of _sched_py.py (see setup.py):
# the classes become extension types with C fields; @cython.locals types the hot loops.

cimport cython

cdef double INF


cdef class Query:
    cdef public object query_id
    cdef public object input
    cdef public double arrival
    cdef public double deadline
    cdef public object future
    cdef public bint answered
    cdef public int dispatches

cdef class DeadlineQueue:
    cdef list _heap
    cdef unsigned long long _seq
    cdef public Py_ssize_t capacity
    cdef public unsigned long long pushed
    cdef public unsigned long long expired
    cdef public unsigned long long late
    cdef public double max_deadline
    cdef double _oldest
    cdef bint _oldest_stale

    cdef void _pushed(self, Query query)
    cdef void _popped(self, Query query)
    cpdef bint push(self, Query query)
    cpdef requeue(self, Query query)
    @cython.locals(head=Query, n=Py_ssize_t)
    cpdef Py_ssize_t drop_expired(self, double now, list expired)
    @cython.locals(q=Query, batch=list, full=Py_ssize_t, size=Py_ssize_t)
    cpdef list pop_batch(self, double now, Py_ssize_t max_size, list expired,
                         double horizon=*, double per_query=*)
    cpdef list items(self)
    @cython.locals(q=Query, oldest=double)
    cpdef double oldest_arrival(self)
    @cython.locals(n=Py_ssize_t, count=Py_ssize_t, i=Py_ssize_t, heap=list, entry=tuple,
                   d=double)
    cpdef Py_ssize_t count_ahead(self, double deadline, Py_ssize_t limit)

cdef class BatchSizer:
    cdef public bint fixed
    cdef public long cap
    cdef public long current
    cdef public long step
    cdef public double backoff
    cdef public double budget
    cdef public double latency
    cdef public double busy_until
    cdef public bint available
    cdef public unsigned long long increases
    cdef public unsigned long long decreases
    cdef public unsigned long long batches
    cdef public double lead
    cdef double _w, _sn, _sl, _snn, _snl

    cpdef reconfigure(self, long fixed_max, long step, double backoff, long cap)
    @cython.locals(sample=double, cap=double, cost=double, gap=double)
    cpdef observe(self, long batch_size, double latency, double budget=*, double compute=*,
                  double rtt=*)
    @cython.locals(mn=double, ml=double, var=double, slope=double, est=double, floor=double)
    cpdef double expected(self, long batch_size)
    @cython.locals(full=double)
    cpdef double fixed_share(self)
    cpdef overrun(self)
    @cython.locals(new=long)
    cdef void _decrease(self)

cdef class Batcher:
    cdef public DeadlineQueue queue
    cdef public double batch_wait
    cdef public double budget_fraction
    cdef public double probe_after
    cdef public unsigned long long admitted
    cdef public unsigned long long shed_late
    cdef public unsigned long long shed_full
    cdef public double last_budget
    cdef public double last_latest
    cdef public double last_arrivals
    cdef public double last_horizon
    cdef public Py_ssize_t last_ahead
    cdef public Py_ssize_t last_capacity
    cdef public Py_ssize_t in_flight
    cdef public double window
    cdef double _window_end
    cdef Py_ssize_t _pop_cur, _pop_prev, _arrivals_cur, _arrivals_prev
    cdef Py_ssize_t _returned_n, _since_return, _came_back
    cdef double _returned_at
    cdef public double comeback
    cdef public double refill
    cdef public double refill_delay
    cdef bint _refill_open
    cdef double _first_at, _last_at, _gap_s, _gap_n, _delay_s, _delay_n
    cdef public unsigned long long early
    cdef public unsigned long long held

    cpdef configure(self, double batch_wait, double budget_fraction)
    @cython.locals(stale=double)
    cdef bint _fresh(self, BatchSizer s, double now)
    @cython.locals(s=BatchSizer, total=Py_ssize_t, known=bint, start=double, rounds=double,
                   whole=Py_ssize_t, full=double)
    cpdef Py_ssize_t capacity_by(self, double deadline, double now, list sizers)
    @cython.locals(lo=long, hi=long, mid=long)
    cdef long _partial(self, BatchSizer s, double left)
    @cython.locals(s=BatchSizer, n=Py_ssize_t)
    cdef bint _fits_one_batch(self, double deadline, double now, list sizers)
    @cython.locals(queue=DeadlineQueue, cap=Py_ssize_t, ahead=Py_ssize_t, n=Py_ssize_t)
    cpdef int admit(self, Query q, double now, list sizers, list expired)
    cdef void _roll(self, double now)
    cpdef Py_ssize_t population(self)
    @cython.locals(span=double)
    cpdef double arrival_rate(self, double now)
    @cython.locals(share=double)
    cpdef returned(self, Py_ssize_t n, double now)
    cdef void _time_refill(self)
    cdef bint _one_round(self, double cost)
    @cython.locals(queue=DeadlineQueue, n=Py_ssize_t, target=Py_ssize_t, pop=Py_ssize_t,
                   end=double, more=double, back=double, rate=double)
    cpdef double dispatch_at(self, double now, Py_ssize_t size, bint busy=*,
                             double free_since=*, double lead=*, double fixed_share=*,
                             double cost=*)
    @cython.locals(q=Query, slo=double, latest=double, arrivals=double, batch=list,
                   size=Py_ssize_t, n=Py_ssize_t, horizon=double, per_query=double,
                   full=double)
    cpdef list take(self, double now, BatchSizer sizer, list expired)
