"""The README's commands, run as written: the lines of its ```bash blocks are read from README.md
itself and run through the installed console scripts, with only their paths replaced by tiny
data of the same kind (a folder of KNMI files, a run of the default model).

The lines of a section run in the README's order, in a folder that stands for the repository
root, so relative paths such as data/knmi.h5 stay as written. A section with more or fewer
lines than its test knows fails, so that a new line is run or skipped on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from data.radar_files import write_knmi
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nowcast.config import SyntheticConfig, config_dir, register_configs
from nowcast.data.store import Store
from nowcast.data.synthetic import iter_synthetic_frames, synthetic_store_writer

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
RUN_NAME = "2026-11-23_10-00-00"  # logs/train/<date_time>, as in the README's example

# KNMI's grid, so that the README's crop.height=760 crop.width=696 fits as on real files.
KNMI_ROWS, KNMI_COLUMNS = 765, 700
KNMI_MISSING = 65535
# Radar coverage: a square in the middle and no data elsewhere (cheap to write), wide enough
# for the fine-tune's 128-pixel patches to find half of theirs valid.
COVERAGE_HALF = 96
KNMI_START = datetime(2010, 8, 26, tzinfo=timezone.utc)  # the pysteps KNMI day's date
# Stretches of one window each (5 inputs and 12 lead times of 5 minutes) every 3 hours: 5
# windows in 13.5 hours. The evaluate line scores every window at 760 x 696, seconds each, and
# the fine-tune's split needs 5 blocks of time with a window (train, train, val, train, test at
# the default 15 % for val and test), so 5 is as few as will do. 13.5 hours is one block of the
# former fixed 24 hours: the fine-tune splits it only with blocks chosen from the archive.
KNMI_STRETCHES, KNMI_STRETCH_FRAMES, KNMI_STRETCH_HOURS = 5, 17, 3

# The tiny run's store: 24 hours of the synthetic set's 32 x 32 frames from 22:00, so that in
# blocks of 4 hours (train, train, val, train, test, train) the test split holds 2024-06-03
# 14:00-18:00, where the README's plot line draws the window issued at 14:30.
TINY_SYNTHETIC = SyntheticConfig(frames=288, height=32, width=32, seed=0)
TINY_START = datetime(2024, 6, 2, 22, tzinfo=timezone.utc)


def readme_commands(heading: str, expected: int) -> list[str]:
    """The command lines of the ```bash blocks under `## heading`, as a user copies them:
    trailing comments cut off. Fails unless there are `expected` lines, naming them."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end > 0 else None]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            command = re.sub(r"(^|\s+)#.*", "", line).strip()
            if command:
                lines.append(command)
    assert len(lines) == expected, (
        f"README.md '{heading}' has {len(lines)} command lines, the test knows {expected}: run "
        f"or skip the new ones there: {lines}"
    )
    return lines


def default_form(line: str) -> str:
    """`line` as its defaults: the `[optional ...]` words left out."""
    return re.sub(r"\s+\[[^\]]*\]", "", line)


@dataclass
class Checkout:
    """A folder standing for the repository root, where the README's lines run: `.venv` links
    to the venv running the tests and `logs/train/<RUN_NAME>` is a run of the default model;
    `knmi`, outside it, is a folder of KNMI files."""

    root: Path
    knmi: Path
    done: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.root / "logs" / "train" / RUN_NAME

    def substitute(self, line: str) -> str:
        """`line` with its paths made ours, and nothing else of it changed."""
        run = f"logs/train/{RUN_NAME}"
        for placeholder, path in [
            ("/data/knmi/", f"{self.knmi}/"),
            ("/data/radar/latest/", f"{self.knmi}/"),
            ("logs/train/<date_time>", run),
            ("logs/train/<run>", run),
            ("<a run>", run),
            ("<run>", run),
        ]:
            line = line.replace(placeholder, path)
        assert "<" not in line, f"a placeholder the test does not replace: {line}"
        return line

    def run(self, line: str, *appended: str) -> subprocess.CompletedProcess:
        """Run a README line, with `appended` overrides, through the venv's console script.

        A line runs once: the same line in two sections, or one that a section needs from
        another (the conversion), gives the first result again.
        """
        words = [*shlex.split(self.substitute(line)), *appended]
        assert words[0].startswith("nowcast-"), f"not a console script: {line}"
        key = shlex.join(words)
        if key not in self.done:
            if words[0] == "nowcast-evaluate":
                self.set_evaluations_aside()
            self.done[key] = subprocess.run(
                [str(BIN / words[0]), *words[1:]],
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=600,
            )
        return self.done[key]

    def set_evaluations_aside(self) -> None:
        """Move earlier evaluations away: each evaluate line scores a run afresh, and a run
        keeps the evaluation it has unless overwrite=true (docs/evaluation.md)."""
        for folder in (self.root / "logs" / "train").glob("*/evaluation"):
            folder.rename(folder.with_name(f"evaluation-{len(self.done)}"))


