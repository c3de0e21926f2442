"""One-shot alarms for the scheduler and the query deadlines.

:class:`Alarm` keeps one timer for the earliest of the times it is armed for.  On a real
event loop it runs on a Linux ``timerfd`` that the loop watches (:class:`PreciseAlarm`):
uvloop's own timers count whole milliseconds from the start of the loop's iteration, so a
timer armed for ``t`` ran anywhere from half a millisecond before ``t`` to a millisecond
after it.  That is as coarse as a fast model's batch; for a busy replica's next batch,
sent just in time (:meth:`~clipper_core.scheduler.Scheduler._dispatch`), every
millisecond it goes early is a millisecond its queries' deadlines lose, and every one it
goes late, one the replica sits idle.  A timerfd wakes the loop within tens of
microseconds of its time (kernel timers on a timerfd have no slack).

Where there is no timerfd (not Linux), or on a loop without readers (a test's virtual
clock), :func:`new_alarm` gives the plain ``loop.call_at`` one.  Python 3.13 has
``os.timerfd_create``; on 3.11 it is two libc calls through ctypes, once per arming.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import weakref
from typing import Any, Callable

from . import log

_CLOCK_MONOTONIC = 1  # time.monotonic's clock, which clipper_core.clock.now reads
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    if not hasattr(os, "O_CLOEXEC"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    create.restype = ctypes.c_int
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                        ctypes.c_void_p]
    settime.restype = ctypes.c_int
    return libc


_LIBC = _libc()
#: whether alarms can run on a timerfd here
PRECISE = _LIBC is not None


class Alarm:
    """One timer for the earliest of the times it is armed for (armed again only for an
    earlier one), on ``loop.call_at``."""

    __slots__ = ("handle", "at")

    def __init__(self) -> None:
        self.handle: Any = None
        self.at = 0.0

    def arm(self, loop: Any, when: float, callback: Callable[..., None], *args: Any) -> None:
        if self.handle is not None:
            # (compare with our own copy of the time: uvloop's call_at returns a plain Handle,
            # without when(), for a time already past)
            if self.at <= when:
                return
            self.handle.cancel()
        self.at = when
        self.handle = loop.call_at(when, callback, *args)

    @property
    def armed(self) -> bool:
        return self.handle is not None

    def fired(self) -> float:
        """The timer fired: returns the time it was armed for (come, even where the clock
        reads a little earlier: a timer may run before its time, see
        Scheduler._dispatch)."""
        self.handle = None
        return self.at

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def close(self) -> None:
        self.cancel()


def _on_ready(ref: "weakref.ref[PreciseAlarm]") -> None:
    alarm = ref()
    if alarm is not None:
        alarm._ready()


def _release(loop: Any, fd: int) -> None:
    try:
        loop.remove_reader(fd)
    except Exception:  # the loop is closed already
        pass
    os.close(fd)


_PLAIN = -2  # PreciseAlarm.fd of one that runs on loop.call_at (no timerfd to be had)
_FAR = 1e15  # s: the latest time an alarm is armed for (about 31 million years of uptime)


class PreciseAlarm(Alarm):
    """:class:`Alarm` on a timerfd the loop watches (the first arming creates it; ``close``
    or the alarm's collection closes it)."""

    __slots__ = ("fd", "callback", "args", "_spec", "_finalizer", "__weakref__")

    def __init__(self) -> None:
        super().__init__()
        self.fd = -1
        self.callback: Callable[..., None] | None = None
        self.args: tuple = ()
        self._spec = _Itimerspec()
        self._finalizer: Any = None

    def arm(self, loop: Any, when: float, callback: Callable[..., None], *args: Any) -> None:
        if self.fd == _PLAIN:
            return Alarm.arm(self, loop, when, callback, *args)
        if self.handle is not None and self.at <= when:
            return
        if self.fd < 0:
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd < 0:  # out of descriptors, say: the loop's own timer still does the job
                log.server.warning("no timerfd for an alarm (%s): it runs on the event "
                                   "loop's millisecond timers", os.strerror(ctypes.get_errno()))
                self.fd = _PLAIN
                return Alarm.arm(self, loop, when, callback, *args)
            loop.add_reader(fd, _on_ready, weakref.ref(self))
            self.fd = fd
            self._finalizer = weakref.finalize(self, _release, loop, fd)
        if when > _FAR:
            when = _FAR  # (inf: no integer seconds; a timerfd takes any time up to this)
        self.at = when
        self.callback, self.args = callback, args
        self.handle = True
        if when <= 0.0:
            when = 1e-9  # an all-zero time would disarm it: the earliest time there is
        value = self._spec.it_value
        sec = int(when)
        value.tv_sec = sec
        value.tv_nsec = int((when - sec) * 1e9)
        if _LIBC.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, self._spec, None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _ready(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:  # disarmed or re-armed for later since it became readable
            return
        if self.handle is None:
            return
        self.handle = None
        callback, args = self.callback, self.args
        self.callback, self.args = None, ()
        callback(*args)

    def cancel(self) -> None:
        if self.fd == _PLAIN:
            return Alarm.cancel(self)
        if self.handle is not None:
            self.handle = None
            self.callback, self.args = None, ()
            value = self._spec.it_value
            value.tv_sec = value.tv_nsec = 0
            _LIBC.timerfd_settime(self.fd, 0, self._spec, None)

    def close(self) -> None:
        self.cancel()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self.fd = -1


def new_alarm(precise: bool) -> Alarm:
    """A :class:`PreciseAlarm` where asked for and available, else an :class:`Alarm`."""
    return PreciseAlarm() if precise and PRECISE else Alarm()
