"""Model selection with feedback: accuracy over time of single models, exp3 and exp4.

    .venv/bin/pip install -e '.[bench]'          # scikit-learn (not needed by Clipper itself)
    .venv/bin/python benchmarks/model_selection.py [--steps 1000] [--window 100]

Trains three differently built classifiers on part of scikit-learn's digits dataset (a
logistic regression, a random forest and a deliberately weak depth-3 tree), deploys each as a
Python closure in a real Clipper, and links them to five apps: one ``single`` app per model,
one ``exp3`` app and one ``exp4`` app.  It then replays the rest of the dataset as a labelled
stream: for every example it first asks each app for a prediction (so every answer is made
before the label is known), then sends the label to ``/{app}/update`` of the exp3 and exp4 apps.

Halfway through (``--bad-rollout-at``), a broken version 2 of the best model (trained on
shifted labels) is deployed and becomes current, as a bad release would: the single app of that
model now serves the broken version, and exp3 and exp4 must learn from feedback to move away
from it.  ``--bad-rollout-at 1`` disables this.

Prints accuracy per window of ``--window`` examples and per phase, and saves JSON under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
import urllib.parse

import numpy as np

from clipper_core.testing import ClipperProcess


def train_models(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_digits(return_X_y=True)
    X_train, X_stream, y_train, y_stream = train_test_split(
        X, y, train_size=0.4, random_state=seed, stratify=y)
    models = {
        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "forest": RandomForestClassifier(n_estimators=30, random_state=seed),
        "weak": DecisionTreeClassifier(max_depth=3, random_state=seed),
    }
    for m in models.values():
        m.fit(X_train, y_train)
    broken = RandomForestClassifier(n_estimators=30, random_state=seed)
    broken.fit(X_train, (y_train + 1) % 10)  # a bad release: every label shifted by one
    return models, broken, X_stream, y_stream


def as_closure(model):
    def predict(inputs):
        X = np.stack(inputs)
        return [int(v) for v in model.predict(X)]

    return predict


class Client:
    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def post(self, path: str, body: dict) -> dict:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = json.loads(r.read())
        if r.status != 200:
            raise RuntimeError(f"POST {path} -> {r.status}: {data}")
        return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--bad-rollout-at", type=float, default=0.5,
                    help="fraction of the stream after which a broken version of the best "
                         "model ships (1 = never)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "model_selection.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    models, broken, X_stream, y_stream = train_models(args.seed)
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(y_stream))
                            for _ in range(args.steps // len(y_stream) + 1)])[:args.steps]
    offline = {n: float((m.predict(X_stream) == y_stream).mean()) for n, m in models.items()}
    best = max(offline, key=offline.get)
    print(f"held-out accuracy before serving: "
          f"{', '.join(f'{n} {a:.3f}' for n, a in offline.items())}; best: {best}")
    rollout_step = int(args.steps * args.bad_rollout_at) if args.bad_rollout_at < 1 else None

    apps = {f"single-{n}": "single" for n in models} | {"exp3": "exp3", "exp4": "exp4"}
    series = {a: [] for a in apps}
    with ClipperProcess() as c:
        conn = c.conn
        for n, m in models.items():
            conn.deploy_python_closure(n, 1, "doubles", as_closure(m))
        for app, policy in apps.items():
            conn.register_application(app, "doubles", -1, 1_000_000, policy=policy,
                                      policy_params={"seed": args.seed}
                                      if policy != "single" else {})
            for n in models:
                if policy != "single" or app == f"single-{n}":
                    conn.link_model_to_app(app, n)
        client = Client(c.query_url)
        print(f"deployed in {time.perf_counter() - t0:.1f} s; replaying {args.steps} examples")
        t_stream = time.perf_counter()
        defaults = 0
        for step, i in enumerate(order):
            if step == rollout_step:
                conn.deploy_python_closure(best, 2, "doubles", as_closure(broken))
                print(f"step {step}: version 2 of {best} (broken) is now current")
            x = X_stream[i].tolist()
            y = int(y_stream[i])
            for app in apps:
                r = client.post(f"/{app}/predict", {"input": x})
                defaults += r["default"]
                series[app].append(int(r["output"] == y))
            for app in ("exp3", "exp4"):
                client.post(f"/{app}/update", {"input": x, "label": y})
        stream_s = time.perf_counter() - t_stream
        info = {a: conn.get_app_policy(a) for a in ("exp3", "exp4")}
        client.conn.close()

    cols = [f"single-{best}"] + [f"single-{n}" for n in models if n != best] + ["exp3", "exp4"]
    head = f"{'examples':>11}  " + "  ".join(f"{c:>14}" for c in cols)
    print("\naccuracy per window (predictions made before the label was sent)")
    print(head)
    windows = []
    for lo in range(0, args.steps, args.window):
        hi = min(lo + args.window, args.steps)
        row = {c: float(np.mean(series[c][lo:hi])) for c in cols}
        windows.append({"from": lo, "to": hi, **row})
        mark = " <- broken release" if rollout_step is not None and lo <= rollout_step < hi \
            else ""
        print(f"{lo:>5}-{hi:<5}  " + "  ".join(f"{row[c]:>14.3f}" for c in cols) + mark)
    phases = {"all": (0, args.steps)}
    if rollout_step is not None:
        phases = {"before release": (0, rollout_step), "after release": (rollout_step,
                                                                          args.steps),
                  **phases}
    summary = {p: {c: float(np.mean(series[c][lo:hi])) for c in cols}
               for p, (lo, hi) in phases.items()}
    print("\n" + f"{'phase':>16}  " + "  ".join(f"{c:>14}" for c in cols))
    for p, row in summary.items():
        print(f"{p:>16}  " + "  ".join(f"{row[c]:>14.3f}" for c in cols))
    for a in ("exp3", "exp4"):
        ms = info[a]["models"]
        print(f"{a} final weights: " + ", ".join(f"{m} {ms[m]['weight']:.3f}" for m in models)
              + f"; selections: " + ", ".join(f"{m} {ms[m]['selected']}" for m in models))
    print(f"{args.steps} examples, {args.steps * (len(apps) + 2)} requests in {stream_s:.1f} s; "
          f"default answers: {defaults}")

    result = {"benchmark": "model_selection", "dataset": "sklearn digits", "seed": args.seed,
              "steps": args.steps, "window": args.window, "best_model": best,
              "bad_rollout_step": rollout_step, "offline_accuracy": offline,
              "windows": windows, "phases": summary,
              "final": {a: info[a]["models"] for a in ("exp3", "exp4")},
              "defaults": defaults, "stream_seconds": stream_s, "cpu_count": os.cpu_count()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
