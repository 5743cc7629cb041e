"""Encoder-forecaster ConvLSTM network (Shi et al. 2017) on radar-echo sequences.

Sequences are channels-last, (batch, time, height, width, channels), on the model's
normalised scale (see nowcast.units); the output is on the same scale, float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from nowcast.model.advection import DEFAULT_MAX_SPEED, advect, estimate_motion
from nowcast.model.arguments import int_pair, positive_int
from nowcast.model.cascade import scale_bands
from nowcast.model.cell import ConvLSTM
from nowcast.model.matching import match_distribution

# The recurrent layers a model can be built with: our fused-gate ConvLSTM, or Keras's own.
RECURRENT_LAYERS = ("fused", "keras")
# Each lead time's band logits are a weight times this gain. Adam moves a weight by about the
# learning rate per step, so without it 100 fine-tuning steps at 3e-4 move a gate by 0.015;
# with it a gate can cross most of its range (docs/experiments.md, "Scale bands").
LEAD_GATE_GAIN = 30.0
# The name of that weight, (n_out, scale_bands): the one weight that depends on n_out.
LEAD_TABLE = "lead_band_logits"


def fit_lead_times(table: np.ndarray, n_out: int) -> np.ndarray:
    """A model's gate logits per lead time (`LEAD_TABLE`) for a model of `n_out` lead times,
    to fine-tune a run on a longer or shorter forecast: the first `n_out` rows, or every row
    and then the last repeated (the longest lead time learnt holds on)."""
    extra = max(n_out - len(table), 0)
    return np.concatenate([table[:n_out], np.repeat(table[-1:], extra, axis=0)])


# The fields of nowcast.config.StageConfig.
STAGE_KEYS = (
    "filters",
    "kernel_size",
    "downsample_filters",
    "downsample_kernel",
    "downsample_stride",
)


def _checked_stages(stages) -> list[dict]:
    """Plain-dict copies of `stages`, or a ValueError naming the offending stage and value."""
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
        raise ValueError(f"`stages` must be a non-empty list of dicts. Received: {stages=!r}")
    checked = []
    for k, stage in enumerate(stages):
        if not isinstance(stage, Mapping) or set(stage) != set(STAGE_KEYS):
            raise ValueError(
                f"stages[{k}] must be a dict with exactly the keys {list(STAGE_KEYS)}. "
                f"Received: stages[{k}]={stage!r}"
            )
        plain = {key: stage[key] for key in STAGE_KEYS}
        for key in ("filters", "downsample_filters", "downsample_kernel", "downsample_stride"):
            positive_int(plain[key], f"stages[{k}].{key}")
        int_pair(plain["kernel_size"], f"stages[{k}].kernel_size")
        if plain["downsample_stride"] > plain["downsample_kernel"]:
            raise ValueError(
                f"stages[{k}].downsample_stride={plain['downsample_stride']} is larger than "
                f"stages[{k}].downsample_kernel={plain['downsample_kernel']}: the strided "
                "convolution would skip pixels and the transposed one would leave gaps."
            )
        checked.append(plain)
    return checked


@keras.saving.register_keras_serializable(package="nowcast")
class EncoderForecaster(keras.Model):
    """Shi et al. (2017) encoder-forecaster with fused-gate ConvLSTM stages.

    Encoder, per stage k: a strided Conv2D (downsample) + LeakyReLU on every frame, then a
    ConvLSTM; each stage's final state is kept. Forecaster, from the top stage down: the
    ConvLSTM of stage k starts from the encoder's state of stage k and runs `n_out` steps
    (the top stage with no input frames, the others on the upsampled output of the stage
    above), then a Conv2DTranspose with stage k's downsample kernel and stride + LeakyReLU
    brings the sequence back to stage k's input size. A 3x3 Conv2D(head_filters) + LeakyReLU
    and a linear 1x1 Conv2D(out_channels) give the output frames. With `last_frame_skip`, the
    newest input frame joins the 3x3 convolution's input at every lead time: the head sees
    the observed field at full resolution, not only what passed through the coarse maps.
    With `advection`, the frame handed to the head at lead k is instead the newest frame moved
    k times along the motion of the input frames (`nowcast.model.advection`, no weights), and
    the network's output is added to it: the network forecasts what extrapolation misses
    (growth, decay, initiation) and keeps the detail that extrapolation keeps. With
    `scale_bands` as well, the moved frame is split into bands of scale (`nowcast.model.cascade`)
    and a linear 1x1 Conv2D of the head's features, plus a learned logit per lead time and
    band, weighs each band, per pixel and lead time, between 0 and 2 (1 where the weights are
    0, as they start): the network learns how long each scale stays predictable, as S-PROG's
    cascade does by rule. With
    `probability_matching`, each forecast frame then takes the extrapolation's values in its
    own rank order (`nowcast.model.matching`) when the model is not training: the network
    says where the rain goes, the extrapolation how much of each intensity there is. Training
    sees the forecast before matching, since ranks pass no gradient: a loss that rewards the
    expected field teaches the network to give up what it cannot place, and matching then
    gives the rain back its amounts (the probability-matched mean of ensemble forecasting).

    The network is fully convolutional, so it takes any frame size that the product of the
    downsample strides divides (a peephole model only the size it was built for), and any
    input length: the forecast length is always `n_out`.

    Args:
        stages: One dict per stage with the keys of `nowcast.config.StageConfig`: filters,
            kernel_size (ConvLSTM), downsample_filters, downsample_kernel, downsample_stride.
        n_out: Number of frames forecast.
        out_channels: Channels of each forecast frame.
        head_filters: Filters of the last upsampling and of the 3x3 output convolution.
        forget_bias, activation, peephole, layer_norm: as for `FusedConvLSTMCell`, for every
            ConvLSTM.
        recurrent: "fused" (`nowcast.model.ConvLSTM`, one convolution per step for all four
            gates) or "keras" (`keras.layers.ConvLSTM2D`, eight convolutions per step), the
            same network otherwise, for comparison (scripts/benchmark.py). ConvLSTM2D has
            no peephole or layer normalisation, initialises the forget-gate bias to 1
            (`unit_forget_bias`) instead of adding `forget_bias` at run time, so it takes
            forget_bias 1.0 or 0.0, and rejects zero input channels: the top forecaster stage
            gets one channel of zeros, which adds kernel_size**2 * 4 * filters weights.
        conv_negative_slope: Slope of the LeakyReLU after each (transposed) convolution.
        last_frame_skip: Whether the head also takes the newest input frame (see above).
        advection: Whether the network corrects an extrapolation of the newest frame (see
            above); needs at least two input frames and out_channels equal to the input
            channels.
        advection_max_speed: The fastest motion the extrapolation finds, in pixels per frame
            (12: 144 km/h on a 1-km, 5-minute grid).
        scale_bands: 0, or how many bands of scale of the moved frame the network weighs
            (see above): 2 or more, finer than 2 pixels, 2-4, 4-8, ... and the rest; needs
            `advection`.
        probability_matching: Whether each forecast frame takes the extrapolation's
            distribution of values outside training (see above); needs `advection`.
        **kwargs: Base `keras.Model` arguments (name, dtype, ...).

    Call arguments:
        inputs: (batch, n_in, height, width, channels).
        training: Passed to the layers.

    Returns:
        (batch, n_out, height, width, out_channels), float32 also under mixed precision.

    Raises:
        ValueError: on inconsistent stage settings, or frames whose height or width the
            product of the strides does not divide.
    """

    def __init__(
        self,
        stages,
        n_out,
        out_channels=1,
        head_filters=8,
        forget_bias=1.0,
        activation="tanh",
        peephole=False,
        layer_norm=False,
        conv_negative_slope=0.2,
        recurrent="fused",
        last_frame_skip=False,
        advection=False,
        advection_max_speed=DEFAULT_MAX_SPEED,
        scale_bands=0,
        probability_matching=False,
        **kwargs,
    ):
        # The inputs stay float32 under mixed precision (each layer casts what it takes), so
        # that the extrapolation matches and moves the frames at full precision: it is then
        # the same in every precision, and so is `block_matching` scored from the model's pass.
        super().__init__(autocast=False, **kwargs)
        self.stages = _checked_stages(stages)
        self.n_out = positive_int(n_out, "n_out")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.head_filters = positive_int(head_filters, "head_filters")
        self.forget_bias = forget_bias
        self.activation = activation
        self.peephole = peephole
        self.layer_norm = layer_norm
        if (
            isinstance(conv_negative_slope, bool)
            or not isinstance(conv_negative_slope, (int, float))
            or conv_negative_slope < 0
        ):
            raise ValueError(
                "`conv_negative_slope` must be a non-negative number. "
                f"Received: {conv_negative_slope=!r}"
            )
        self.conv_negative_slope = float(conv_negative_slope)
        if recurrent not in RECURRENT_LAYERS:
            raise ValueError(
                f"`recurrent` must be one of {', '.join(RECURRENT_LAYERS)}. Received: "
                f"{recurrent=!r}"
            )
        if recurrent == "keras" and (peephole or layer_norm or forget_bias not in (0.0, 1.0)):
            raise ValueError(
                "keras.layers.ConvLSTM2D has no peephole or layer normalisation and a forget "
                "bias of 1 or 0 (unit_forget_bias). Received: "
                f"{peephole=}, {layer_norm=}, {forget_bias=}"
            )
        self.recurrent = recurrent
        if not isinstance(last_frame_skip, bool):
            raise ValueError(
                f"`last_frame_skip` must be True or False. Received: {last_frame_skip=!r}"
            )
        self.last_frame_skip = last_frame_skip
        if not isinstance(advection, bool) or (advection and last_frame_skip):
            raise ValueError(
                "`advection` must be True or False, and not True with `last_frame_skip` (it "
                f"hands the head its own frame). Received: {advection=!r}, {last_frame_skip=!r}"
            )
        self.advection = advection
        self.advection_max_speed = positive_int(advection_max_speed, "advection_max_speed")
        if not isinstance(probability_matching, bool):
            raise ValueError(
                "`probability_matching` must be True or False. Received: "
                f"{probability_matching=!r}"
            )
        self.probability_matching = probability_matching
        if (
            isinstance(scale_bands, bool)
            or not isinstance(scale_bands, int)
            or scale_bands == 1
            or scale_bands < 0
        ):
            raise ValueError(
                "`scale_bands` must be 0 (off) or an integer of at least 2. Received: "
                f"{scale_bands=!r}"
            )
        if not advection and (scale_bands or probability_matching):
            raise ValueError(
                "`scale_bands` and `probability_matching` work on the extrapolation, so they "
                "need `advection`; without it set them off (model.scale_bands=0 "
                "model.probability_matching=false). "
                f"Received: {advection=!r}, {scale_bands=!r}, {probability_matching=!r}"
            )
        self.scale_bands = scale_bands

        def rnn(stage, name):
            if recurrent == "keras":
                return keras.layers.ConvLSTM2D(
                    stage["filters"],
                    stage["kernel_size"],
                    padding="same",
                    activation=activation,
                    unit_forget_bias=bool(forget_bias),
                    return_sequences=True,
                    return_state=True,
                    dtype=self.dtype_policy,
                    name=name,
                )
            return ConvLSTM(
                stage["filters"],
                kernel_size=stage["kernel_size"],
                forget_bias=forget_bias,
                activation=activation,
                peephole=peephole,
                layer_norm=layer_norm,
                dtype=self.dtype_policy,
                name=name,
            )

        self.downsamplers = [
            keras.layers.Conv2D(
                stage["downsample_filters"],
                stage["downsample_kernel"],
                strides=stage["downsample_stride"],
                padding="same",
                dtype=self.dtype_policy,
                name=f"encoder_conv_{k}",
            )
            for k, stage in enumerate(self.stages)
        ]
        self.encoder_rnns = [rnn(stage, f"encoder_rnn_{k}") for k, stage in enumerate(self.stages)]
        self.forecaster_rnns = [
            rnn(stage, f"forecaster_rnn_{k}") for k, stage in enumerate(self.stages)
        ]
        # Stage k's upsampling returns to stage k's input size with the channels that the
        # forecaster stage below takes (the head's for stage 0).
        self.upsamplers = [
            keras.layers.Conv2DTranspose(
                self.stages[k - 1]["filters"] if k else self.head_filters,
                stage["downsample_kernel"],
                strides=stage["downsample_stride"],
                padding="same",
                dtype=self.dtype_policy,
                name=f"forecaster_deconv_{k}",
            )
            for k, stage in enumerate(self.stages)
        ]
        self.head = keras.layers.Conv2D(
            self.head_filters, 3, padding="same", dtype=self.dtype_policy, name="head_conv"
        )
        # float32 whatever the policy: losses and metrics see full-precision forecasts.
        self.output_conv = keras.layers.Conv2D(
            self.out_channels, 1, dtype="float32", name="output_conv"
        )
        # Weights of 0 make every band's gate 1: the model starts as one without bands.
        self.lead_band_logits = None  # (n_out, scale_bands), made in build
        self.band_gates = (
            keras.layers.Conv2D(
                scale_bands, 1, kernel_initializer="zeros", dtype="float32", name="band_gates"
            )
            if scale_bands
            else None
        )

    def _check_frame_size(self, height, width) -> None:
        """Raise a ValueError naming the numbers if the strides do not divide a frame side."""
        strides = [stage["downsample_stride"] for stage in self.stages]
        total = math.prod(strides)
        for side, size in (("height", height), ("width", width)):
            if size is not None and size % total:
                product = "*".join(map(str, strides))
                per_stage = ", ".join(
                    f"stages[{k}].downsample_stride={s}" for k, s in enumerate(strides)
                )
                raise ValueError(
                    f"frame {side} {size} is not divisible by the product of the downsample "
                    f"strides {product}={total} ({per_stage})."
                )

    def build(self, input_shape):
        if len(input_shape) != 5 or input_shape[-1] is None:
            raise ValueError(
                "EncoderForecaster expects inputs of shape (batch, time, height, width, "
                f"channels) with a known channel count. Received: input_shape={input_shape}"
            )
        height, width, channels = input_shape[2:]
        self._check_frame_size(height, width)
        if self.recurrent == "keras" and (height is None or width is None):
            raise ValueError(
                "recurrent='keras' (keras.layers.ConvLSTM2D) needs a known frame size. "
                f"Received: input_shape={input_shape}"
            )
        for k, stage in enumerate(self.stages):
            self.downsamplers[k].build((None, height, width, channels))
            height, width = (
                None if size is None else size // stage["downsample_stride"]
                for size in (height, width)
            )
            self.encoder_rnns[k].build((None, None, height, width, stage["downsample_filters"]))
            state = (None, height, width, stage["filters"])
            if k + 1 < len(self.stages):
                # The stage above upsamples to this stage's size and filters.
                inputs = (None, None, height, width, stage["filters"])
                self.forecaster_rnns[k].build(inputs)
            elif self.recurrent == "keras":
                self.forecaster_rnns[k].build((None, None, height, width, 1))
            else:
                self.forecaster_rnns[k].build(initial_state_shape=[state, state])
            self.upsamplers[k].build(state)
            channels = stage["filters"]
        frame = (None, *input_shape[2:4])
        if self.advection and input_shape[-1] != self.out_channels:
            raise ValueError(
                "advection adds the forecast to the moved newest frame: it needs out_channels "
                f"equal to the input channels. Received: input_shape={input_shape}, "
                f"{self.out_channels=}"
            )
        skip_channels = input_shape[-1] if self.last_frame_skip or self.advection else 0
        self.head.build((*frame, self.head_filters + skip_channels))
        self.output_conv.build((*frame, self.head_filters))
        if self.band_gates is not None:
            self.band_gates.build((*frame, self.head_filters))
            self.lead_band_logits = self.add_weight(
                shape=(self.n_out, self.scale_bands),
                initializer="zeros",
                dtype="float32",
                name=LEAD_TABLE,
            )

    def load_own_variables(self, store):
        """Keras's loading of the model's own weight, the gate logits per lead time, fitted
        to this model's `n_out` (`fit_lead_times`): a run can start from the weights of one
        that forecast more or fewer lead times (`nowcast-train init=`)."""
        if self.lead_band_logits is not None:
            store = {"0": fit_lead_times(np.asarray(store["0"]), self.n_out)}
        super().load_own_variables(store)

    def _per_frame(self, fn, x):
        """Apply `fn` to each frame of x (B, T, H, W, C) by folding time into the batch axis."""
        steps = x.shape[1]
        # (B, T, H, W, C) -> (B*T, H, W, C): one convolution call for all frames.
        y = fn(ops.reshape(x, (-1, *ops.shape(x)[2:])))
        # (B*T, H', W', C') -> (B, T, H', W', C')
        return ops.reshape(y, (-1, steps, *ops.shape(y)[1:]))

    def _leaky(self, x):
        return ops.leaky_relu(x, negative_slope=self.conv_negative_slope)

    def _output_frames(self, frames, skip=None):
        """(B*n_out, H_0, W_0, F_0) from forecaster stage 0 -> (B*n_out, H, W, out_channels).

        `skip` (B*n_out, H, W, C), the newest input frame (moved, with advection) for each
        output frame, is concatenated to the upsampled features when given.
        """
        frames = self._leaky(self.upsamplers[0](frames))
        if skip is not None:
            frames = ops.concatenate([frames, ops.cast(skip, frames.dtype)], axis=-1)
        features = self._leaky(self.head(frames))
        output = self.output_conv(features)
        if not self.advection:
            return output
        moved = ops.cast(skip, output.dtype)
        if self.band_gates is not None:
            gates = 2.0 * ops.sigmoid(self._band_gate_logits(features))
            bands = scale_bands(moved, self.scale_bands)
            moved = ops.sum(gates * bands, axis=-1, keepdims=True)
        return output + moved

    def _band_gate_logits(self, features):
        """(B*n_out, H, W, scale_bands): the per-pixel logits of the head's features plus
        each lead time's own, so that a band can fade with lead time as in S-PROG's cascade."""
        logits = self.band_gates(features)
        per_lead = ops.reshape(logits, (-1, self.n_out, *ops.shape(logits)[1:]))
        # Read in the model's compute dtype under mixed precision: back to the logits' float32.
        lead = LEAD_GATE_GAIN * ops.cast(self.lead_band_logits, logits.dtype)[None, :, None, None]
        return ops.reshape(per_lead + lead, ops.shape(logits))

    def _recur(self, rnn, inputs, initial_state=None, training=False):
        """Run one recurrent layer; `(sequence, [h, c])` whichever `recurrent` it is.

        `inputs` (B, T, H, W, C), or None for the top forecaster stage, which then runs
        `n_out` steps from `initial_state` ([h, c], each (B, H, W, F)).
        """
        if self.recurrent == "fused":
            steps = self.n_out if inputs is None else None
            return rnn(inputs, initial_state=initial_state, steps=steps, training=training)
        if inputs is None:
            # ConvLSTM2D rejects zero input channels: give it one channel of zeros.
            h = initial_state[0]
            inputs = ops.zeros((ops.shape(h)[0], self.n_out, *h.shape[1:3], 1), h.dtype)
        sequence, h, c = rnn(inputs, initial_state=initial_state, training=training)
        return sequence, [h, c]

    def call(self, inputs, training=False):
        return self.forecast_and_extrapolation(inputs, training=training)[0]

    def forecast_and_extrapolation(self, inputs, training=False):
        """The forecast, and with `advection` the extrapolation it corrects (B, n_out, H, W,
        C), else None: from one pass, so that scoring the extrapolation alone (the
        `block_matching` baseline) does not match and move the frames a second time."""
        self._check_frame_size(inputs.shape[2], inputs.shape[3])
        x = inputs  # (B, T_in, H, W, C)
        states = []
        for downsample, rnn in zip(self.downsamplers, self.encoder_rnns, strict=True):
            x = self._leaky(self._per_frame(downsample, x))  # (B, T_in, H_k, W_k, D_k)
            x, state = self._recur(rnn, x, training=training)  # (B, T_in, H_k, W_k, F_k)
            states.append(state)
        y = None  # the top forecaster stage has no input frames
        for k in reversed(range(len(self.stages))):
            y, _ = self._recur(
                self.forecaster_rnns[k], y, initial_state=states[k], training=training
            )  # (B, n_out, H_k, W_k, F_k)
            if k:
                y = self._leaky(self._per_frame(self.upsamplers[k], y))  # (B, n_out, H_k-1, ...)
        # The newest input frame beside each output frame: (B, H, W, C) -> (B*n_out, H, W, C),
        # in the order of (B, n_out) folded into one axis.
        skip = moved = None
        if self.advection:
            if inputs.shape[1] is not None and inputs.shape[1] < 2:
                raise ValueError(
                    f"advection needs at least 2 input frames. Received: {inputs.shape[1]}"
                )
            motion = estimate_motion(inputs, self.advection_max_speed)
            moved = advect(inputs[:, -1], motion, self.n_out)  # (B, n_out, H, W, C)
            skip = ops.reshape(moved, (-1, *moved.shape[2:]))
        elif self.last_frame_skip:
            skip = ops.repeat(inputs[:, -1], self.n_out, axis=0)
        forecast = self._per_frame(lambda frames: self._output_frames(frames, skip), y)
        if self.probability_matching and not training:
            forecast = match_distribution(forecast, moved)
        return forecast, moved

    def get_config(self):
        return {
            **super().get_config(),
            "stages": [dict(stage) for stage in self.stages],
            "n_out": self.n_out,
            "out_channels": self.out_channels,
            "head_filters": self.head_filters,
            "forget_bias": self.forget_bias,
            "activation": self.activation,
            "peephole": self.peephole,
            "layer_norm": self.layer_norm,
            "conv_negative_slope": self.conv_negative_slope,
            "recurrent": self.recurrent,
            "last_frame_skip": self.last_frame_skip,
            "advection": self.advection,
            "advection_max_speed": self.advection_max_speed,
            "scale_bands": self.scale_bands,
            "probability_matching": self.probability_matching,
        }
