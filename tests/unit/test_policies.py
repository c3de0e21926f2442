"""Selection policies on synthetic streams: seeded, deterministic, no server."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipper_core.errors import ConfigError, InvalidInput
from clipper_core.policies import (BUILTIN, Exp3, Exp4, Policy, load_policy, make_policy,
                                   weighted_mean, weighted_vote)

AB = ["a", "b"]


def labelled(rng, accuracy, n_labels=10):
    """One synthetic example: (label, {model: prediction}); model m is right with
    probability accuracy[m], independently of the others, else it answers a wrong label."""
    y = rng.randrange(n_labels)
    preds = {}
    for m, acc in accuracy.items():
        preds[m] = y if rng.random() < acc else (y + 1 + rng.randrange(n_labels - 1)) % n_labels
    return y, preds


def share(policy, models, model, n=1000):
    return sum(policy.select(models, None) == [model] for _ in range(n)) / n


def test_exp3_finds_the_better_model_then_follows_a_degradation():
    stream = random.Random(1)
    p = Exp3({"seed": 7})
    for _ in range(1000):
        y, preds = labelled(stream, {"a": 0.9, "b": 0.6})
        p.observe(AB, preds, y)
    assert share(p, AB, "a") >= 0.80
    # model A degrades to 30%: within 2,000 more feedbacks B takes most queries
    switched_at = None
    for i in range(2000):
        y, preds = labelled(stream, {"a": 0.3, "b": 0.6})
        p.observe(AB, preds, y)
        if switched_at is None and p.weights(AB)["b"] > 0.5:
            switched_at = i
    assert switched_at is not None and switched_at < 2000
    assert share(p, AB, "b") > 0.5
    assert share(p, AB, "b") >= 0.80


def test_exp3_is_deterministic_with_a_seed():
    def run():
        stream = random.Random(3)
        p = Exp3({"seed": 11})
        picks = []
        for _ in range(300):
            picks.append(p.select(AB, None)[0])
            y, preds = labelled(stream, {"a": 0.7, "b": 0.5})
            p.observe(AB, preds, y)
        return picks, p.to_state()

    assert run() == run()


def test_exp3_explores_with_gamma():
    p = Exp3({"seed": 1, "gamma": 0.2})
    for _ in range(500):
        p.observe(AB, {"a": 1, "b": 0}, 1)  # b always wrong
    # b keeps at least gamma / k of the queries
    assert 0.08 <= share(p, AB, "b", 4000) <= 0.15


def test_exp4_puts_most_weight_on_the_best_model():
    stream = random.Random(2)
    models = ["a", "b", "c"]
    p = Exp4({"seed": 1})
    for _ in range(1000):
        y, preds = labelled(stream, {"a": 0.9, "b": 0.6, "c": 0.5})
        p.observe(models, preds, y)
    w = p.weights(models)
    assert w["a"] > 0.8 and w["a"] > w["b"] > 0 and w["a"] > w["c"] > 0
    assert set(p.select(models, None)) == set(models)


def test_exp4_ensemble_beats_each_of_three_equal_independent_models():
    stream = random.Random(5)
    models = ["a", "b", "c"]
    p = Exp4({"seed": 1})
    right = dict.fromkeys([*models, "exp4"], 0)
    n = 3000
    for _ in range(n):
        y, preds = labelled(stream, dict.fromkeys(models, 0.7), n_labels=2)
        out, conf = p.combine(models, preds)
        right["exp4"] += out == y
        for m in models:
            right[m] += preds[m] == y
        p.observe(models, preds, y)
    acc = {k: v / n for k, v in right.items()}
    # a majority of three independent 70% voters is right 78.4% of the time
    assert acc["exp4"] > max(acc[m] for m in models) + 0.04, acc


def test_exp4_combines_numbers_by_weighted_mean():
    p = Exp4({"loss": "squared", "loss_scale": 10.0})
    models = ["a", "b"]
    for _ in range(1000):
        p.observe(models, {"a": 5.0, "b": 9.0}, 5.0)  # a is exact, b is off by 4
    w = p.weights(models)
    out, conf = p.combine(models, {"a": 5.0, "b": 9.0})
    assert out == pytest.approx(w["a"] * 5.0 + w["b"] * 9.0)
    assert 5.0 < out < 5.5 and conf == pytest.approx(1.0)
    # b missing: a's prediction alone, confidence a's weight
    out, conf = p.combine(models, {"a": 5.0})
    assert out == 5.0 and conf == pytest.approx(w["a"])


def test_missing_models_lower_the_confidence():
    p = Exp4({})
    models = ["a", "b", "c"]
    out, conf = p.combine(models, {"a": "cat", "b": "cat"})
    assert out == "cat" and conf == pytest.approx(2 / 3)
    out, conf = p.combine(models, {"a": "cat", "b": "dog", "c": "cat"})
    assert out == "cat" and conf == pytest.approx(2 / 3)
    assert p.combine(models, {}) is None


def test_vote_treats_equal_json_values_as_one_and_breaks_ties_by_order():
    ws = dict.fromkeys("abc", 1.0)
    assert weighted_vote("abc", {"a": 1, "b": 1.0, "c": True}, ws) == (1, pytest.approx(2 / 3))
    assert weighted_vote("abc", {"a": {"x": [1, 2]}, "b": {"x": [1, 2]}, "c": 0}, ws)[0] == \
        {"x": [1, 2]}
    assert weighted_vote("abc", {"b": "y", "c": "z"}, ws)[0] == "y"
    assert weighted_mean("ab", {"a": "x", "b": "x"}, {"a": 1.0, "b": 1.0})[0] == "x"


def test_ensemble_majority_vote_and_fixed_weights():
    maj = make_policy("ensemble", {})
    assert maj.select(["a", "b", "c"], None) == ["a", "b", "c"]
    assert maj.combine(["a", "b", "c"], {"a": 0, "b": 1, "c": 1}) == (1, pytest.approx(2 / 3))
    fixed = make_policy("ensemble", {"weights": {"a": 3, "b": 1, "c": 1}})
    assert fixed.combine(["a", "b", "c"], {"a": 0, "b": 1, "c": 1}) == (0, pytest.approx(0.6))
    zero = make_policy("ensemble", {"weights": {"a": 1, "b": 0}})
    assert zero.select(["a", "b"], None) == ["a"]
    mean = make_policy("ensemble", {"loss": "squared", "weights": {"a": 1, "b": 3}})
    assert mean.combine(["a", "b"], {"a": 0.0, "b": 4.0}) == (3.0, 1.0)
    before = mean.to_state()
    mean.observe(["a", "b"], {"a": 0.0, "b": 4.0}, 0.0)
    assert mean.to_state() == before  # fixed weights do not learn


def test_weighted_split_is_sticky_per_uid_and_proportional():
    p = make_policy("weighted", {"weights": {"a": 9, "b": 1}})
    again = make_policy("weighted", {"weights": {"a": 9, "b": 1}})  # another process
    picks = {}
    for i in range(5000):
        uid = f"user-{i}"
        (m,) = p.select(AB, uid)
        assert again.select(AB, uid) == [m] == p.select(AB, uid)
        picks[m] = picks.get(m, 0) + 1
    assert 0.87 <= picks["a"] / 5000 <= 0.93
    # a different salt reshuffles who lands where, not the proportions
    salted = make_policy("weighted", {"weights": {"a": 9, "b": 1}, "salt": "exp-2"})
    moved = sum(salted.select(AB, f"user-{i}") != p.select(AB, f"user-{i}")
                for i in range(5000))
    assert moved > 300
    # no weight for any linked model: nothing selected (the app answers its default)
    assert make_policy("weighted", {"weights": {"x": 1}}).select(AB, "u") == []
    # without weights: an equal split; without uid: a seeded draw
    eq = make_policy("weighted", {"seed": 3})
    assert 0.45 <= sum(eq.select(AB, None) == ["a"] for _ in range(4000)) / 4000 <= 0.55


def test_single_serves_the_first_linked_model():
    p = make_policy("single", {})
    assert p.select(["a"], None) == ["a"]
    assert p.combine(["a"], {"a": 3}) == (3, 1.0)
    assert p.combine(["a"], {}) is None


@pytest.mark.parametrize("name,params,msg", [
    ("exp5", {}, "unknown policy 'exp5'; built in: single, weighted, exp3, exp4, ensemble"),
    (3, {}, "policy must be a string"),
    ("exp3", {"eta": -1}, "parameter 'eta' must be a number in (0, 100]"),
    ("exp3", {"eta": "fast"}, "parameter 'eta' must be a number"),
    ("exp3", {"gamma": 1.5}, "parameter 'gamma' must be a number in [0, 1]"),
    ("exp3", {"etaa": 0.1}, "policy 'exp3' has no parameter 'etaa'; it takes: eta, gamma"),
    ("exp4", {"loss": "l1"}, "parameter 'loss' must be one of zero_one, squared"),
    ("exp4", {"min_weight": 0}, "parameter 'min_weight' must be a number in [1e-12, 0.1]"),
    ("exp4", {"seed": "x"}, "parameter 'seed' must be an integer"),
    ("weighted", {"weights": {"a": -1}}, "weight of model 'a' must be a non-negative number"),
    ("weighted", {"weights": {"a": 0}}, "at least one weight must be positive"),
    ("weighted", {"weights": [1, 2]}, "must be a non-empty object"),
    ("ensemble", {"loss_scale": 0}, "parameter 'loss_scale' must be a number in (0"),
    ("single", {"eta": 1}, "policy 'single' has no parameter 'eta'"),
    ("no_such_module_xyz:Policy", {}, "cannot import policy module 'no_such_module_xyz'"),
    ("random:Random", {}, "'Random' in module 'random' is not a subclass"),
    ("exp3", [1], "policy_params must be a JSON object"),
])
def test_bad_policy_config_names_what_was_expected(name, params, msg):
    with pytest.raises(ConfigError) as e:
        make_policy(name, params)
    assert msg in str(e.value)


def test_labels_are_checked_against_the_loss():
    make_policy("exp4", {}).check_label({"any": "json"})
    with pytest.raises(InvalidInput, match="finite number"):
        make_policy("exp4", {"loss": "squared"}).check_label("cat")


def test_squared_loss_is_scaled_and_clipped():
    p = make_policy("exp4", {"loss": "squared", "loss_scale": 2.0})
    assert p.loss(3.0, 2.0) == pytest.approx(0.25)
    assert p.loss(10.0, 2.0) == 1.0
    assert p.loss("x", 2.0) == 1.0
    assert p.loss(float("nan"), 2.0) == 1.0
    assert make_policy("exp4", {}).loss("a", "a") == 0.0


class FirstAnswer(Policy):
    """A user policy: query everything, answer with the first model (in link order) that
    answered, and count feedback."""

    def __init__(self, params=None, rng=None):
        super().__init__(params, rng)
        self.seen = 0

    def select(self, models, uid):
        return list(models)

    def observe(self, models, preds, label):
        self.seen += 1

    def to_state(self):
        return {"seen": self.seen}

    def from_state(self, state):
        self.seen = state["seen"]


def test_user_policy_by_import_path():
    cls = load_policy(f"{__name__}:FirstAnswer")
    assert cls is FirstAnswer
    p = make_policy(f"{__name__}:FirstAnswer", {"anything": 1})
    assert p.combine(["a", "b"], {"b": 2}) == (2, 1.0)
    assert load_policy("exp3") is BUILTIN["exp3"]


def test_weights_follow_the_linked_models():
    p = Exp4({})
    for _ in range(100):
        p.observe(AB, {"a": 1, "b": 0}, 1)
    wa = p.weights(AB)["a"]
    w = p.weights(["a", "b", "c"])  # c linked later: enters with the average weight
    assert w["c"] == pytest.approx(1 / 3, rel=0.01)
    assert math.fsum(w.values()) == pytest.approx(1.0)
    assert w["a"] / w["b"] == pytest.approx(wa / (1 - wa), rel=0.05)
    assert set(p.weights(["a"])) == {"a"}  # unlinked ones are forgotten


def test_state_round_trip():
    p = Exp3({"seed": 1})
    for _ in range(50):
        p.observe(AB, {"a": 1, "b": 0}, 1)
    q = Exp3({"seed": 1})
    q.from_state(p.to_state())
    assert q.weights(AB) == pytest.approx(p.weights(AB))
    q.from_state({"logw": {"a": "not a number"}})  # a damaged state is ignored
    assert q.weights(AB) == pytest.approx(p.weights(AB))


def _check_invariants(p, models):
    w = p.weights(models)
    assert set(w) == set(models)
    assert all(v > 0 and math.isfinite(v) for v in w.values()), w
    assert math.fsum(w.values()) == pytest.approx(1.0, abs=1e-9)
    assert all(math.isfinite(v) for v in p.to_state()["logw"].values())


@settings(max_examples=60, deadline=None)
@given(cls=st.sampled_from([Exp3, Exp4]),
       k=st.integers(1, 6),
       eta=st.floats(1e-6, 100.0),
       min_weight=st.floats(1e-12, 0.1),
       pattern=st.lists(st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6),
                        min_size=1, max_size=8),
       repeats=st.integers(1, 400))
def test_weight_invariants_hold_under_any_losses(cls, k, eta, min_weight, pattern, repeats):
    models = [f"m{i}" for i in range(k)]
    p = cls({"eta": eta, "min_weight": min_weight, "loss": "squared"})
    for _ in range(repeats):
        for losses in pattern:
            # prediction sqrt(loss) away from label 0 has squared loss `loss`
            p.observe(models, {m: math.sqrt(losses[i]) for i, m in enumerate(models)}, 0.0)
    _check_invariants(p, models)
    (m,) = p.select(models, None) if cls is Exp3 else p.select(models, None)[:1]
    assert m in models


def test_weights_stay_sane_after_a_million_updates():
    p = Exp4({"eta": 100.0, "min_weight": 1e-12})
    models = ["a", "b", "c"]
    preds = {"a": 0, "b": 1, "c": 2}
    for _ in range(1_000_000):
        p.observe(models, preds, 0)  # the same two models are always wrong, as hard as allowed
    _check_invariants(p, models)
    assert p.weights(models)["a"] > 0.99
