"""Experiment: does choosing calibration runs by the model's uncertainty beat stratified sampling?

    python benchmarks/hpm_active_learning.py [--config tiny] [--seeds 3]

Offline, on runs the history already holds (so no RTL runs): the pool is every current-feature
calibration run of one configuration.  Three ways of choosing which runs a calibration of N runs
would have made are compared by the held-out-family error (leave-one-family-out, as ``braze bench
hpm``) of a model trained on the chosen runs only:

* ``stratified`` -- the calibration's own kernel order (kernels round-robin over intensity/burst
  buckets), each kernel under every backpressure level, truncated at N;
* ``random`` -- a seeded shuffle of the pool;
* ``uncertainty`` -- active learning: start from the first quarter of the stratified order, then
  repeatedly train a model with its 10%..90% band on what was chosen and add the runs whose band
  is widest relative to the prediction, in batches of 10% of N.

Each family's held-out error counts only runs of that family that were *not* chosen, so that no
strategy is scored on its own training rows.
"""

from __future__ import annotations

import argparse
import random

import numpy as np

from braze.sw.hpm import HistoryStore, PerformanceModel
from braze.sw.hpm.features import FEATURE_VERSION
from braze.sw.hpm.model import error_pct


def held_out_error(chosen, pool) -> tuple[float, float]:
    """MAPE and worst error over every family, each predicted by a model that never saw the family."""
    chosen_ids = {record.id for record in chosen}
    errors = []
    for family in sorted({record.family for record in pool}):
        train = [record for record in chosen if record.family != family]
        test = [record for record in pool if record.family == family and record.id not in chosen_ids]
        if len(train) < 20 or not test:
            continue
        model = PerformanceModel("lightgbm").fit(train, band=False)
        predictions = model.predict_features([record.features for record in test])
        errors += [abs(error_pct(p.cycles, r.cycles)) for p, r in zip(predictions, test, strict=True)]
    return float(np.mean(errors)), float(np.max(errors))


def uncertainty_order(pool, size: int, seed_share: float = 0.25, batch_share: float = 0.1):
    chosen = pool[:max(20, int(size * seed_share))]
    rest = pool[len(chosen):]
    while len(chosen) < size and rest:
        model = PerformanceModel("lightgbm").fit(chosen)
        predictions = model.predict_features([record.features for record in rest])
        width = np.array([(p.high - p.low) / max(p.cycles, 1.0) for p in predictions])
        take = min(size - len(chosen), max(1, int(size * batch_share)))
        order = np.argsort(-width)
        picked = set(order[:take].tolist())
        chosen = chosen + [rest[i] for i in sorted(picked)]
        rest = [record for i, record in enumerate(rest) if i not in picked]
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    pool = [record for record in HistoryStore().records(config_name=args.config, device="verilator")
            if record.source == "calibrate" and record.features.get("feature_version") == FEATURE_VERSION]
    # The calibration's stratified order, kernel-major: kernels in the order the history first saw
    # them (calibration order), each with its runs under every backpressure level.
    kernels: dict[str, list] = {}
    for record in pool:
        kernels.setdefault(record.signature_hash, []).append(record)
    pool = [record for runs in kernels.values() for record in runs]
    print(f"pool: {len(pool)} calibration runs of {args.config} ({len(kernels)} kernels)")
    print(f"{'runs':>5} {'stratified':>16} {'random':>16} {'uncertainty':>16}   (held-out MAPE / worst, %)")
    for share in (0.2, 0.35, 0.5):
        size = int(len(pool) * share)
        cells = [held_out_error(pool[:size], pool)]
        randoms, actives = [], []
        for seed in range(args.seeds):
            shuffled = pool[:]
            random.Random(seed).shuffle(shuffled)
            randoms.append(held_out_error(shuffled[:size], pool))
            # Active learning starts from the stratified prefix, and picks from the rest in a seeded order.
            seed_rows = pool[:max(20, size // 4)]
            rest = [record for record in shuffled if record not in seed_rows]
            actives.append(held_out_error(uncertainty_order(seed_rows + rest, size), pool))
        cells += [tuple(np.mean(randoms, axis=0)), tuple(np.mean(actives, axis=0))]
        print(f"{size:5d} " + " ".join(f"{mape:8.2f} / {worst:5.1f}" for mape, worst in cells))


if __name__ == "__main__":
    main()
