"""Several stores read as one sequence: what a run that trains on several real events reads.

Real events come as separate stores, on grids of their own (760 x 696, 1224 x 760, ...). A
`StoreSet` lays their frames end to end: frame i of the set is frame i - offset[k] of store k.
Each store is a segment of its own, and a change of store is a change of event, so no window
crosses from one store into the next, and the split deals each store's blocks of time apart
(nowcast.data.windows.split_windows). A set of one store reads exactly as that store.

All stores of a set must have the same time step and quantity: a model learns one step and one
unit. Their grids may differ; whole frames of different stores then never share a batch.

Which stores a data config names is found here too (`resolve_store`, `configured_paths`,
`resolve_stores`), the synthetic set written first where it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, ListConfig

from nowcast.data.store import CodedFrames, Store, StoreError
from nowcast.data.synthetic import write_missing_synthetic_store


def _as_list(value) -> list[str]:
    """A `data.path` or `data.holdout` value as a list of path strings: one, or a list."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(item) for item in value]
    return [str(value)]


def resolve_store(data_cfg: DictConfig) -> Path:
    """The path of the store a data config names (`data.path`); the synthetic set is written
    there first if it is missing (`data.name=synthetic`).

    Raises:
        ValueError: `data.path` is empty.
        FileNotFoundError: a store other than the synthetic one does not exist.
    """
    if not str(data_cfg.path).strip():
        raise ValueError("data.path is empty; set data.path=<store.h5>")
    path = Path(data_cfg.path).expanduser().absolute()
    if path.exists():
        return path
    if data_cfg.name != "synthetic":
        raise FileNotFoundError(
            f"data store not found: {path}; convert your radar files with `nowcast-data convert` "
            "or set data.path=<store.h5>"
        )
    return write_missing_synthetic_store(path, data_cfg.synthetic)


