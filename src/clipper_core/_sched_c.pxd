# Augmenting declarations for _sched_c.py, a build-time copy of _sched_py.py (see setup.py).

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

    cpdef bint push(self, Query query)
    cpdef requeue(self, Query query)
    cpdef Py_ssize_t drop_expired(self, double now, list expired)
    cpdef object live_head(self, double now)
    cpdef list pop_batch(self, double now, Py_ssize_t max_size, list expired)
    cpdef double head_arrival(self)

cdef class BatchSizer:
    cdef public bint fixed
    cdef public long cap
    cdef public long current
    cdef public long step
    cdef public double backoff
    cdef public double budget
    cdef public unsigned long long increases
    cdef public unsigned long long decreases

    cpdef observe(self, long batch_size, double latency)
