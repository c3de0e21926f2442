"""The two state stores keep the same contract: the SQLite default and Redis (a real
redis-server, each test on a fresh database), and Redis tells other frontends what changed."""

import asyncio
import itertools

import pytest
import redis

from clipper_core.errors import StateStoreError, StateStoreUnavailable
from clipper_core.state import StateStore, open_store
from clipper_core.state_redis import RedisStateStore
from clipper_core.testing import RedisServer, free_port

_db = itertools.count(1)


@pytest.fixture(scope="module")
def redis_server():
    srv = RedisServer().start()
    yield srv
    srv.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path, redis_server):
    if request.param == "sqlite":
        s = StateStore(str(tmp_path))
    else:
        url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_db) % 16}"
        redis.Redis.from_url(url).flushdb()
        s = open_store(url, str(tmp_path))
        assert isinstance(s, RedisStateStore) and s.shared
    yield s
    s.close()


def test_apps_models_links_round_trip_in_order(store):
    store.put_app("b", {"name": "b"})
    store.put_app("a", {"name": "a"})
    store.put_model("m", "1", {"v": 1})
    store.put_model("m", "2", {"v": 2})
    store.put_model("m", "1", {"v": 11})  # an update keeps the version's place
    store.set_current_version("m", "2")
    store.add_link("b", "m")
    store.add_link("a", "m")
    store.add_link("b", "m")  # twice is once
    assert store.apps() == [{"name": "a"}, {"name": "b"}]
    assert store.models() == [{"v": 11}, {"v": 2}]
    assert store.current_versions() == {"m": "2"}
    assert store.links() == [("b", "m"), ("a", "m")]
    store.delete_link("b", "m")
    assert store.links() == [("a", "m")]
    store.set_current_version("m", None)
    assert store.current_versions() == {}


def test_deletes_cascade(store):
    store.put_app("a", {"name": "a"})
    store.put_model("m", "1", {"v": 1})
    store.put_model("m", "2", {"v": 2})
    store.set_current_version("m", "2")
    store.add_link("a", "m")
    store.put_policy_states("a", {"": {"w": 1}})
    store.delete_model_version("m", "1")
    assert store.models() == [{"v": 2}] and store.links() == [("a", "m")]
    store.delete_model_version("m", "2", drop_current=True)
    assert store.models() == [] and store.current_versions() == {} and store.links() == []
    store.add_link("a", "m")
    store.delete_app("a")
    assert store.apps() == [] and store.links() == [] and store.policy_states("a") == {}


def test_policy_states_only_for_existing_apps_and_limit_keeps_the_apps_own(store):
    store.put_policy_states("ghost", {"": {"w": 1}})
    assert store.policy_states("ghost") == {}
    store.put_app("a", {"name": "a"})
    store.put_policy_states("a", {f"u{i}": {"i": i} for i in range(10)})
    store.put_policy_states("a", {"": {"w": 2}})
    assert len(store.policy_states("a")) == 11
    limited = store.policy_states("a", limit=3)
    assert len(limited) == 3 and limited[""] == {"w": 2}
    assert store.policy_state("a", "u4") == {"i": 4} and store.policy_state("a", "x") is None
    store.delete_policy_states("a")
    assert store.policy_states("a") == {}


async def test_redis_notices_reach_other_stores_only(redis_server):
    a, b = RedisStateStore(redis_server.url), RedisStateStore(redis_server.url)
    seen_a, seen_b = [], []
    tasks = [asyncio.ensure_future(a.watch(seen_a.append)),
             asyncio.ensure_future(b.watch(seen_b.append))]
    try:
        await asyncio.sleep(0.3)  # subscribed
        a.put_app("n1", {"name": "n1"})
        a.put_policy_states("n1", {"": {}})
        for _ in range(100):
            if len(seen_b) >= 2:
                break
            await asyncio.sleep(0.02)
        assert [(n["kind"], n["app"]) for n in seen_b] == [("registry", "n1"), ("policy", "n1")]
        assert seen_a == []  # its own notices are not passed back
        a.delete_app("n1")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.close()
        b.close()


def test_unreachable_redis_is_a_503_naming_it():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StateStoreUnavailable) as e:
        RedisStateStore(url, timeout_s=0.5)
    assert e.value.status == 503 and url in e.value.cause and "unreachable" in e.value.cause


