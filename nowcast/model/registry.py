"""Models chosen by name (`model.name` in the config)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import keras
from omegaconf import DictConfig, OmegaConf

from nowcast.model.encoder_forecaster import EncoderForecaster

MODELS: dict[str, type[keras.Model]] = {"encoder_forecaster": EncoderForecaster}


def build_model(
    model_cfg, *, n_out: int, input_shape: tuple[int, int, int] | None = None
) -> keras.Model:
    """Build the model that `model_cfg.name` names, with the other fields as its arguments.

    Args:
        model_cfg: The `model` config group: an OmegaConf DictConfig, a
            `nowcast.config.ModelConfig`, or a plain mapping with the same fields.
        n_out: Number of frames to forecast.
        input_shape: Frame shape (height, width, channels). If given, the weights are created
            for it, so the model's summary shows parameter counts.

    Returns:
        An uncompiled `keras.Model` mapping (batch, n_in, height, width, channels) to
        (batch, n_out, height, width, 1).

    Raises:
        ValueError: for an unknown name (the message lists the available ones), or settings
            the model rejects.
    """
    if isinstance(model_cfg, DictConfig):
        fields = OmegaConf.to_container(model_cfg, resolve=True, throw_on_missing=True)
    elif dataclasses.is_dataclass(model_cfg) and not isinstance(model_cfg, type):
        fields = dataclasses.asdict(model_cfg)
    elif isinstance(model_cfg, Mapping):
        fields = dict(model_cfg)
    else:
        raise ValueError(
            "`model_cfg` must be a DictConfig, a ModelConfig or a mapping. "
            f"Received: {type(model_cfg).__name__}"
        )
    name = fields.pop("name", None)
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name {name!r}. Available names: {', '.join(sorted(MODELS))}."
        )
    model = MODELS[name](**fields, n_out=n_out, name=name)
    if input_shape is not None:
        if len(input_shape) != 3:
            raise ValueError(
                f"`input_shape` must be (height, width, channels). Received: {input_shape=}"
            )
        model.build((None, None, *input_shape))
    return model


def frame_multiple(model_cfg) -> int | None:
    """What the sides of the frames a model takes must be multiples of; None if it takes only
    the frame size it was built for.

    Peephole weights hold one value per pixel and keras.layers.ConvLSTM2D is built for one
    size; otherwise the network is fully convolutional and needs sides that its downsample
    strides divide (advection takes any sides).
    """
    if model_cfg.peephole or model_cfg.recurrent != "fused":
        return None
    return math.prod(stage.downsample_stride for stage in model_cfg.stages)
