"""Console scripts: thin wrappers that compose a Hydra config and call the library.

Bad input (a missing store, a wrong value, a typo in a key) ends in one line on stderr naming
the problem and a non-zero exit. Set NOWCAST_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nowcast.config import config_dir, register_configs

log = logging.getLogger("nowcast")
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)
DATA_COMMANDS = ("synthetic",)

register_configs()


def run_reporting_errors(task: Callable[[], object], errors: tuple = USER_ERRORS) -> object:
    """Run `task`; a user error becomes one line on stderr and exit status 2."""
    try:
        return task()
    except errors as err:
        if os.environ.get("NOWCAST_DEBUG"):
            raise
        print(f"nowcast: error: {err}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> None:
    from nowcast.training import train  # TensorFlow loads here, after Hydra has checked the config

    result = run_reporting_errors(lambda: train(cfg))
    run_dir = result.run_dir
    print(f"\nRun directory: {run_dir}")
    for name, what in [
        ("config.yaml", "resolved config"),
        ("model.keras", "final model"),
        ("checkpoints", "best.keras and last.keras"),
        ("tensorboard", f"TensorBoard logs (tensorboard --logdir {run_dir / 'tensorboard'})"),
        ("metrics.csv", "losses per epoch"),
    ]:
        print(f"  {name:<12} {what}")


def train_main() -> None:
    """`nowcast-train [group=option ...] [key=value ...]`."""
    _train()


def data_main(argv: list[str] | None = None) -> None:
    """`nowcast-data synthetic output=<store.h5> [frames=N] [seed=S] [overwrite=true]`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in DATA_COMMANDS:
        print(
            f"usage: nowcast-data {{{','.join(DATA_COMMANDS)}}} output=<store.h5> [key=value ...]",
            file=sys.stderr,
        )
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = run_reporting_errors(
            lambda: compose("data_command", overrides=argv[1:]),
            (HydraException, OmegaConfBaseException),
        )
    OmegaConf.resolve(cfg)
    from nowcast.data.synthetic import write_synthetic_store

    path = run_reporting_errors(
        lambda: write_synthetic_store(Path(cfg.output), cfg, overwrite=cfg.overwrite)
    )
    print(f"Wrote {path}")
