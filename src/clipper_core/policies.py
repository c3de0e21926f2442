"""Selection policies: which models answer a query, how their predictions combine into one
answer, and how feedback teaches the choice (DESIGN.md §7).

A policy is an object with three operations:

``select(models, uid)``
    the linked models to query for one input (a subset of ``models``, in any order);
``combine(selected, preds)``
    one ``(output, confidence)`` from the predictions that arrived by the deadline
    (``preds`` maps a model name to its output and may lack some of ``selected``), or None
    when nothing usable arrived (the app then answers its default output);
``observe(models, preds, label)``
    learn from one piece of feedback: ``preds`` maps each linked model to what it predicted for
    the input, ``label`` is the true answer.

Its state is what ``to_state()`` returns (JSON-native) and ``from_state()`` restores; the
selection layer (``selection.py``) keeps one instance per application, and one per user when
the class is ``personalized`` and the query or feedback carries a ``"uid"``, and persists the
state in the state store.

Built in: ``single``, ``weighted``, ``exp3``, ``exp4``, ``ensemble``.  A user policy is named
by its import path, ``"mypkg.module:MyPolicy"``, and must subclass :class:`Policy`
(docs/policies.md shows one).

Exp3 and Exp4 keep their weights as log-probabilities, renormalised after every update, and
mix a small share of uniform weight back in (Herbster and Warmuth's fixed share): every weight
stays positive and finite however many updates arrive, the weights always sum to one, and a
model that was bad for a long time can win again after a bounded number of feedbacks.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import random
import re
from typing import Any, Mapping, Sequence

import orjson

from .errors import ConfigError, InvalidInput, brief

__all__ = ["Policy", "Single", "Weighted", "Exp3", "Exp4", "Ensemble", "BUILTIN",
           "load_policy", "make_policy", "register_policy", "LOSSES"]

#: loss kinds: 0/1 for labels (and a weighted vote to combine them), a scaled squared error
#: for numbers (and a weighted mean)
LOSSES = ("zero_one", "squared")

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def vote_key(v: Any) -> Any:
    """A hashable key under which equal JSON values vote together (1 and 1.0 agree; True and
    1 do not; objects and lists compare by content)."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", v)
    if isinstance(v, str):
        return ("s", v)
    if v is None:
        return ("z", None)
    try:
        return ("j", orjson.dumps(v, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
    except TypeError:
        return ("r", repr(v))


def weighted_vote(selected: Sequence[str], preds: Mapping[str, Any],
                  weights: Mapping[str, float]) -> tuple[Any, float] | None:
    """The output with the most weight behind it; its confidence is that weight over the
    weight of every selected model, so a model that did not answer lowers it.  Ties go to the
    output of the earliest model in ``selected``."""
    total = 0.0
    mass: dict[Any, float] = {}
    first: dict[Any, Any] = {}
    for m in selected:
        w = weights.get(m, 0.0)
        total += w
        if m in preds:
            k = vote_key(preds[m])
            if k not in mass:
                mass[k] = 0.0
                first[k] = preds[m]
            mass[k] += w
    if not mass:
        return None
    best = max(mass, key=mass.__getitem__)  # max keeps the first of equal values
    if total <= 0.0:
        return first[best], 0.0
    return first[best], mass[best] / total


def weighted_mean(selected: Sequence[str], preds: Mapping[str, Any],
                  weights: Mapping[str, float]) -> tuple[Any, float] | None:
    """Weighted mean of the numeric predictions that arrived; confidence is the weight that
    arrived over the weight selected.  Non-numeric outputs fall back to a weighted vote."""
    total = arrived = acc = 0.0
    numeric = False
    for m in selected:
        w = weights.get(m, 0.0)
        total += w
        v = preds.get(m)
        if v is not None and _is_number(v):
            numeric = True
            arrived += w
            acc += w * v
    if not numeric:
        return weighted_vote(selected, preds, weights)
    if arrived <= 0.0:
        vals = [preds[m] for m in selected if m in preds and _is_number(preds[m])]
        return sum(vals) / len(vals), 0.0
    return acc / arrived, (arrived / total if total > 0.0 else 0.0)


# ------------------------------------------------------------------------------ parameters
def _param_num(params: Mapping[str, Any], key: str, default: float, lo: float, hi: float,
               policy: str, *, lo_open: bool = False, integer: bool = False) -> Any:
    v = params.get(key, default)
    ok = _is_number(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if integer:
        ok = ok and isinstance(v, int)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ConfigError(f"policy {policy!r}: parameter {key!r} must be "
                          f"{'an integer' if integer else 'a number'} in {rng}, got {brief(v)}")
    return v


def _param_weights(params: Mapping[str, Any], policy: str) -> dict[str, float] | None:
    w = params.get("weights")
    if w is None:
        return None
    if not isinstance(w, dict) or not w:
        raise ConfigError(f"policy {policy!r}: parameter 'weights' must be a non-empty object "
                          f"mapping model names to non-negative numbers, got {brief(w)}")
    out = {}
    for k, v in w.items():
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"policy {policy!r}: weight of model {k!r} must be a "
                              f"non-negative number, got {brief(v)}")
        out[k] = float(v)
    if sum(out.values()) <= 0:
        raise ConfigError(f"policy {policy!r}: at least one weight must be positive")
    return out


# ------------------------------------------------------------------------------ base class
class Policy:
    """Base class of selection policies.

    Subclasses override :meth:`select`, :meth:`combine` and :meth:`observe` (and
    :meth:`to_state` / :meth:`from_state` when they learn).  The constructor receives the
    app's ``policy_params`` and a ``random.Random`` to draw from (seeded when the params hold
    ``"seed"``, so that a run can be replayed); it raises ``ConfigError`` for bad params.

    Parameters every policy understands: ``loss`` (``"zero_one"``, the default, for labels;
    ``"squared"`` for numbers), ``loss_scale`` (the squared error is ``((y - ŷ) / scale)²``,
    clipped to 1), ``seed`` (an integer).
    """

    #: the name under which the policy is registered (set by :func:`register_policy`)
    name = "policy"
    #: True: one instance (one state) per user when queries and feedback carry a "uid"
    personalized = False
    #: the parameters this class accepts besides the common ones; None accepts any
    params_allowed: frozenset | None = None
    COMMON_PARAMS = frozenset({"loss", "loss_scale", "seed"})

    def __init__(self, params: Mapping[str, Any] | None = None,
                 rng: random.Random | None = None) -> None:
        params = dict(params or {})
        if self.params_allowed is not None:
            unknown = set(params) - self.params_allowed - self.COMMON_PARAMS
            if unknown:
                known = ", ".join(sorted(self.params_allowed | self.COMMON_PARAMS))
                raise ConfigError(f"policy {brief(self.name)} has no parameter "
                                  f"{', '.join(map(repr, sorted(unknown)))}; it takes: {known}")
        self.params = params
        self.loss_kind = params.get("loss", "zero_one")
        if self.loss_kind not in LOSSES:
            raise ConfigError(f"policy {brief(self.name)}: parameter 'loss' must be one of "
                              f"{', '.join(LOSSES)}, got {brief(self.loss_kind)}")
        self.loss_scale = float(_param_num(params, "loss_scale", 1.0, 0.0, 1e300, self.name,
                                           lo_open=True))
        seed = params.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigError(f"policy {brief(self.name)}: parameter 'seed' must be an integer, "
                              f"got {brief(seed)}")
        self.rng = rng if rng is not None else random.Random(seed)

    # -------------------------------------------------------------- the three operations
    def select(self, models: Sequence[str], uid: str | None) -> list[str]:
        """The models to query for one input; ``models`` are the app's linked models."""
        return [models[0]] if models else []

    def combine(self, selected: Sequence[str],
                preds: Mapping[str, Any]) -> tuple[Any, float] | None:
        """``(output, confidence)`` from the predictions that arrived, or None."""
        for m in selected:
            if m in preds:
                return preds[m], 1.0
        return None

    def observe(self, models: Sequence[str], preds: Mapping[str, Any], label: Any) -> None:
        """Learn from one piece of feedback (the default policy does not learn)."""

    # -------------------------------------------------------------- state
    def to_state(self) -> Any:
        """JSON-native state to persist; None when there is nothing to keep."""
        return None

    def from_state(self, state: Any) -> None:
        """Restore what :meth:`to_state` returned (possibly by an older process)."""

    def weights(self, models: Sequence[str]) -> dict[str, float]:
        """Each linked model's current weight (for metrics and the admin API)."""
        return {m: 1.0 / len(models) for m in models} if models else {}

    # -------------------------------------------------------------- feedback helpers
    def check_label(self, label: Any) -> None:
        """Raise ``InvalidInput`` when ``label`` cannot be scored by this policy's loss."""
        if self.loss_kind == "squared" and not (_is_number(label) and math.isfinite(label)):
            raise InvalidInput("'label' must be a finite number for this app (its policy "
                               f"scores feedback with the squared loss), got {brief(label)}")

    def loss(self, prediction: Any, label: Any) -> float:
        """The loss of one prediction, in [0, 1]."""
        if self.loss_kind == "squared":
            if not _is_number(prediction) or not math.isfinite(prediction):
                return 1.0
            d = (prediction - label) / self.loss_scale
            return 1.0 if abs(d) >= 1.0 else d * d
        return 0.0 if vote_key(prediction) == vote_key(label) else 1.0


# ------------------------------------------------------------------------------ built-ins
class Single(Policy):
    """The default: the current version of the one linked model answers."""

    name = "single"
    params_allowed = frozenset()


class Weighted(Policy):
    """A/B tests and canaries: each query goes to one model, drawn in proportion to
    ``weights`` (equal weights if absent).  A query with a ``uid`` always lands on the same
    model for the same weights (a stable hash of ``salt`` and the uid picks it), so a user
    sees one variant throughout."""

    name = "weighted"
    params_allowed = frozenset({"weights", "salt"})

    def __init__(self, params=None, rng=None) -> None:
        super().__init__(params, rng)
        self.split = _param_weights(self.params, self.name)
        salt = self.params.get("salt", "")
        if not isinstance(salt, str):
            raise ConfigError(f"policy 'weighted': parameter 'salt' must be a string, "
                              f"got {brief(salt)}")
        self.salt = salt.encode()

    def weights(self, models):
        if self.split is None:
            return super().weights(models)
        ws = {m: self.split.get(m, 0.0) for m in models}
        total = sum(ws.values())
        return {m: (w / total if total > 0 else 0.0) for m, w in ws.items()}

    def _draw(self, uid: str | None) -> float:
        if uid is None:
            return self.rng.random()
        h = hashlib.blake2b(uid.encode(), digest_size=8, key=self.salt[:64]).digest()
        return int.from_bytes(h, "big") / 2.0 ** 64

    def select(self, models, uid):
        if not models:
            return []
        if self.split is None:
            return [models[int(self._draw(uid) * len(models)) % len(models)]]
        ws = [self.split.get(m, 0.0) for m in models]
        total = sum(ws)
        if total <= 0.0:
            return []  # no linked model has weight: the app answers its default
        u = self._draw(uid) * total
        acc = 0.0
        for m, w in zip(models, ws):
            acc += w
            if u < acc:
                return [m]
        return [next(m for m, w in zip(reversed(models), reversed(ws)) if w > 0)]


class Ensemble(Policy):
    """Every model with a positive weight answers; their predictions combine by a weighted
    vote (``loss: zero_one``, equal weights = majority vote) or a weighted mean
    (``loss: squared``).  Weights are fixed: feedback is counted, not learned from."""

    name = "ensemble"
    params_allowed = frozenset({"weights"})

    def __init__(self, params=None, rng=None) -> None:
        super().__init__(params, rng)
        self.fixed = _param_weights(self.params, self.name)

    def weights(self, models):
        if self.fixed is None:
            return super().weights(models)
        ws = {m: self.fixed.get(m, 0.0) for m in models}
        total = sum(ws.values())
        return {m: (w / total if total > 0 else 0.0) for m, w in ws.items()}

    def select(self, models, uid):
        if self.fixed is None:
            return list(models)
        return [m for m in models if self.fixed.get(m, 0.0) > 0.0]

    def combine(self, selected, preds):
        ws = self.fixed if self.fixed is not None else dict.fromkeys(selected, 1.0)
        if self.loss_kind == "squared":
            return weighted_mean(selected, preds, ws)
        return weighted_vote(selected, preds, ws)


class _ExpWeights(Policy):
    """Multiplicative weights over the linked models, kept as normalised log-probabilities.

    After feedback, each model's log-weight drops by ``eta`` times its loss; the weights are
    renormalised and mixed with a ``min_weight`` share of the uniform distribution, so every
    weight stays in [min_weight, 1], the weights sum to one, and the spread between the best
    and the worst is bounded by log(1 / min_weight): a model that becomes the best catches up
    within about log(1 / min_weight) / (eta · loss gap) feedbacks.
    """

    personalized = True
    params_allowed = frozenset({"eta", "min_weight"})

    def __init__(self, params=None, rng=None) -> None:
        super().__init__(params, rng)
        self.eta = float(_param_num(self.params, "eta", 0.03, 0.0, 100.0, self.name,
                                    lo_open=True))
        self.min_weight = float(_param_num(self.params, "min_weight", 3e-4, 1e-12, 0.1,
                                           self.name))
        self.logw: dict[str, float] = {}

    def _sync(self, models: Sequence[str]) -> dict[str, float]:
        """Weights for exactly ``models``: a newly linked model enters with the average
        weight, an unlinked one is forgotten."""
        lw = self.logw
        if len(lw) == len(models) and all(m in lw for m in models):
            return lw
        k = len(models)
        if not k:
            self.logw = {}
            return self.logw
        new = {m: lw[m] for m in models if m in lw}
        if new:
            # bring the kept ones back to a distribution, then give newcomers 1/k each
            self.logw = new
            self._normalise(mix=False)
            share = math.log1p(-(k - len(new)) / k)
            new = {m: v + share for m, v in self.logw.items()}
        for m in models:
            if m not in new:
                new[m] = -math.log(k)
        self.logw = {m: new[m] for m in models}
        self._normalise(mix=False)
        return self.logw

    def _normalise(self, mix: bool = True) -> None:
        lw = self.logw
        if not lw:
            return
        top = max(lw.values())
        lse = top + math.log(math.fsum(math.exp(v - top) for v in lw.values()))
        if not mix:
            self.logw = {m: v - lse for m, v in lw.items()}
            return
        k = len(lw)
        alpha = min(self.min_weight, 0.5 / k)
        keep = 1.0 - k * alpha
        # fixed share: p <- (1 - k*alpha) * p + alpha, so every p >= alpha > 0
        self.logw = {m: math.log(keep * math.exp(v - lse) + alpha) for m, v in lw.items()}

    def probabilities(self, models: Sequence[str]) -> dict[str, float]:
        lw = self._sync(models)
        ps = {m: math.exp(v) for m, v in lw.items()}
        s = math.fsum(ps.values())
        return {m: p / s for m, p in ps.items()} if s > 0 else ps

    weights = probabilities

    def observe(self, models, preds, label):
        lw = self._sync(models)
        changed = False
        for m, p in preds.items():
            if m in lw:
                lw[m] -= self.eta * self.loss(p, label)
                changed = True
        if changed:
            self._normalise()

    def to_state(self):
        return {"logw": dict(self.logw)}

    def from_state(self, state):
        lw = state.get("logw") if isinstance(state, dict) else None
        if isinstance(lw, dict) and all(isinstance(k, str) and _is_number(v)
                                        and math.isfinite(v) for k, v in lw.items()):
            self.logw = {k: float(v) for k, v in lw.items()}
            self._normalise(mix=False)


class Exp3(_ExpWeights):
    """One model per query, drawn by the Exp3 bandit: with probability ``gamma`` uniformly
    (exploration), otherwise in proportion to the learned weights.

    Exp3's update divides a model's loss by the probability that the loss was observed.
    Clipper's feedback path evaluates every linked model on the feedback input, so every loss
    is observed (probability one) and the update is the full-information one: each model's
    weight is multiplied by exp(-eta · loss).  For the same reason exploration is not needed
    to learn, and ``gamma`` defaults to a small 0.01.
    """

    name = "exp3"
    params_allowed = _ExpWeights.params_allowed | {"gamma"}

    def __init__(self, params=None, rng=None) -> None:
        super().__init__(params, rng)
        self.gamma = float(_param_num(self.params, "gamma", 0.01, 0.0, 1.0, self.name))

    def select(self, models, uid):
        k = len(models)
        if k <= 1:
            return list(models)
        ps = self.probabilities(models)
        g = self.gamma
        u = self.rng.random()
        acc = 0.0
        for m in models:
            acc += (1.0 - g) * ps[m] + g / k
            if u < acc:
                return [m]
        return [models[-1]]


class Exp4(_ExpWeights):
    """Every linked model answers; the answer is their combination under the learned (Exp4)
    weights: a weighted vote for labels (``loss: zero_one``), a weighted mean for numbers
    (``loss: squared``).  Confidence is the weight behind the answer over the total, so a
    model that misses the deadline lowers it."""

    name = "exp4"

    def select(self, models, uid):
        return list(models)

    def combine(self, selected, preds):
        # read-only: a link added while this query was in flight must not reset the weights
        lw = self.logw
        ws = {m: math.exp(lw[m]) if m in lw else 1.0 / len(selected) for m in selected}
        if self.loss_kind == "squared":
            return weighted_mean(selected, preds, ws)
        return weighted_vote(selected, preds, ws)


# ------------------------------------------------------------------------------ registry
BUILTIN: dict[str, type[Policy]] = {c.name: c for c in (Single, Weighted, Exp3, Exp4, Ensemble)}
_registered: dict[str, type[Policy]] = dict(BUILTIN)


def register_policy(name: str, cls: type[Policy]) -> None:
    """Make ``cls`` available under ``name`` in this process (import paths need no
    registration: ``policy="mypkg.module:MyPolicy"`` works as is)."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError("a policy must be a subclass of clipper_core.policies.Policy")
    _registered[name] = cls


def load_policy(name: Any) -> type[Policy]:
    """The policy class called ``name``: a built-in, a registered name, or an import path
    ``"package.module:Class"``.  Raises ``ConfigError`` saying what was expected."""
    if not isinstance(name, str):
        raise ConfigError(f"policy must be a string, got {name!r}")
    cls = _registered.get(name)
    if cls is not None:
        return cls
    if not _IMPORT_PATH.match(name):
        raise ConfigError(f"unknown policy {name!r}; built in: {', '.join(BUILTIN)}; or give "
                          "the import path of your own Policy subclass as 'package.module:Class'")
    mod_name, _, attr = name.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"cannot import policy module {brief(mod_name)} for policy {name!r}: "
                          f"{type(e).__name__}: {e}") from None
    cls = getattr(mod, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ConfigError(f"policy {name!r}: {brief(attr)} in module {brief(mod_name)} is not a "
                          "subclass of clipper_core.policies.Policy")
    return cls


def make_policy(name: str, params: Mapping[str, Any] | None = None,
                rng: random.Random | None = None) -> Policy:
    """Instantiate (and so validate) policy ``name`` with ``params``."""
    cls = load_policy(name)
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"policy_params must be a JSON object, got {brief(params)}")
    try:
        return cls(params or {}, rng)
    except ConfigError:
        raise
    except Exception as e:  # a user policy's constructor rejecting its params
        raise ConfigError(f"policy {name!r} rejected its parameters: "
                          f"{type(e).__name__}: {e}") from None