def ok(done: subprocess.CompletedProcess) -> bool:
    return done.returncode == 0


def report(done: subprocess.CompletedProcess) -> str:
    return f"{shlex.join(done.args)}\nexit status {done.returncode}\n{done.stderr[-3000:]}"


def write_knmi_folder(folder: Path) -> None:
    """RAD_NL25_RAP_5min files of KNMI's size: a rain cell of up to 20 mm/h moving east a
    pixel a frame in the coverage square, 0 mm in the rest of it."""
    folder.mkdir()
    rows, columns = np.ogrid[:KNMI_ROWS, :KNMI_COLUMNS]
    middle_row, middle_column = KNMI_ROWS // 2, KNMI_COLUMNS // 2
    covered = (np.abs(rows - middle_row) < COVERAGE_HALF) & (
        np.abs(columns - middle_column) < COVERAGE_HALF
    )
    for stretch in range(KNMI_STRETCHES):
        for k in range(KNMI_STRETCH_FRAMES):
            end = KNMI_START + timedelta(hours=KNMI_STRETCH_HOURS * stretch, minutes=5 * k)
            distance2 = (rows - middle_row) ** 2 + (columns - middle_column + 40 - k) ** 2
            rain_mmh = 20.0 * np.exp(-distance2 / (2 * 25.0**2))
            pixels = np.where(covered, np.round(rain_mmh / 12 * 100), KNMI_MISSING)  # 0.01 mm
            name = f"RAD_NL25_RAP_5min_{end:%Y%m%d%H%M}.h5"
            write_knmi(folder / name, pixels.astype(np.uint16), end)


def train_tiny_run(root: Path) -> Path:
    """A run of the default model (the fine-tune's init= refuses another architecture) on
    32 x 32 synthetic frames, trained for one step, in logs/train/<RUN_NAME>."""
    from nowcast.training import train

    store = root / "data" / "tiny_synthetic.h5"
    store.parent.mkdir()
    offset = int((TINY_START - datetime(2024, 6, 1, tzinfo=timezone.utc)).total_seconds())
    with synthetic_store_writer(store, TINY_SYNTHETIC) as writer:
        for frames, times in iter_synthetic_frames(TINY_SYNTHETIC):
            writer.append(frames, times + offset)
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=[
                    f"paths.output_dir={root / 'logs' / 'train' / RUN_NAME}",
                    f"paths.data_dir={store.parent}",
                    f"data.path={store}",
                    "data.patch_size=null",  # whole frames: 32 x 32 is less than a patch
                    "data.batch_size=2",
                    "data.split.block_hours=4",  # see TINY_START
                    "trainer.epochs=1",
                    "trainer.steps_per_epoch=1",
                    "trainer.validation_steps=1",
                    "trainer.image_samples=0",
                    "trainer.verbose=0",
                ],
            )
        OmegaConf.resolve(cfg)
        return train(cfg).run_dir
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Checkout:
    root = tmp_path_factory.mktemp("checkout")
    (root / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    knmi = tmp_path_factory.mktemp("radar") / "knmi"
    write_knmi_folder(knmi)
    assert train_tiny_run(root) == root / "logs" / "train" / RUN_NAME
    return Checkout(root=root, knmi=knmi)


def test_evaluating_a_run(checkout):
    own, other_store, make_evaluate, shards, merge = readme_commands("Evaluating a run", 5)
    # Not run here: other_store scores 760 x 696 frames, in test_scoring_a_converted_store
    # (slow). Not run at all: shards submits a SLURM job per shard (it needs a cluster), and
    # merge merges what they wrote; tests/test_sharding.py scores shards and merges them.
    assert "data.path=data/knmi.h5 split=all" in other_store
    assert "hydra/launcher=slurm" in shards and "merge=true" in merge

    done = checkout.run(default_form(own))
    assert ok(done), report(done)
    assert f"Evaluation written to {checkout.run_dir / 'evaluation'}" in done.stdout
    record = json.loads((checkout.run_dir / "evaluation" / "metrics.json").read_text())
    assert (record["checkpoint"], record["data"]["split"]) == (
        str(checkout.run_dir / "checkpoints" / "best.keras"),
        "test",
    )

    # `make evaluate` runs that line with the newest run under logs/train, which here is that
    # run, so make shows its command (-n) rather than scoring the same windows again. From the
    # checkout, the repository's Makefile finds .venv/bin through the link; -o takes the
    # venv's set-up as done (nothing here to compare it with), so a test never reinstalls it.
    configs = (checkout.root / "logs" / "train").glob("*/config.yaml")
    assert max(configs, key=lambda path: path.stat().st_mtime).parent == checkout.run_dir
    make, *targets = shlex.split(default_form(make_evaluate))
    assert make == "make"
    # As a user runs it, not as a sub-make of `make test`, which would print the folders it
    # enters and pass on its own flags.
    as_user = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    }
    shown = subprocess.run(
        [make, "-n", "-f", REPO / "Makefile", "-o", ".venv/.installed", *targets],
        cwd=checkout.root,
        capture_output=True,
        text=True,
        timeout=60,
        env=as_user,
    )
    assert ok(shown), report(shown)
    assert shlex.split(shown.stdout) == [
        ".venv/bin/nowcast-evaluate",
        *shlex.split(checkout.substitute(default_form(own)))[1:],
    ]


