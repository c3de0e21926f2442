# Augmenting declarations for _cache_c.py, a build-time copy of _cache_py.py (see setup.py).

cimport cython

cdef Py_ssize_t _OVERHEAD
cdef Py_ssize_t _FLOAT_SIZE
cdef Py_ssize_t _BYTES_HEADER

cdef Py_ssize_t _alloc(Py_ssize_t n) noexcept
cdef Py_ssize_t _COMPACT_AT

cpdef bytes key_prefix(str model, str version, str input_type)

@cython.locals(n=Py_ssize_t, stack=list)
cpdef Py_ssize_t output_size(object value) except -1
cpdef Py_ssize_t entry_size(bytes key, object value) except -1

cdef class Entry:
    cdef readonly bytes key
    cdef readonly Py_hash_t hash
    cdef readonly object value
    cdef readonly Py_ssize_t size
    cdef readonly double stored_at
    cdef readonly bint ref
    cdef Entry next

cdef class Flight:
    cdef readonly bytes key
    cdef readonly Py_hash_t hash
    cdef public object query
    cdef readonly bint active
    cdef Flight next

cdef class PredictionCache:
    cdef dict _table
    cdef dict _flights
    cdef list _fifo
    cdef Py_ssize_t _hand
    cdef object _hash_fn
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t bytes_used
    cdef readonly Py_ssize_t entries
    cdef readonly Py_ssize_t in_flight
    cdef readonly unsigned long long hits
    cdef readonly unsigned long long misses
    cdef readonly unsigned long long expired
    cdef readonly unsigned long long coalesced
    cdef readonly unsigned long long evictions
    cdef readonly unsigned long long inserts
    cdef readonly unsigned long long replaced
    cdef readonly unsigned long long rejected

    cpdef Py_hash_t hash_key(self, bytes key) except? -1
    @cython.locals(e=Entry)
    cdef Entry _find(self, bytes key, Py_hash_t h)
    @cython.locals(e=Entry)
    cpdef object get(self, bytes key, double now, double max_age)
    @cython.locals(e=Entry)
    cpdef object peek(self, bytes key)
    @cython.locals(out=dict)
    cpdef dict lookup_versions(self, str model, list versions, str input_type, bytes input_key)
    @cython.locals(e=Entry, size=Py_ssize_t, h=Py_hash_t)
    cpdef bint put(self, bytes key, object value, double now) except -1
    @cython.locals(e=Entry, fifo=list)
    cdef int _evict_step(self) except -1
    @cython.locals(head=Entry)
    cdef int _unlink(self, Entry e) except -1
    cpdef clear(self)
    @cython.locals(e=Entry, keep=list, dropped=Py_ssize_t, prefix=bytes)
    cpdef Py_ssize_t drop_version(self, str model, str version) except -1
    cpdef list keys(self)
    @cython.locals(f=Flight)
    cpdef Flight flight(self, bytes key)
    @cython.locals(f=Flight, h=Py_hash_t)
    cpdef Flight start_flight(self, bytes key, object query)
    cpdef join(self, Flight f)
    @cython.locals(head=Flight)
    cpdef end_flight(self, Flight f)
    cpdef finish(self, Flight f, bint ok, object value, double now)
    cpdef dict stats(self)
