"""Detection quality of evalstream's drift detectors against river's ADWIN and PageHinkley.

    python bench.py EVALSTREAM_BIN [--streams N] [--stable-length N]

Generates synthetic score streams (seeded), feeds the same streams to `evalstream drift-replay`
and to river's detectors with their default settings, and prints one table: per scenario and
detector, the median detection delay (samples after the change), the share of changes missed
within 3,000 samples, and false alarms per 100,000 stable samples (the stable streams, and the
stable part before each change). Every detector is restarted after an alarm: river's reset
themselves, evalstream's series re-baselines (as after an acknowledgement).
"""

import argparse
import math
import subprocess
import sys
import time

import numpy as np
from river import drift

WINDOW = 3_000  # a change not caught within this many samples is missed
CHANGE_AT = 5_000  # stable samples before each change (the warm-up is 500)


def rounded_normal_probabilities(mu, sigma=1.0):
    """P(score = k), k = 1..5, for a normal score rounded and clipped to 1–5."""
    cdf = lambda x: 0.5 * (1 + math.erf((x - mu) / (sigma * math.sqrt(2))))
    edges = [-math.inf, 1.5, 2.5, 3.5, 4.5, math.inf]
    return np.array([cdf(edges[i + 1]) - cdf(edges[i]) for i in range(5)])


def mu_for_mean(target):
    low, high = 0.0, 8.0
    for _ in range(60):
        mid = (low + high) / 2
        mean = float(np.dot(np.arange(1, 6), rounded_normal_probabilities(mid)))
        low, high = (mid, high) if mean < target else (low, mid)
    return (low + high) / 2


def scenarios(rng, streams, stable_length):
    """(name, kind, pass_at, list of streams, change index or None)."""
    def passes(rate, n):
        return (rng.random(n) < rate).astype(float)

    def scores(mean, n):
        p = rounded_normal_probabilities(mu_for_mean(mean))
        return rng.choice(np.arange(1.0, 6.0), size=n, p=p)

    def near_constant(n):
        # A grounding-like score: 0.97 nearly always, one odd 0.2 in about 2,000.
        s = np.full(n, 0.97)
        s[rng.random(n) < 1 / 2000] = 0.2
        return s

    shift = lambda make, before, after: [
        np.concatenate([make(before, CHANGE_AT), make(after, WINDOW)]) for _ in range(streams)
    ]
    stable = lambda make, *args: [make(*args, stable_length) for _ in range(max(streams // 10, 4))]
    return [
        ("pass rate 0.90 → 0.85", 1.0, shift(passes, 0.90, 0.85), CHANGE_AT),
        ("pass rate 0.90 → 0.80", 1.0, shift(passes, 0.90, 0.80), CHANGE_AT),
        ("1–5 score mean 4.3 → 4.0", 4.0, shift(scores, 4.3, 4.0), CHANGE_AT),
        ("stable pass rate 0.90", 1.0, stable(passes, 0.90), None),
        ("stable 1–5 score, mean 4.3", 4.0, stable(scores, 4.3), None),
        ("near-constant score (0.97, rare 0.2)", 0.5, [near_constant(stable_length) for _ in range(max(streams // 10, 4))], None),
    ]


def river_alarms(make, stream):
    detector = make()
    alarms = []
    for i, v in enumerate(stream.tolist()):
        detector.update(v)
        if detector.drift_detected:
            alarms.append(i)
    return alarms


def evalstream_alarms(binary, pass_at, streams):
    text = "\n".join(" ".join(f"{v:g}" for v in s) for s in streams) + "\n"
    out = subprocess.run(
        [binary, "drift-replay", "--pass-at", str(pass_at)],
        input=text.encode(), capture_output=True, check=True,
    ).stdout.decode()
    return [[int(a[:-1]) for a in line.split()] for line in out.splitlines()]


def summarise(alarms_per_stream, streams, change):
    delays, missed, false_alarms, stable_samples = [], 0, 0, 0
    for alarms, stream in zip(alarms_per_stream, streams):
        stable_end = change if change is not None else len(stream)
        stable_samples += stable_end
        false_alarms += sum(1 for a in alarms if a < stable_end)
        if change is not None:
            after = [a - change for a in alarms if change <= a < change + WINDOW]
            if after:
                delays.append(after[0])
            else:
                missed += 1
    return {
        "delay": float(np.median(delays)) if delays else None,
        "missed": missed / len(streams) if change is not None else None,
        "fa": false_alarms / stable_samples * 100_000,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--stable-length", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(20261126)
    detectors = [
        ("evalstream", None),
        ("river ADWIN", drift.ADWIN),
        ("river PageHinkley", drift.PageHinkley),
    ]
    rows = []
    totals = {name: [0, 0] for name, _ in detectors}  # false alarms, stable samples
    for name, pass_at, streams, change in scenarios(rng, args.streams, args.stable_length):
        for detector, make in detectors:
            started = time.time()
            if make is None:
                alarms = evalstream_alarms(args.binary, pass_at, streams)
            else:
                alarms = [river_alarms(make, s) for s in streams]
            result = summarise(alarms, streams, change)
            stable = sum(change if change is not None else len(s) for s in streams)
            totals[detector][0] += result["fa"] * stable / 100_000
            totals[detector][1] += stable
            rows.append((name, detector, result, time.time() - started))
            print(f"  {name}: {detector} done in {time.time() - started:.1f} s", file=sys.stderr)
    samples = {
        name: sum(len(s) for s in streams)
        for name, _, streams, _ in scenarios(np.random.default_rng(0), args.streams, args.stable_length)
    }
    print(f"{args.streams} streams per shift (change after {CHANGE_AT:,} stable samples), "
          f"{max(args.streams // 10, 4)} stable streams of {args.stable_length:,}; budget 100,000 samples")
    print()
    print("| scenario | detector | median delay | missed (3,000) | false alarms / 100k stable |")
    print("|---|---|---|---|---|")
    for name, detector, r, _ in rows:
        delay = "—" if r["delay"] is None else f"{r['delay']:.0f}"
        missed = "—" if r["missed"] is None else f"{r['missed']:.0%}"
        print(f"| {name} | {detector} | {delay} | {missed} | {r['fa']:.2f} |")
    print()
    for name, (fa, stable) in totals.items():
        print(f"{name}: {fa:.0f} false alarms in {stable:,} stable samples = {fa / stable * 100_000:.2f} per 100,000")


if __name__ == "__main__":
    main()
