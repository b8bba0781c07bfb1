#!/usr/bin/env python3
"""Fits the offline provider's confidence (`confidence` in offline/src/model.rs).

    target/release/reaper-bench eval-offline --seed 2 --cuts-per-file 40 --features-csv rows.csv \
        --crate tokio --crate rustls --crate quinn-proto --crate hyper --crate regex-automata \
        --crate clap_builder --crate syn --crate rkyv --crate futures-util --crate serde \
        --crate h2 --crate tracing-subscriber --crate reqwest --crate ring --crate regex-syntax \
        --crate bytes --crate mio
    python3 offline/fit_confidence.py rows.csv

Logistic regression of "exactly the rest of the line" on five figures of the evidence, fitted
on the answers of the crates in FIT, checked on the others: prints the weights, then per crate
the share of requests answered at confidence >= 0.5 and how many of those were exact, then the
calibration (answers and exact share per confidence decile) of the fitted and the held-out
crates. Plain Python, no numpy; about a minute.
"""
import csv
import math
import sys

FIT = ["tokio", "rustls", "quinn-proto", "hyper", "regex-automata", "clap_builder", "syn",
       "rkyv", "futures-util"]
NAMES = ["bias", "majority", "share", "ln matched", "ln(1 + total)", "ln(1 + proposed)"]


def features(r):
    return [1.0, r["majority"], r["weight"] / r["total"], math.log(r["matched"]),
            math.log1p(r["total"]), math.log1p(r["text_len"])]


def fit(rows, iters=2500, rate=0.8, l2=1e-3):
    """Gradient descent on standardized features; returns weights of the raw features."""
    xs = [features(r) for r in rows]
    ys = [r["exact"] for r in rows]
    d, n = len(xs[0]), len(xs)
    mu = [0.0] + [sum(x[j] for x in xs) / n for j in range(1, d)]
    sd = [1.0] + [math.sqrt(sum((x[j] - mu[j]) ** 2 for x in xs) / n) or 1.0
                  for j in range(1, d)]
    zs = [[(x[j] - mu[j]) / sd[j] for j in range(d)] for x in xs]
    w = [0.0] * d
    for _ in range(iters):
        g = [0.0] * d
        for z, y in zip(zs, ys):
            p = 1 / (1 + math.exp(-sum(a * b for a, b in zip(w, z))))
            for j in range(d):
                g[j] += (p - y) * z[j]
        for j in range(d):
            w[j] -= rate * (g[j] / n + (l2 * w[j] if j else 0.0))
    raw = [w[j] / sd[j] for j in range(d)]
    raw[0] = w[0] - sum(w[j] * mu[j] / sd[j] for j in range(1, d))
    return raw


def confidence(w, r):
    return 1 / (1 + math.exp(-sum(a * b for a, b in zip(w, features(r)))))


def main(path):
    crates = {}
    for r in csv.DictReader(open(path)):
        for k, v in r.items():
            if k != "crate":
                r[k] = float(v) if v else None
        crates.setdefault(r["crate"], []).append(r)
    w = fit([r for c in FIT for r in crates.get(c, []) if r["answered"]])
    print("weights:", ", ".join(f"{n} {x:+.2f}" for n, x in zip(NAMES, w)))
    for name, rows in crates.items():
        shown = [r for r in rows if r["answered"] and confidence(w, r) >= 0.5]
        exact = sum(r["exact"] for r in shown)
        print(f"{name:20} {'fit ' if name in FIT else 'held'} at >= 0.5: answered "
              f"{100 * len(shown) / len(rows):5.1f}%, exact {100 * exact / max(1, len(shown)):5.1f}%")
    for group, names in (("fit", FIT), ("held", [c for c in crates if c not in FIT])):
        deciles = [[0, 0] for _ in range(10)]
        for r in (r for c in names for r in crates.get(c, []) if r["answered"]):
            d = deciles[min(9, int(confidence(w, r) * 10))]
            d[0] += 1
            d[1] += r["exact"]
        print(group, " ".join(f"{i / 10:.1f}: {n} {100 * e / max(1, n):.0f}%"
                              for i, (n, e) in enumerate(deciles)))


if __name__ == "__main__":
    main(sys.argv[1])
