"""The selection layer's state: per-user instances, persistence in a real state store."""

import asyncio
import threading

import pytest

from clipper_core.config import AppConfig
from clipper_core.selection import APP_UID, Selection
from clipper_core.state import StateStore

AB = ["a", "b"]


@pytest.fixture
def store(tmp_path):
    s = StateStore(str(tmp_path))
    yield s
    s.close()


def make_app(store, policy="exp4", params=None, name="app"):
    app = AppConfig(name, "doubles", 0, 100_000, policy, params or {})
    store.put_app(name, app.to_json())
    return app


def teach(sel, uid, right, n=20):
    wrong = "b" if right == "a" else "a"
    for _ in range(n):
        sel.observe(uid, AB, {right: 1, wrong: 0}, 1)


async def test_states_survive_a_new_process(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    a = s.get(app)
    teach(a, "u1", "b", 10)  # u1's feedback teaches the app's state too
    teach(a, None, "a", 40)
    w_app, w_u1 = a.for_uid(None).weights(AB), a.for_uid("u1").weights(AB)
    assert w_app["a"] > 0.9 and w_u1["b"] > 0.9
    assert await s.flush() == 2  # the app's state and u1's
    assert await s.flush() == 0  # nothing changed since
    again = Selection(store).get(app)
    assert again.for_uid(None).weights(AB) == pytest.approx(w_app)
    assert again.for_uid("u1").weights(AB) == pytest.approx(w_u1)
    assert set(store.policy_states("app")) == {APP_UID, "u1"}


async def test_a_new_user_starts_from_the_app_state_and_queries_alone_keep_no_state(store):
    app = make_app(store, params={"eta": 0.5})
    a = Selection(store).get(app)
    teach(a, None, "a", 10)
    assert a.for_uid("stranger") is a.policy  # served by the app's instance, nothing kept
    assert len(a.users) == 0
    before = a.policy.weights(AB)
    a.observe("newbie", AB, {"a": 1, "b": 1}, 1)  # equal losses: a copy of the app's state
    assert a.for_uid("newbie") is not a.policy
    assert a.for_uid("newbie").weights(AB) == pytest.approx(before, abs=0.01)


async def test_users_beyond_the_memory_bound_come_back_from_the_store(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store, max_users=2)
    a = s.get(app)
    teach(a, "u1", "b")
    teach(a, "u2", "a")
    teach(a, "u3", "b")  # u1 leaves memory, its state is still on its way to the store
    assert list(a.users) == ["u2", "u3"] and not a.complete
    assert a.for_uid("u1").weights(AB)["b"] > 0.9  # from the unwritten states
    await s.flush()
    assert len(a.users) == 2
    assert a.for_uid("u2").weights(AB)["a"] > 0.9
    assert a.for_uid("u3").weights(AB)["b"] > 0.9
    # a fresh process loads at most max_users and reads the others on demand
    b = Selection(store, max_users=2).get(app)
    assert len(b.users) == 2 and not b.complete
    for uid, best in (("u1", "b"), ("u2", "a"), ("u3", "b")):
        assert b.for_uid(uid).weights(AB)[best] > 0.9
    assert len(b.users) == 2


async def test_policy_changes_keep_or_drop_the_state(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    teach(s.get(app), "u1", "a")
    learned = s.get(app).for_uid("u1").weights(AB)
    # new params for the same policy: learned state carries over
    app2 = AppConfig("app", "doubles", 0, 100_000, "exp4", {"eta": 0.1})
    assert s.get(app2).for_uid("u1").weights(AB) == pytest.approx(learned)
    assert s.get(app2).policy.eta == 0.1
    # another policy: afresh, and the stored state goes too
    app3 = AppConfig("app", "doubles", 0, 100_000, "exp3", {})
    assert s.get(app3).for_uid("u1").weights(AB) == pytest.approx({"a": 0.5, "b": 0.5})
    assert store.policy_states("app") == {}
    # another field of the app (its SLO) changing keeps everything
    teach(s.get(app3), None, "b")
    app4 = AppConfig("app", "doubles", 0, 200_000, "exp3", {})
    assert s.get(app4) is s.get(app3)


async def test_a_deleted_app_gets_no_state_written(store):
    app = make_app(store)
    s = Selection(store)
    teach(s.get(app), "u1", "a")
    store.delete_app("app")
    await s.flush()
    assert store.policy_states("app") == {}


async def test_a_policy_that_cannot_be_loaded_is_reported_not_raised(store):
    app = make_app(store, policy="gone_module_xyz:Policy")
    a = Selection(store).get(app)
    assert "cannot import policy module 'gone_module_xyz'" in a.error
    assert a.snapshot(AB)["error"] == a.error
    assert a.snapshot(AB, uid="u1")["error"] == a.error
    assert a.for_uid("u1") is a.policy


async def test_new_params_keep_the_state_even_while_a_write_is_under_way(store, monkeypatch):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    teach(s.get(app), None, "a")
    teach(s.get(app), "u1", "b")
    learned = s.get(app).for_uid("u1").weights(AB)
    learned_app = s.get(app).policy.weights(AB)
    go = threading.Event()
    put = store.put_policy_states

    def slow_put(app_name, docs):
        go.wait(10)
        put(app_name, docs)

    monkeypatch.setattr(store, "put_policy_states", slow_put)
    writing = asyncio.ensure_future(s.flush())
    await asyncio.sleep(0.01)  # the flush has taken the dirty states; their write waits
    assert not s.get(app).dirty and not writing.done()
    app2 = AppConfig("app", "doubles", 0, 100_000, "exp4", {"eta": 0.1})
    assert s.get(app2).for_uid("u1").weights(AB) == pytest.approx(learned)
    assert s.get(app2).policy.weights(AB) == pytest.approx(learned_app)
    go.set()
    assert await writing == 2


async def test_counters_survive_policy_changes_and_resets(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    s.get(app).count_selected("a", 5)
    teach(s.get(app), None, "a", 3)
    app2 = AppConfig("app", "doubles", 0, 100_000, "exp3", {})
    a = s.get(app2, reset=True)
    assert a.selected == {"a": 5} and a.feedback == 3
    assert a.policy.weights(AB) == pytest.approx({"a": 0.5, "b": 0.5})


async def test_snapshot_counts(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    a = s.get(app)
    a.count_selected("a", 3)
    teach(a, None, "a", 4)
    snap = s.snapshot({"app": AB})["app"]
    assert snap["feedback"] == 4
    assert snap["models"]["a"] == {"selected": 3, "weight": pytest.approx(a.policy.weights(AB)["a"]),
                                   "feedback": 4, "mean_loss": 0.0}
    assert snap["models"]["b"]["mean_loss"] == 1.0 and snap["models"]["b"]["selected"] == 0


async def test_selected_and_feedback_counts_are_kept_with_the_weights(store):
    app = make_app(store, params={"eta": 0.5})
    s = Selection(store)
    a = s.get(app)
    a.count_selected("a", 7)
    a.count_selected("b", 2)
    teach(a, None, "a", 4)
    before = a.snapshot(AB)
    assert await s.flush() == 1
    again = Selection(store).get(app)  # a restarted frontend
    after = again.snapshot(AB)
    assert after["feedback"] == 4 and after["models"] == before["models"]
    assert after["models"]["a"]["selected"] == 7 and after["models"]["b"]["feedback"] == 4

    # queries alone (no feedback, so no new weights) still get their counts written
    again.count_selected("a", 3)
    s2 = Selection(store)
    s2.apps[app.name] = again
    assert await s2.flush() == 1
    assert await s2.flush() == 0  # nothing moved since
    assert Selection(store).get(app).selected == {"a": 10, "b": 2}

    # a reset drops the learned state but the counters carry on, and are written again
    third = Selection(store)
    assert third.get(app).selected == {"a": 10, "b": 2}
    app2 = AppConfig("app", "doubles", 0, 100_000, "exp3", {})
    t = third.get(app2, reset=True)
    assert t.selected == {"a": 10, "b": 2}
    assert await third.flush() == 1
    restored = Selection(store).get(app2)
    assert restored.selected == {"a": 10, "b": 2} and restored.feedback == 4


async def test_stored_counts_of_the_wrong_shape_are_ignored(store):
    app = make_app(store)
    store.put_policy_states("app", {APP_UID: {"policy": "exp4", "state": None,
                                              "counts": {"selected": {"a": "x", "b": 2},
                                                         "feedback": True,
                                                         "loss_sum": [1]}}})
    a = Selection(store).get(app)
    assert a.selected == {"b": 2} and a.feedback == 0 and a.loss_sum == {}
