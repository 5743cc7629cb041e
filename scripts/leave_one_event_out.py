"""Leave one event out: train on every event but one, score the one left out, rotate, pool.

Windows of one event are not independent, so a model is judged on events it never trained on.
For each store given, this trains `nowcast-train` on all the stores with that one held out whole
(`data.holdout`, so every window of it goes to the test split and the others give none), scores
the test split with `nowcast-evaluate`, and then prints one table per score: each held-out event
and the contingency counts of all of them pooled (counts added first, then scored, never a mean
of the events' scores). A fold whose run or evaluation already exists is not run again, so an
interrupted study continues where it stopped.

Usage (not a test: it reads real radar, trains a model per event and takes about as long as the
recipe times the number of events):

    .venv/bin/python scripts/leave_one_event_out.py --out logs/loeo \\
        --stores knmi.h5 fmi.h5 mch-2015-05-15.h5 mch-2017-01-31.h5 \\
        --train experiment=real_radar init=logs/train/<synthetic run> \\
        --evaluate 'baselines=[persistence,optical_flow,block_matching,sprog]'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nowcast.metrics import CONTINGENCY_FIELDS, categorical_scores

SCRIPTS = Path(sys.executable).parent


def _run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _fold(out: Path, stores: list[Path], held_out: Path, train: list[str], evaluate: list[str]):
    """Train and score one fold; returns the held-out store's metrics.json."""
    run_dir = out / held_out.stem
    store_list = ",".join(str(path) for path in stores)
    if not (run_dir / "model.keras").exists():
        _run(
            [
                str(SCRIPTS / "nowcast-train"),
                f"data.path=[{store_list}]",
                f"data.holdout=[{held_out}]",
                "data.split.test_fraction=0",
                f"hydra.run.dir={run_dir}",
                *train,
            ]
        )
    scores = run_dir / "evaluation" / "metrics.json"
    if not scores.exists():
        _run(
            [
                str(SCRIPTS / "nowcast-evaluate"),
                f"run={run_dir}",
                "split=test",
                f"paths.output_dir={scores.parent}",
                *evaluate,
            ]
        )
    return json.loads(scores.read_text())


def _counts(record: dict, method: str) -> np.ndarray:
    """(lead times, thresholds, 4) contingency counts of one method."""
    table = record["methods"][method]["contingency"]
    return np.stack([np.asarray(table[name], dtype=np.float64) for name in CONTINGENCY_FIELDS], -1)


def report(records: dict[str, dict], thresholds_mmh: list[float]) -> str:
    """Markdown tables: mean CSI over lead times, and the frequency bias's range over lead
    times, per method, per held-out event and pooled."""
    first = next(iter(records.values()))
    methods = list(first["methods"])
    columns = [*records, "pooled"]
    counts = {
        method: {event: _counts(record, method) for event, record in records.items()}
        for method in methods
    }
    for method in methods:
        counts[method]["pooled"] = sum(counts[method][event] for event in records)
    ladder = list(first["thresholds"])
    picked = [ladder.index(t) for t in thresholds_mmh]
    head = " | ".join(f"{event} >={t:g}" for event in columns for t in thresholds_mmh)
    rule = "|---" * (1 + len(columns) * len(thresholds_mmh)) + "|"

    def table(title: str, cell) -> list[str]:
        """One row per method; `cell` formats a score name -> (lead times,) mapping."""
        lines = [title, "", f"| | {head} |", rule]
        for method in methods:
            cells = []
            for event in columns:
                scores = categorical_scores(counts[method][event])
                cells += [cell({name: v[:, k] for name, v in scores.items()}) for k in picked]
            lines.append(f"| {method} | {' | '.join(cells)} |")
        return lines

    lines = table("Mean CSI over lead times:", lambda s: f"{np.nanmean(s['csi']):.3f}")
    lines += [""] + table(
        "Frequency bias, lowest-highest over lead times:",
        lambda s: f"{np.nanmin(s['bias']):.2f}-{np.nanmax(s['bias']):.2f}",
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="one run folder per event here")
    parser.add_argument("--train", nargs="*", default=[], help="nowcast-train overrides")
    parser.add_argument("--evaluate", nargs="*", default=[], help="nowcast-evaluate overrides")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[1.0, 5.0, 10.0])
    args = parser.parse_args()
    if len(args.stores) < 2:
        parser.error("give at least two stores: one is held out, the others train")
    missing = [str(path) for path in args.stores if not path.is_file()]
    if missing:
        parser.error(f"no such store: {', '.join(missing)}")
    stores = [path.absolute() for path in args.stores]
    records = {
        path.stem: _fold(args.out.absolute(), stores, path, args.train, args.evaluate)
        for path in stores
    }
    print(report(records, args.thresholds))


if __name__ == "__main__":
    main()
