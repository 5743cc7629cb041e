"""The fused-gate convolutional LSTM cell and the layer that unrolls it over time.

Tensors are channels-last: a frame is (batch, height, width, channels) and a sequence is
(batch, time, height, width, channels). Only backend-neutral `keras.ops` are used, so the same
code runs under the TensorFlow and JAX backends.
"""

from __future__ import annotations

import inspect
from numbers import Real

import keras
from keras import ops

from nowcast.model.arguments import flag, int_pair, positive_int

# Variance floor of the optional layer normalisation.
LAYER_NORM_EPSILON = 1e-5


def _layer_norm(x, gamma, beta, groups: int):
    """Normalise each of `groups` equal channel blocks of `x` (..., groups*F) over its F channels.

    `gamma` and `beta` have shape (groups, F), a learned scale and offset per channel.
    """
    shape = ops.shape(x)
    # (..., groups*F) -> (..., groups, F): one set of moments per block (gate).
    x = ops.reshape(x, (*shape[:-1], groups, shape[-1] // groups))
    mean, variance = ops.moments(x, axes=[-1], keepdims=True)
    x = (x - mean) * ops.rsqrt(variance + LAYER_NORM_EPSILON) * gamma + beta
    return ops.reshape(x, shape)


@keras.saving.register_keras_serializable(package="nowcast")
class FusedConvLSTMCell(keras.layers.Layer):
    """Convolutional LSTM cell with one fused convolution for all four gates.

    One 2-D convolution ('same' padding, stride 1) over the channel concatenation
    `[x_t, h_{t-1}]` gives 4*filters channels plus a bias, split in the order (i, j, f, o):

        c_t = c_{t-1} * sigmoid(f + forget_bias) + sigmoid(i) * activation(j)
        h_t = activation(c_t) * sigmoid(o)

    so a step costs one convolution instead of the eight of `keras.layers.ConvLSTM2D`. The cell
    is Shi et al. (2015), Convolutional LSTM Network: A Machine Learning Approach for
    Precipitation Nowcasting, in the fused-kernel layout of TensorFlow 1's
    `tf.contrib.rnn.ConvLSTMCell` (gate order and a forget bias added at run time).
    Keras's (i, f, c, o) gate order appears only in the reference test.

    Weights: `kernel` (kh, kw, C_in + filters, 4*filters), its input channels first, then
    those of h; `bias` (4*filters,). A cell built with C_in = 0 has no input frames (the top
    forecaster stage): its convolution runs over h only, with a kernel (kh, kw, filters,
    4*filters), and `call` takes `inputs=None`.

    Options:
    - `peephole` (Shi et al. 2015): i += w_ci * c_{t-1}, f += w_cf * c_{t-1}, o += w_co * c_t,
      element-wise, with weights `peephole_i`, `peephole_f`, `peephole_o` of shape
      (height, width, filters), initialised to zero. They tie the cell to the frame size it was
      built for.
    - `layer_norm`: each gate's pre-activation is normalised over its channels (learned
      `gate_gamma`, `gate_beta` of shape (4, filters)), and so is c_t before the output
      activation (`cell_gamma`, `cell_beta` of shape (filters,)); the carried state c_t stays
      unnormalised. `gate_beta` takes the place of `bias`, which is then not created.

    Args:
        filters: Channels F of h and c.
        kernel_size: Convolution size, an int or a pair (kh, kw).
        forget_bias: Added to the forget gate's pre-activation at run time (1.0 keeps memory
            early in training).
        activation: Name of the activation of j and c_t (a `keras.activations` name).
        peephole: Whether to add the peephole connections described above.
        layer_norm: Whether to normalise gates and cell as described above.
        dilation_rate: Dilation of the convolution, an int or a pair.
        kernel_initializer: Initialiser of `kernel`.
        bias_initializer: Initialiser of `bias`.
        **kwargs: Base `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: x_t of shape (batch, height, width, C_in), or None for a cell built with
            C_in = 0.
        states: `[h_{t-1}, c_{t-1}]`, each (batch, height, width, filters): h first, as in
            `keras.layers.ConvLSTM2D`.
        training: Unused; kept for the Keras RNN-cell contract.

    Returns:
        `(h_t, [h_t, c_t])`, each (batch, height, width, filters).

    The cell follows the Keras RNN-cell contract, so `keras.layers.RNN(cell)` unrolls it over
    (batch, time, height, width, C_in). As for Keras's own ConvLSTM cell, `state_size` and
    `output_size` give channel counts only; `get_initial_state` takes the frame size from
    `build()`.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        forget_bias=1.0,
        activation="tanh",
        peephole=False,
        layer_norm=False,
        dilation_rate=1,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, Real):
            raise ValueError(f"`forget_bias` must be a number. Received: {forget_bias=!r}")
        self.forget_bias = float(forget_bias)
        self.activation = keras.activations.get(activation)
        self.peephole = flag(peephole, "peephole")
        self.layer_norm = flag(layer_norm, "layer_norm")
        self.dilation_rate = int_pair(dilation_rate, "dilation_rate")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_size = [self.filters, self.filters]
        self.output_size = self.filters
        self.input_channels = None
        self.spatial_dims = None

    def build(self, input_shape):
        """Create the weights for frames of shape (batch, height, width, C_in); C_in may be 0."""
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "FusedConvLSTMCell expects frames of shape (batch, height, width, channels) "
                f"with a known channel count. Received: input_shape={input_shape}"
            )
        height, width, channels = input_shape[1:]
        if self.peephole and (height is None or width is None):
            raise ValueError(
                "A peephole cell needs a known frame size: its weights have the shape of the "
                f"state. Received: input_shape={input_shape}"
            )
        self.input_channels = int(channels)
        self.spatial_dims = (height, width)
        f = self.filters
        self.kernel = self.add_weight(
            shape=(*self.kernel_size, self.input_channels + f, 4 * f),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        if self.layer_norm:
            self.gate_gamma = self.add_weight(shape=(4, f), initializer="ones", name="gate_gamma")
            self.gate_beta = self.add_weight(shape=(4, f), initializer="zeros", name="gate_beta")
            self.cell_gamma = self.add_weight(shape=(f,), initializer="ones", name="cell_gamma")
            self.cell_beta = self.add_weight(shape=(f,), initializer="zeros", name="cell_beta")
        else:
            self.bias = self.add_weight(
                shape=(4 * f,), initializer=self.bias_initializer, name="bias"
            )
        if self.peephole:
            self.peephole_i, self.peephole_f, self.peephole_o = (
                self.add_weight(shape=(height, width, f), initializer="zeros", name=name)
                for name in ("peephole_i", "peephole_f", "peephole_o")
            )

    def get_initial_state(self, batch_size=None):
        """Zero `[h, c]` of shape (batch_size, height, width, filters) for the built frame size."""
        if self.spatial_dims is None or None in self.spatial_dims:
            raise ValueError(
                "The initial state needs the frame size: build the cell on frames of known "
                f"height and width first. Received: spatial_dims={self.spatial_dims}"
            )
        zeros = ops.zeros((batch_size, *self.spatial_dims, self.filters), self.compute_dtype)
        return [zeros, zeros]

    def call(self, inputs, states, training=False):
        h_prev, c_prev = states
        if self.input_channels:
            if inputs is None or inputs.shape[-1] != self.input_channels:
                raise ValueError(
                    f"This cell was built for {self.input_channels} input channels. Received: "
                    f"inputs.shape={None if inputs is None else tuple(inputs.shape)}"
                )
            # (B, H, W, C_in + F): the kernel's input-channel axis holds x first, then h.
            stacked = ops.concatenate([inputs, h_prev], axis=-1)
        elif inputs is not None and inputs.shape[-1] != 0:
            raise ValueError(
                "This cell was built without input channels and takes inputs=None. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        else:
            stacked = h_prev
        self._check_state_size(c_prev)
        gates = self._conv(stacked, self.kernel)
        if not self.layer_norm:
            gates = gates + self.gate_offset()
        return self.update(gates, c_prev)

    def _check_state_size(self, c_prev) -> None:
        if self.peephole and tuple(c_prev.shape[1:3]) != self.spatial_dims:
            raise ValueError(
                f"This peephole cell was built for frames of {self.spatial_dims} (height, width). "
                f"Received: state shape {tuple(c_prev.shape)}"
            )

    def _conv(self, x, kernel):
        return ops.conv(x, kernel, padding="same", dilation_rate=self.dilation_rate)

    def gate_offset(self):
        """(4F,) added to the convolution before the split: `bias`, plus `forget_bias` on f.

        Only without layer normalisation, which has `gate_beta` instead.
        """
        f = self.filters
        # A constant folded into the bias once per call rather than added at every step.
        forget = [0.0] * (2 * f) + [self.forget_bias] * f + [0.0] * f
        return self.bias + ops.convert_to_tensor(forget, self.compute_dtype)

    def update(self, gates, c_prev):
        """`(h_t, [h_t, c_t])` from the convolution's output and c_{t-1}.

        `gates` (B, H, W, 4F) holds the convolution over `[x_t, h_{t-1}]` plus `gate_offset()`,
        or, with layer normalisation, the convolution alone.
        """
        if self.layer_norm:
            gates = _layer_norm(gates, self.gate_gamma, self.gate_beta, groups=4)
        i, j, f, o = ops.split(gates, 4, axis=-1)
        if self.peephole:
            i = i + self.peephole_i * c_prev
            f = f + self.peephole_f * c_prev
        if self.layer_norm and self.forget_bias:
            f = f + self.forget_bias
        c = c_prev * ops.sigmoid(f) + ops.sigmoid(i) * self.activation(j)
        if self.peephole:
            o = o + self.peephole_o * c
        c_out = _layer_norm(c, self.cell_gamma, self.cell_beta, groups=1) if self.layer_norm else c
        h = self.activation(c_out) * ops.sigmoid(o)
        return h, [h, c]

    def get_config(self):
        # Each of CELL_ARGUMENTS under its own name, the activation and initialisers serialised.
        config = {name: getattr(self, name) for name in CELL_ARGUMENTS}
        config["activation"] = keras.activations.serialize(self.activation)
        for name in ("kernel_initializer", "bias_initializer"):
            config[name] = keras.initializers.serialize(config[name])
        return {**super().get_config(), **config}


# The cell's own constructor arguments, read from its signature so that they are listed once:
# what `ConvLSTM` hands to its cell and what both layers' `get_config` hold.
CELL_ARGUMENTS = tuple(
    name
    for name, parameter in inspect.signature(FusedConvLSTMCell.__init__).parameters.items()
    if name != "self" and parameter.kind is not inspect.Parameter.VAR_KEYWORD
)


@keras.saving.register_keras_serializable(package="nowcast")
class ConvLSTM(keras.layers.Layer):
    """A `FusedConvLSTMCell` unrolled over time in Python (static unroll).

    Sequences here are short (5 to 20 frames), and a static unroll is as fast as a while loop
    on the CPU or faster, and lets XLA see the whole graph on a GPU (docs/benchmarks.md).

    The cell's function and weights, computed with fewer and larger ops: the fused kernel is
    split along its input-channel axis, the convolution of the inputs of all steps runs once
    before the loop (one convolution over batch x time frames, with the bias and forget bias
    folded in), and each step convolves only h_{t-1}, which it skips at the first step when
    the state starts at zero. The gate order and the rest of the step are the cell's
    (`FusedConvLSTMCell.update`).

    Args:
        filters: Channels F of h and c.
        **kwargs: The other arguments of `FusedConvLSTMCell` (those in `CELL_ARGUMENTS`),
            with its defaults, and base `keras.layers.Layer` arguments (name, dtype, ...).

    Call arguments:
        inputs: (batch, time, height, width, C_in) with a known time length, or None for a
            layer without input frames (the top forecaster stage); then `initial_state`
            gives batch, height and width, and `steps` the number of steps.
        initial_state: `[h, c]`, each (batch, height, width, filters); zeros if None.
        steps: Number of steps when `inputs` is None; otherwise None or the time length.
        training: Unused (the cell has no dropout); kept for the Keras call convention.

    Returns:
        `(sequence, [h, c])`: the h of every step, (batch, time, height, width, filters), and
        the final state.
    """

    def __init__(self, filters, **kwargs):
        # The cell's arguments (with the cell's defaults) go to the cell, the rest to Layer.
        cell_arguments = {name: kwargs.pop(name) for name in CELL_ARGUMENTS if name in kwargs}
        super().__init__(**kwargs)
        self.cell = FusedConvLSTMCell(
            filters, **cell_arguments, dtype=self.dtype_policy, name="cell"
        )

    def build(self, inputs_shape=None, initial_state_shape=None):
        if inputs_shape is not None:
            if len(inputs_shape) != 5:
                raise ValueError(
                    "ConvLSTM expects inputs of shape (batch, time, height, width, channels). "
                    f"Received: inputs_shape={inputs_shape}"
                )
            # The cell sees one frame: (B, T, H, W, C) -> (B, H, W, C).
            frame_shape = (inputs_shape[0], *inputs_shape[2:])
        elif initial_state_shape is not None:
            # No input frames: the state's (B, H, W) and zero input channels.
            frame_shape = (*initial_state_shape[0][:3], 0)
        else:
            raise ValueError("ConvLSTM needs `inputs` or an `initial_state`. Received neither.")
        self.cell.build(frame_shape)

    def call(self, inputs=None, initial_state=None, steps=None, training=False):
        cell = self.cell
        if inputs is None:
            if initial_state is None or steps is None:
                raise ValueError(
                    "Without inputs, ConvLSTM needs both `initial_state` and `steps`. "
                    f"Received: initial_state={initial_state}, steps={steps}"
                )
            steps = positive_int(steps, "steps")
        elif inputs.shape[1] is None or (steps is not None and steps != inputs.shape[1]):
            raise ValueError(
                "ConvLSTM unrolls over a known number of frames: inputs.shape[1] must be "
                f"set and equal `steps` if given. Received: inputs.shape={inputs.shape}, "
                f"steps={steps}"
            )
        elif inputs.shape[-1] != cell.input_channels:
            raise ValueError(
                f"This layer was built for {cell.input_channels} input channels. Received: "
                f"inputs.shape={tuple(inputs.shape)}"
            )
        else:
            steps = inputs.shape[1]
        # Step t's convolution over [x_t, h_{t-1}] is split in two along the kernel's
        # input-channel axis (x's channels first, then h's): the part over x, which does not
        # depend on the recurrence, runs once for all frames, as one large convolution.
        # A split, not two slices: its gradient is one concatenation, whereas each strided
        # slice's gradient writes a whole kernel of zeros around its part.
        input_kernel, recurrent_kernel = ops.split(cell.kernel, [cell.input_channels], axis=2)
        offset = None if cell.layer_norm else cell.gate_offset()
        if inputs is None:
            input_gates = [offset] * steps
        else:
            # (B, T, H, W, C) -> (B*T, H, W, C) -> (B*T, H, W, 4F) -> T of (B, H, W, 4F)
            input_gates = cell._conv(
                ops.reshape(inputs, (-1, *ops.shape(inputs)[2:])), input_kernel
            )
            if offset is not None:
                input_gates = input_gates + offset
            input_gates = ops.unstack(
                ops.reshape(input_gates, (-1, steps, *ops.shape(input_gates)[1:])), axis=1
            )
        if initial_state is None:
            # h_0 = c_0 = 0: the first step needs no convolution over h.
            shape = ops.shape(inputs)
            h, c = None, ops.zeros((shape[0], shape[2], shape[3], cell.filters), inputs.dtype)
        else:
            h, c = initial_state
        cell._check_state_size(c)
        outputs = []
        for gates in input_gates:
            if h is not None:
                recurrent_gates = cell._conv(h, recurrent_kernel)
                gates = recurrent_gates if gates is None else gates + recurrent_gates
            h, (h, c) = cell.update(gates, c)
            outputs.append(h)
        return ops.stack(outputs, axis=1), [h, c]

    def get_config(self):
        cell_config = self.cell.get_config()
        return {**super().get_config(), **{key: cell_config[key] for key in CELL_ARGUMENTS}}
