"""Peak memory of a training-like read of a large store, against a small one (issue 4, "Scale").

Writes a store of a few GB from the synthetic generator, then reads every training window of it
through the tf.data pipeline that training uses (window selection, bounded shuffle buffer,
parallel reads, prefetch), in a child process measured with `/usr/bin/time -v`; the same read
of a store a hundred times smaller gives the baseline. If memory does not grow with the store,
the two peaks are about equal, and both far below the size of the large store.

The large store repeats a block of unique synthetic frames (the generator makes ~80 frames/s of
128 x 128 on 2 cores, too slow for millions), with later times: the same compression, the same
reads, a different time for every frame.

    python scripts/measure_store_memory.py [--gigabytes 3] [--size 128] [--folder data/scale]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nowcast.config import DataConfig, SyntheticConfig
from nowcast.data.synthetic import START_TIME, iter_synthetic_frames, synthetic_store_writer

UNIQUE_DAYS = 2
WINDOW_IN, WINDOW_OUT, BATCH = 5, 12, 8


def write_scale_store(path: Path, cfg: SyntheticConfig, frames: int, block: np.ndarray) -> None:
    """`frames` frames cycling through `block` (n, H, W) dBZ, 5 minutes apart."""
    step = round(cfg.minutes_per_frame * 60)
    start = int(START_TIME.astype(np.int64))
    with synthetic_store_writer(path, cfg, overwrite=True) as writer:
        for first in range(0, frames, len(block)):
            n = min(len(block), frames - first)
            writer.append(block[:n], start + step * np.arange(first, first + n, dtype=np.int64))


def read_all_training_windows(path: Path) -> None:
    """The read side of `nowcast-train` on this store: every training window, once."""
    from omegaconf import OmegaConf

    from nowcast.data.pipeline import WindowReader, make_dataset, select_windows
    from nowcast.data.store import Store

    data_cfg = OmegaConf.structured(DataConfig(name="scale", path=str(path)))
    data_cfg.n_in, data_cfg.n_out, data_cfg.batch_size = WINDOW_IN, WINDOW_OUT, BATCH
    data_cfg.stride = WINDOW_IN + WINDOW_OUT  # every frame read once per epoch
    started = time.perf_counter()
    with Store(path) as store:
        selection = select_windows(store, data_cfg)
    train = selection.starts["train"]
    reader = WindowReader(
        path, train, n_in=WINDOW_IN, n_out=WINDOW_OUT, norm=data_cfg.normalisation, seed=0,
        augment=True,
    )  # fmt: skip
    dataset = make_dataset(reader, batch_size=BATCH, shuffle=True)
    windows = 0
    for inputs, _ in dataset:
        windows += int(inputs.shape[0])
    seconds = time.perf_counter() - started
    frames = windows * (WINDOW_IN + WINDOW_OUT)
    rate = frames / seconds
    print(f"read {windows} windows ({frames} frames) in {seconds:.0f} s: {rate:.0f} frames/s")


def measure(path: Path) -> tuple[float, str]:
    """Peak RSS (MB) of a child process that reads the store, and its own report."""
    done = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, __file__, "--read", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"the read of {path} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return peak_kb / 1024, done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=3.0, help="size of the large store")
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--folder", type=Path, default=Path("data/scale"))
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the measured child
    args = parser.parse_args()
    if args.read:
        read_all_training_windows(args.read)
        return

    args.folder.mkdir(parents=True, exist_ok=True)
    unique = 288 * UNIQUE_DAYS
    cfg = SyntheticConfig(frames=unique, height=args.size, width=args.size, seed=0)
    started = time.perf_counter()
    block = np.concatenate([frames for frames, _ in iter_synthetic_frames(cfg)])
    print(f"generated {unique} unique frames of {args.size} x {args.size} in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    small = args.folder / "small.h5"
    write_scale_store(small, cfg, 4 * unique, block)
    bytes_per_frame = small.stat().st_size / (4 * unique)
    frames = int(args.gigabytes * 1e9 / bytes_per_frame)
    large = args.folder / "large.h5"
    started = time.perf_counter()
    write_scale_store(large, cfg, frames, block)
    seconds = time.perf_counter() - started
    print(f"wrote {large}: {frames} frames ({frames / 288:.0f} days), "
          f"{large.stat().st_size / 1e9:.2f} GB in {seconds:.0f} s")  # fmt: skip

    for path in (small, large):
        peak_mb, report = measure(path)
        size_gb = path.stat().st_size / 1e9
        print(f"{path.name}: {size_gb:.3f} GB on disk, peak RSS {peak_mb:.0f} MB; {report}")


if __name__ == "__main__":
    main()