def test_your_own_radar_data(checkout):
    convert, info, evaluate, fine_tune = readme_commands("Your own radar data", 4)
    # Not run here: evaluate scores 760 x 696 frames, in test_scoring_a_converted_store (slow).
    assert "data.path=data/knmi.h5 split=all" in evaluate

    done = checkout.run(convert)
    assert ok(done), report(done)
    store = Store(checkout.root / "data" / "knmi.h5")
    assert store.shape == (KNMI_STRETCHES * KNMI_STRETCH_FRAMES, 760, 696)

    done = checkout.run(info)
    assert ok(done), report(done)
    assert "760 x 696" in done.stdout

    done = checkout.run(
        fine_tune,
        # Appended, the README's words left as they are: one step instead of the CPU
        # default's 400 and one window a batch, as the store's 5 windows give training 3
        # (KNMI_STRETCHES); no validation forecasts drawn for TensorBoard.
        "trainer.epochs=1",
        "trainer.steps_per_epoch=1",
        "trainer.validation_steps=1",
        "trainer.image_samples=0",
        "data.batch_size=1",
    )
    assert ok(done), report(done)
    assert "Starting from the weights of" in done.stdout + done.stderr
    fine_tuned = Path(re.search(r"Run directory: (.+)", done.stdout).group(1))
    assert fine_tuned.parent == checkout.root / "logs" / "train"
    assert (fine_tuned / "model.keras").is_file()


@pytest.mark.slow  # about a minute: 5 windows of 760 x 696, 12 lead times, 3 baselines
def test_scoring_a_converted_store(checkout):
    """The evaluate lines of "Your own radar data" and "Evaluating a run" (the same line in
    both, which runs once), after the conversion they read."""
    convert, _, evaluate, _ = readme_commands("Your own radar data", 4)
    other_store = readme_commands("Evaluating a run", 5)[1]
    assert ok(done := checkout.run(convert)), report(done)
    for line in (evaluate, other_store):
        done = checkout.run(line)
        assert ok(done), report(done)
        assert f"Evaluation written to {checkout.run_dir / 'evaluation'}" in done.stdout
    record = json.loads((checkout.run_dir / "evaluation" / "metrics.json").read_text())
    assert record["data"]["split"] == "all"
    assert record["data"]["windows"] == KNMI_STRETCHES  # every window of the store


@pytest.mark.slow  # 15-20 s a line: TensorFlow's start, the forecast and the drawing
def test_looking_at_forecasts(checkout):
    wettest, at_time, by_index = readme_commands("Looking at forecasts", 3)
    plots = checkout.run_dir / "plots"

    done = checkout.run(wettest)
    assert ok(done), report(done)
    assert {path.suffix for path in plots.glob("forecast_*")} == {".gif", ".png"}

    done = checkout.run(at_time)
    assert ok(done), report(done)
    assert (plots / "forecast_20240603T1430Z_dBZ.gif").is_file()  # units other than mm/h

    done = checkout.run(by_index)
    if shutil.which("ffmpeg") is None:  # the README: "MP4 needs ffmpeg"
        assert done.returncode == 2, report(done)
        assert done.stderr.strip().splitlines()[-1].startswith("nowcast: error: MP4 animations")
    else:
        assert ok(done), report(done)
        assert list(plots.glob("forecast_*.mp4"))


@pytest.mark.slow  # about 20 s: a forecast of 760 x 696 frames, and its animation
def test_forecasting_from_the_newest_radar_files(checkout):
    (line,) = readme_commands("Forecasting from the newest radar files", 1)
    done = checkout.run(line)
    assert ok(done), report(done)
    for name in ("nowcast.h5", "nowcast.gif", "nowcast.png"):
        assert (checkout.root / name).is_file(), name
