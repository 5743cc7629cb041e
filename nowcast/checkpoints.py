"""A trained run's config and checkpoints: find them, check them against a model, load them.

Shared by the commands that read a run (`nowcast-evaluate`, `nowcast-plot`, `nowcast-predict`)
and by training that starts from another run's weights (`nowcast-train init=...`).
"""

from __future__ import annotations

import inspect
import json
import zipfile
from pathlib import Path

import keras
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nowcast.config import DataConfig, ModelConfig, read_saved_config
from nowcast.model import build_model

CHECKPOINT_NAMES = ("best", "last")
# Config keys every Keras model has; they say nothing about the architecture.
_GENERIC_MODEL_KEYS = {"name", "trainable", "dtype"}


def load_run_config(run_dir: Path) -> DictConfig:
    """The `data` and `model` groups a run was trained with, checked against today's schemas.

    Only these two groups are read, so that runs stay readable when the training settings
    change.

    Raises:
        FileNotFoundError: `run_dir` is not a directory or holds no config.yaml.
        ValueError: their entries do not fit the schemas.
    """
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run directory not found: {run_dir}; pass run=<a directory written by nowcast-train>"
        )
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a nowcast run: it has no config.yaml; pass run=<a directory "
            "written by nowcast-train>"
        )
    try:
        saved = read_saved_config(path)
        return OmegaConf.create(
            {
                "data": OmegaConf.merge(OmegaConf.structured(DataConfig), saved.data),
                "model": OmegaConf.merge(OmegaConf.structured(ModelConfig), saved.model),
            }
        )
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ValueError(f"{path} is not a valid run config ({err}); train it again") from None


def resolve_checkpoint(run_dir: Path, checkpoint: str) -> Path:
    """`best` or `last` of the run's checkpoints/, or the path of a .keras file.

    Raises:
        FileNotFoundError: the checkpoint does not exist; the message lists the run's ones.
    """
    if checkpoint in CHECKPOINT_NAMES:
        path = run_dir / "checkpoints" / f"{checkpoint}.keras"
    else:
        path = Path(checkpoint).expanduser().absolute()
    if not path.is_file():
        found = sorted(p.name for p in (run_dir / "checkpoints").glob("*.keras"))
        raise FileNotFoundError(
            f"checkpoint not found: {path} (the run's checkpoints: {', '.join(found) or 'none'}); "
            "pass checkpoint=best|last|<path to a .keras file>, or train the run first"
        )
    return path


def _checkpoint_architecture(path: Path) -> dict:
    """The model config a .keras file was saved with: {"class_name": ..., "config": {...}}."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a Keras checkpoint ({err}); pass checkpoint=best|last|<path to a "
            ".keras file written by nowcast-train>"
        ) from None


def architecture_differences(
    checkpoint: Path, model_cfg: DictConfig, *, n_out: int, ignore: tuple[str, ...] = ()
) -> list[str]:
    """How the model saved in `checkpoint` differs from the one `model_cfg` builds, one
    `key=saved in the checkpoint, expected` phrase per setting; empty when they are the same.

    Args:
        ignore: constructor arguments left out of the comparison (e.g. n_out, which the
            weights do not depend on).

    Raises:
        ValueError: `checkpoint` is not a Keras file.
    """
    saved = _checkpoint_architecture(checkpoint)
    expected = build_model(model_cfg, n_out=n_out)
    # Through JSON, so that tuples compare equal to the saved lists.
    expected_config = json.loads(json.dumps(expected.get_config()))
    # A checkpoint saved before an option existed was built with the option's default.
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(type(expected)).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    saved_config = {**defaults, **saved.get("config", {})}
    skipped = _GENERIC_MODEL_KEYS | set(ignore)
    differences = [
        f"{key}={saved_config.get(key)!r} in the checkpoint, {value!r} expected"
        for key, value in expected_config.items()
        if key not in skipped and saved_config.get(key) != value
    ]
    saved_class, expected_class = saved.get("class_name"), type(expected).__name__
    if saved_class != expected_class:
        differences.insert(0, f"{saved_class} in the checkpoint, {expected_class} expected")
    return differences


def load_checkpoint(
    run_cfg: DictConfig, checkpoint: Path, frame_shape: tuple[int, int, int]
) -> keras.Model:
    """The model config.yaml describes, built for `frame_shape`, with the checkpoint's weights.

    The architecture comes from config.yaml, as when the run was trained; the checkpoint must
    hold the same one.

    Raises:
        ValueError: the checkpoint is not a Keras file or holds another architecture, or the
            model cannot take frames of `frame_shape` (height, width, channels).
    """
    # Probability matching has no weights: a command may switch it (nowcast.run.Run.matched).
    differences = architecture_differences(
        checkpoint, run_cfg.model, n_out=run_cfg.data.n_out, ignore=("probability_matching",)
    )
    if differences:
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model of the run's config.yaml: "
            f"{'; '.join(differences)}; pass the checkpoint of this run"
        )
    try:
        model = build_model(run_cfg.model, n_out=run_cfg.data.n_out, input_shape=frame_shape)
    except ValueError as err:
        raise ValueError(
            f"the model cannot take frames of {frame_shape[0]}x{frame_shape[1]} pixels: {err} "
            "Score a store whose frame sides the strides divide."
        ) from None
    try:
        model.load_weights(checkpoint)
    except (ValueError, OSError, KeyError) as err:
        if run_cfg.model.peephole:  # the architecture matched, so the frame size differs
            raise ValueError(
                f"the weights of checkpoint {checkpoint} do not fit frames of "
                f"{frame_shape[0]}x{frame_shape[1]} pixels: a peephole model takes only the "
                "frame size it was trained on; score a store of that size"
            ) from None
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise ValueError(
            f"the weights of checkpoint {checkpoint} do not fit the model of the run's "
            f"config.yaml ({first_line}); pass the checkpoint of this run"
        ) from None
    return model
