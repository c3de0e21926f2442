import pytest

from clipper_core import _sched_c, _sched_py


@pytest.fixture(scope="session", params=[_sched_c, _sched_py], ids=["compiled", "pure"])
def impl(request):
    """The scheduler core, compiled and pure: every test runs against both.  A module has no
    state, so one instance per session is safe under Hypothesis."""
    return request.param