def configured_paths(data_cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(`data.path`, `data.holdout`) as lists of path strings, the held-out stores removed from
    the first where they are listed in both.

    Raises:
        ValueError: an empty path, a store listed twice, or nothing left to train on.
    """
    paths, holdout = _as_list(data_cfg.path), _as_list(data_cfg.get("holdout"))
    for key, values in (("data.path", paths), ("data.holdout", holdout)):
        if any(not value.strip() for value in values):
            raise ValueError(f"{key} is empty; set {key}=<store.h5> or a list of them")
        resolved = [Path(value).expanduser().absolute() for value in values]
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"{key} names a store twice; list each store once. Received: {values}"
            )
    if not paths:
        raise ValueError("data.path is empty; set data.path=<store.h5> or data.path=[a.h5,b.h5]")
    held = {Path(value).expanduser().absolute() for value in holdout}
    training = [value for value in paths if Path(value).expanduser().absolute() not in held]
    if not training:
        raise ValueError(
            "every store of data.path is held out (data.holdout); leave at least one to train on"
        )
    return training, holdout


def resolve_stores(data_cfg: DictConfig) -> tuple[list[Path], list[Path]]:
    """The training stores and the held-out stores a data config names (`configured_paths`),
    as absolute paths; the synthetic set is written first where it is missing.

    Raises:
        ValueError: see `configured_paths`. FileNotFoundError: a store that does not exist.
    """
    training, holdout = configured_paths(data_cfg)
    if len(training) == 1 and not holdout:
        return [resolve_store(data_cfg)], []
    resolved = []
    for value in [*training, *holdout]:
        path = Path(value).expanduser().absolute()
        if not path.exists():
            raise FileNotFoundError(
                f"data store not found: {path}; convert your radar files with `nowcast-data "
                "convert` or correct data.path / data.holdout"
            )
        resolved.append(path)
    return resolved[: len(training)], resolved[len(training) :]


class StoreSet:
    """Stores read as one sequence of frames (see the module docstring).

    Args:
        paths: the stores (paths, or stores already open), in order; the first sets the time
            step and quantity.
        holdout: how many of the last `paths` are held out whole (their windows all go to the
            test split).

    Raises:
        StoreError: a store that cannot be opened, or one whose time step or quantity differs
            from the first's.
    """

    def __init__(self, paths: Sequence[str | os.PathLike | Store], *, holdout: int = 0) -> None:
        if not paths:
            raise ValueError("a StoreSet needs at least one store")
        self.members = [path if isinstance(path, Store) else Store(path) for path in paths]
        first = self.members[0]
        for store in self.members[1:]:
            for what, value, expected in (
                ("a time step of", *(f"{s.minutes_per_frame:g} min" for s in (store, first))),
                ("quantity", store.quantity, first.quantity),
            ):
                if value != expected:
                    raise StoreError(
                        f"{store.path} has {what} {value}, but {first.path} has {expected}; "
                        "train on stores of one time step and quantity: leave the store out, "
                        "or train it in a run of its own"
                    )
        self.holdout = holdout
        lengths = [len(store) for store in self.members]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.segments = np.repeat(np.arange(len(self.members)), lengths)
        self.times = np.concatenate([store.times for store in self.members])
        if len(self.members) == 1:
            self.events = first.events
        else:
            # An event id unique across stores: a change of store is a change of event.
            self.events = np.concatenate(
                [
                    np.zeros(len(store), np.int64)
                    if store.events is None
                    else np.unique(store.events, return_inverse=True)[1].astype(np.int64)
                    for store in self.members
                ]
            )
            self.events = self.events + np.repeat(self.offsets[:-1], lengths)

    @property
    def split_events(self) -> np.ndarray | None:
        """(T,) the stores' own events, for the split to keep each whole (None: no store has
        events). Unlike `events`, a store without events is not one event: each of its frames
        is one, so its blocks of time are dealt apart."""
        if all(store.events is None for store in self.members):
            return None
        if len(self.members) == 1:
            return self.events
        return (
            np.concatenate(
                [
                    np.arange(len(store)) if store.events is None else store.events
                    for store in self.members
                ]
            ).astype(np.int64)
            * len(self.members)
            + self.segments
        )

    @property
    def paths(self) -> list[Path]:
        return [store.path for store in self.members]

    @property
    def path(self) -> str:
        """The stores, for messages."""
        return ", ".join(str(path) for path in self.paths)

    @property
    def minutes_per_frame(self) -> float:
        return self.members[0].minutes_per_frame

    @property
    def quantity(self) -> str:
        return self.members[0].quantity

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each store's frames."""
        return [tuple(store.shape[1:]) for store in self.members]

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        """(H, W) shared by every store, or None when their grids differ."""
        return self.shapes[0] if len(set(self.shapes)) == 1 else None

    @property
    def held_out(self) -> np.ndarray:
        """(T,) bool: the frame belongs to a store held out whole."""
        return self.segments >= len(self.members) - self.holdout

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(store number, frame index in that store) of frame `index` of the set."""
        member = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return member, int(index - self.offsets[member])

    def per_frame(self, values: Sequence[np.ndarray]) -> np.ndarray:
        """One (T_k,) array per store, end to end."""
        return np.concatenate(list(values))

    def wet_fraction(self, threshold: float) -> np.ndarray:
        return self.per_frame([store.wet_fraction(threshold) for store in self.members])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames start..stop-1 of one store, as `Store.read` gives them."""
        return self.read_coded(start, stop).decode()

    def read_coded(self, start: int, stop: int) -> CodedFrames:
        """Frames start..stop-1 of one store, as `Store.read_coded` gives them."""
        member, local = self.locate(start)
        if stop > self.offsets[member + 1]:
            raise ValueError(
                f"frames {start}..{stop - 1} cross from {self.members[member].path} into the "
                "next store; a window lies in one store"
            )
        return self.members[member].read_coded(local, local + (stop - start))

    def close(self) -> None:
        for store in self.members:
            store.close()

    def __enter__(self) -> StoreSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StoreSet({[str(p) for p in self.paths]!r})"