def test_unknown_state_url_names_what_is_accepted(tmp_path):
    with pytest.raises(StateStoreError) as e:
        open_store("mysql://x", str(tmp_path))
    assert "redis://HOST:PORT/DB" in e.value.cause
    default = open_store(None, str(tmp_path))
    assert not default.shared
    default.close()


# ------------------------------------------------------------------ merging learned states
from hypothesis import given, strategies as st  # noqa: E402

from clipper_core.policies import make_policy  # noqa: E402
from clipper_core.selection import merge_state  # noqa: E402

counts = st.dictionaries(st.sampled_from("abc"), st.integers(0, 1000), max_size=3)


@given(base=counts, da=counts, db=counts)
def test_counters_of_two_frontends_add_up(base, da, db):
    """Two frontends start from ``base`` and count ``da`` and ``db`` more; whichever writes
    first, the stored result holds base + da + db."""
    def plus(d, e):
        return {k: d.get(k, 0) + e.get(k, 0) for k in {*d, *e}}
    a, b = plus(base, da), plus(base, db)
    full_base = {k: base.get(k, 0) for k in {*a, *b}}
    first = merge_state({k: 0 for k in a} | full_base, full_base, a)
    both = merge_state(first, full_base, b)
    want = plus(plus(base, da), db)
    assert {k: v for k, v in both.items() if v or k in want} == {
        k: v for k, v in want.items() if v or k in both}


@given(losses_a=st.lists(st.floats(0, 1), max_size=8),
       losses_b=st.lists(st.floats(0, 1), max_size=8))
def test_exp4_weights_of_two_frontends_match_one_that_saw_all_feedback(losses_a, losses_b):
    def learn(p, losses):
        for lo in losses:  # model "x" predicted with this error, "y" was exact
            p.observe(["x", "y"], {"x": lo, "y": 0.0}, 0.0)
        return p

    params = {"loss": "squared", "eta": 0.5, "min_weight": 1e-12}  # (no floor to blur it)
    base = make_policy("exp4", params)
    base.weights(["x", "y"])
    doc0 = {"policy": "exp4", "state": base.to_state()}
    docs = []
    for losses in (losses_a, losses_b):
        p = make_policy("exp4", params)
        p.from_state(doc0["state"])
        docs.append({"policy": "exp4", "state": learn(p, losses).to_state()})
    merged = merge_state(merge_state(doc0, doc0, docs[0]), doc0, docs[1])
    one = make_policy("exp4", params)
    one.from_state(doc0["state"])
    learn(one, losses_a + losses_b)
    got = make_policy("exp4", params)
    got.from_state(merged["state"])
    assert got.weights(["x", "y"])["x"] == pytest.approx(one.weights(["x", "y"])["x"],
                                                          rel=1e-6, abs=1e-9)


def test_merge_keeps_what_only_the_store_has_and_takes_mine_for_the_rest():
    stored = {"policy": "exp4", "state": {"logw": {"x": -1.0, "z": -3.0}}, "tag": "old"}
    base = {"policy": "exp4", "state": {"logw": {"x": -0.5}}}
    mine = {"policy": "exp4", "state": {"logw": {"x": -0.7, "y": -2.0}}, "tag": "new"}
    assert merge_state(stored, base, mine) == {
        "policy": "exp4", "state": {"logw": {"x": pytest.approx(-1.2), "y": -2.0, "z": -3.0}},
        "tag": "new"}
    other = {"policy": "exp3", "state": {"logw": {"x": 5.0}}}
    assert merge_state(stored, base, other) == other  # another policy: no merging


def test_creating_what_another_frontend_created_is_a_conflict(redis_server):
    """Two frontends whose registries have not heard of each other's new app yet: the
    second create is refused by the shared store, not silently written over the first."""
    from clipper_core.errors import Conflict

    url = redis_server.url.rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(url).flushdb()
    a, b = RedisStateStore(url), RedisStateStore(url)
    try:
        a.put_app("x", {"name": "x", "by": "a"}, create=True)
        with pytest.raises(Conflict) as e:
            b.put_app("x", {"name": "x", "by": "b"}, create=True)
        assert "another frontend" in e.value.cause
        a.put_model("m", "1", {"by": "a"}, create=True)
        with pytest.raises(Conflict):
            b.put_model("m", "1", {"by": "b"}, create=True)
        assert b.apps() == [{"name": "x", "by": "a"}] and b.models() == [{"by": "a"}]
        b.put_app("x", {"name": "x", "by": "b"})  # an update is not a create
        assert a.apps() == [{"name": "x", "by": "b"}]
    finally:
        a.close()
        b.close()
