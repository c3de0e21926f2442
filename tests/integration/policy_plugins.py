"""A user policy, loaded by the server as ``policy="policy_plugins:BestSoFar"`` (the same
example as docs/policies.md)."""

from clipper_core.policies import Policy


class BestSoFar(Policy):
    """Each query goes to the model with the best accuracy on the feedback so far; ties (and
    models without feedback yet) go to the most recently linked model."""

    personalized = True  # one accuracy table per user when feedback carries a "uid"

    def __init__(self, params=None, rng=None):
        super().__init__(params, rng)
        self.right = {}  # model -> [right, seen]

    def accuracy(self, model):
        right, seen = self.right.get(model, (0, 0))
        return right / seen if seen else 0.5

    def select(self, models, uid):
        if not models:
            return []
        best = max(reversed(models), key=self.accuracy)  # max keeps the first of ties
        return [best]

    def observe(self, models, preds, label):
        for m, p in preds.items():
            r = self.right.setdefault(m, [0, 0])
            r[0] += self.loss(p, label) == 0.0
            r[1] += 1

    def weights(self, models):
        return {m: self.accuracy(m) for m in models}

    def to_state(self):
        return {"right": self.right}

    def from_state(self, state):
        self.right = {m: list(v) for m, v in state["right"].items()}
