"""Sharded scoring: which windows a shard scores, and which shards a merge takes.

`nowcast-evaluate shard=i/n` scores the i-th of n equal stretches of the windows (in store
order, so a shard reads one part of the store), and writes its raw totals to
`<shards_dir>/shard-<i>-of-<n>/shard.json`; `merge=true` sums the n shards into the outputs one
process would have written. This module holds the parts that need neither TensorFlow nor the
store, so that the command line checks `shard=` before TensorFlow loads: parsing `shard=`,
which windows a shard takes (`shard_windows`), what shard.json holds (`shard_record`,
`shard_totals`), and checking that a folder of shard files holds every shard once, all scored
alike. nowcast.evaluation runs these steps.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nowcast.run import Windows

log = logging.getLogger(__name__)

SHARD_FILE = "shard.json"
SHARD_FORMAT = "nowcast evaluation shard, version 1"
_SHARD = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def folder_name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def takes(self, n_windows: int) -> np.ndarray:
        """(N,) bool: which of N windows, in store order, the shard scores.

        Equal stretches, not whole runs of consecutive windows: a year of radar with no gap
        is one run. The bootstrap still draws runs whole, as the merge adds the counts a run
        has in each shard.
        """
        first, end = (n_windows * k // self.count for k in (self.index, self.index + 1))
        windows = np.arange(n_windows)
        return (windows >= first) & (windows < end)


def parse_shard(text: str | None) -> Shard | None:
    """`shard=i/n` as a Shard; None when unset.

    Raises:
        ValueError: anything but two integers with 0 <= i < n.
    """
    if text is None:
        return None
    match = _SHARD.fullmatch(str(text).strip())
    if match is None or int(match[1]) >= int(match[2]):
        raise ValueError(
            "shard must be i/n with 0 <= i < n, e.g. shard=0/4 for the first of 4 shards. "
            f"Received: shard={text!r}"
        )
    return Shard(int(match[1]), int(match[2]))


def check_shard_options(shard: str | None, merge: bool) -> Shard | None:
    """The shard to score, after checking `shard=` and `merge=` (see `parse_shard`).

    Raises:
        ValueError: a bad `shard=`, or both options at once.
    """
    parsed = parse_shard(shard)
    if parsed is not None and merge:
        raise ValueError(
            "shard= and merge=true are two steps: score each shard with shard=i/n, then merge "
            f"them with merge=true and no shard=. Received: shard={shard!r} merge=true"
        )
    return parsed


def shard_windows(
    shard: Shard, windows: Windows, runs: np.ndarray, store_of_window: np.ndarray
) -> tuple[Windows, np.ndarray, np.ndarray]:
    """The windows `shard` scores, their run ids, counted over all windows as a merge counts
    them, and their stores.

    Raises:
        ValueError: fewer windows than shards (a shard would get none).
    """
    if runs.size < shard.count:
        raise ValueError(
            f"shard={shard}: there are {runs.size} windows to score, fewer than the "
            f"{shard.count} shards; score them in shard=i/{runs.size} at most"
        )
    order = np.argsort(windows.starts, kind="stable")
    takes = np.zeros(runs.size, bool)
    takes[order[shard.takes(runs.size)]] = True
    log.info("Shard %s: %d of the %d windows", shard, takes.sum(), runs.size)
    return replace(windows, starts=windows.starts[takes]), runs[takes], store_of_window[takes]


def shard_record(
    shard: Shard,
    *,
    scored: dict,
    per_store: dict[int, dict],
    several_stores: bool,
    windows: int,
    precision: str,
) -> dict:
    """shard.json: what was scored (`scored`), which shard, and each method's totals, per-run
    counts among them (`VerificationAccumulator.to_record`); of several stores, per store.

    Args:
        per_store: store index -> method -> its accumulator.
        windows: how many windows the shard scored.
        precision: the dtype policy of the model's forward pass.
    """
    record = {
        "format": SHARD_FORMAT,
        "shard": {"index": shard.index, "count": shard.count, "windows": windows},
        "scored": scored,
        "model_precision": precision,
    }
    totals = {
        str(member): {name: acc.to_record() for name, acc in accumulators.items()}
        for member, accumulators in per_store.items()
    }
    if several_stores:
        record["stores"] = totals
    else:  # as shards of one store have always been written
        record["accumulators"] = totals["0"]
    return record


def shard_totals(record: dict) -> dict[str, dict]:
    """A shard's totals per store (by its place in the list); a shard of one store holds them
    under `accumulators`."""
    return record["stores"] if "stores" in record else {"0": record["accumulators"]}


def read_shards(folder: Path) -> list[tuple[Path, dict]]:
    """Every shard file in the subfolders of `folder`, as (folder of the shard, its record).

    Raises:
        FileNotFoundError: no shard file there.
        ValueError: a file that is not a shard file.
    """
    files = sorted(folder.glob(f"*/{SHARD_FILE}"))
    if not files:
        raise FileNotFoundError(
            f"no shards to merge in {folder}; score them first with shard=i/n (the same "
            "command, once per i), or point shards_dir= at their folder"
        )
    shards = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            record, reason = None, str(err)
        else:
            reason = "it was written by another version of nowcast"
        if not isinstance(record, dict) or record.get("format") != SHARD_FORMAT:
            raise ValueError(
                f"{path} is not a shard file that this nowcast reads ({reason}); score that "
                "shard again with overwrite=true"
            )
        shards.append((path.parent, record))
    return shards


def _first_difference(theirs, ours, key: str = "") -> tuple[str, object, object] | None:
    """The first dotted key where two JSON values differ, with both values; None if equal."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in [*ours, *(k for k in theirs if k not in ours)]:
            found = _first_difference(
                theirs.get(name), ours.get(name), f"{key}.{name}" if key else name
            )
            if found:
                return found
        return None
    return None if theirs == ours else (key, theirs, ours)


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def check_shards(shards: list[tuple[Path, dict]], scored: dict, folder: Path) -> list[dict]:
    """The records of shards 0 ... n-1 of one sharding, in order, after checking that each was
    scored as `scored` describes (run, checkpoint and its content, store, windows, settings,
    methods) and that every shard is there once.

    Args:
        shards: (shard folder, record) pairs, from `read_shards`.
        scored: what the merge's own settings score, as the shards record it (JSON values).
        folder: where the shards were found, for the messages.

    Raises:
        ValueError: shards of different shardings, a shard scored otherwise, a shard twice,
            or a missing shard.
    """
    counts = sorted({record["shard"]["count"] for _, record in shards})
    if len(counts) > 1:
        raise ValueError(
            f"{folder} holds shards of {' and of '.join(map(str, counts))} shards: remove the "
            "folders of the sharding you do not mean (shard-<i>-of-<n>), then merge again"
        )
    for path, record in shards:
        difference = _first_difference(record["scored"], scored)
        if difference is None:
            continue
        key, theirs, ours = difference
        if key == "checkpoint_sha256":
            what = f"the checkpoint {scored['checkpoint']} changed after {path.name} was scored"
        else:
            what = f"its {key} is {_short(theirs)}, this merge's is {_short(ours)}"
        raise ValueError(
            f"{path} was scored otherwise than this merge's settings: {what}; merge with the "
            "settings the shards were scored with, or score that shard again with overwrite=true"
        )
    count = counts[0]
    by_index: dict[int, list[tuple[Path, dict]]] = {}
    for path, record in shards:
        by_index.setdefault(record["shard"]["index"], []).append((path, record))
    for index, found in sorted(by_index.items()):
        if len(found) > 1:
            names = ", ".join(path.name for path, _ in found)
            raise ValueError(
                f"shard {index}/{count} is in {folder} {len(found)} times ({names}); "
                "remove all but one, then merge again"
            )
    missing = [index for index in range(count) if index not in by_index]
    if missing:
        listed = ", ".join(f"shard={index}/{count}" for index in missing)
        raise ValueError(
            f"{len(missing)} of the {count} shards missing from {folder}: score them with "
            f"{listed}, then merge again"
        )
    return [by_index[index][0][1] for index in range(count)]
