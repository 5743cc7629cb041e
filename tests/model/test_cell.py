"""FusedConvLSTMCell and ConvLSTM against a NumPy implementation of the equations and Keras."""

import keras
import numpy as np
import pytest
from keras import ops

from nowcast.model import ConvLSTM, FusedConvLSTMCell
from nowcast.model.cell import LAYER_NORM_EPSILON


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


# NumPy reference of the cell's equations (FusedConvLSTMCell's docstring), in float64,
# independent of the implementation.


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _conv_same(x, kernel):
    """2-D 'same' convolution, stride 1, of x (B, H, W, C) with kernel (kh, kw, C, O)."""
    kh, kw = kernel.shape[:2]
    top, left = (kh - 1) // 2, (kw - 1) // 2  # TensorFlow's 'same': any extra row goes after
    padded = np.pad(x, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for dy in range(kh):
        for dx in range(kw):
            window = padded[:, dy : dy + height, dx : dx + width]
            out += np.einsum("bhwc,co->bhwo", window, kernel[dy, dx])
    return out


def _norm(x, gamma, beta):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPSILON) * gamma + beta


def _reference_step(x, h, c, w, forget_bias):
    """One step; `w` maps weight names to arrays; x may be None (no input channels)."""
    gates = _conv_same(h if x is None else np.concatenate([x, h], -1), w["kernel"])
    if "gate_gamma" in w:
        blocks = gates.reshape(*gates.shape[:-1], 4, -1)
        gates = _norm(blocks, w["gate_gamma"], w["gate_beta"]).reshape(gates.shape)
    else:
        gates = gates + w["bias"]
    i, j, f, o = np.split(gates, 4, axis=-1)
    if "peephole_i" in w:
        i = i + w["peephole_i"] * c
        f = f + w["peephole_f"] * c
    c = c * _sigmoid(f + forget_bias) + _sigmoid(i) * np.tanh(j)
    if "peephole_o" in w:
        o = o + w["peephole_o"] * c
    c_out = _norm(c, w["cell_gamma"], w["cell_beta"]) if "cell_gamma" in w else c
    return np.tanh(c_out) * _sigmoid(o), c


def _reference_sequence(xs, h, c, w, forget_bias):
    """xs (B, T, H, W, C) -> (h of every step (B, T, H, W, F), h, c)."""
    outputs = []
    for t in range(xs.shape[1]):
        h, c = _reference_step(xs[:, t], h, c, w, forget_bias)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


def _weights(cell):
    return {v.name: np.asarray(v, dtype=np.float64) for v in cell.weights}


def _randomise(cell, rng):
    for variable in cell.weights:
        variable.assign(rng.normal(scale=0.3, size=variable.shape).astype("float32"))


def _gradients(layer, loss_fn, *args):
    """Gradients of loss_fn(layer(*args)) with respect to layer.trainable_variables."""
    if keras.backend.backend() == "jax":
        import jax

        def loss(trainable):
            non_trainable = [v.value for v in layer.non_trainable_variables]
            outputs, _ = layer.stateless_call(trainable, non_trainable, *args)
            return loss_fn(outputs)

        return jax.grad(loss)([v.value for v in layer.trainable_variables])
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = loss_fn(layer(*args))
    return tape.gradient(loss, layer.trainable_variables)


def test_seed_example_shapes():
    # A time-major input (T, B, H, W, C) = (5, 2, 3, 3, 3), as TensorFlow 1's RNNs took it;
    # keras.layers.RNN wants batch-major, so transpose to (B, T, ...) on the way in and back on
    # the way out.
    inputs_tbhwc = np.random.default_rng(0).random((5, 2, 3, 3, 3), dtype=np.float32)
    rnn = keras.layers.RNN(
        FusedConvLSTMCell(filters=6, kernel_size=3), return_sequences=True, return_state=True
    )
    outputs_bthwc, h, c = rnn(ops.transpose(inputs_tbhwc, (1, 0, 2, 3, 4)))
    outputs_tbhwc = ops.transpose(outputs_bthwc, (1, 0, 2, 3, 4))
    assert tuple(outputs_tbhwc.shape) == (5, 2, 3, 3, 6)
    assert tuple(h.shape) == tuple(c.shape) == (2, 3, 3, 6)


def test_default_cell_has_one_fused_kernel_and_one_bias():
    cell = FusedConvLSTMCell(filters=6, kernel_size=3)
    cell.build((None, 5, 5, 2))
    assert [tuple(w.shape) for w in cell.weights] == [(3, 3, 2 + 6, 24), (24,)]
    assert cell.forget_bias == 1.0


@pytest.mark.parametrize(
    "options",
    [{}, {"peephole": True}, {"peephole": True, "layer_norm": True}],
    ids=["plain", "peephole", "peephole+layer_norm"],
)
def test_matches_numpy_reference(options):
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(2, 4, 6, 5, 2)).astype("float32")  # (B, T, H, W, C)
    h0, c0 = (rng.normal(size=(2, 6, 5, 3)).astype("float32") for _ in range(2))
    zeros = np.zeros_like(h0)

    cell = FusedConvLSTMCell(filters=3, kernel_size=3, forget_bias=1.0, **options)
    rnn = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    rnn.build(xs.shape)
    _randomise(cell, rng)
    layer = ConvLSTM(3, kernel_size=3, forget_bias=1.0, **options)
    layer.build(xs.shape)
    layer.cell.set_weights(cell.get_weights())
    w = _weights(cell)

    expected = _reference_sequence(xs, h0, c0, w, forget_bias=1.0)
    for seq, (h, c) in [
        (lambda out: (out[0], out[1:]))(rnn(xs, initial_state=[h0, c0])),
        layer(xs, initial_state=[h0, c0]),
    ]:
        for got, want in zip((seq, h, c), expected, strict=True):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)

    expected = _reference_sequence(xs, zeros, zeros, w, forget_bias=1.0)
    seq, (h, c) = layer(xs)
    np.testing.assert_allclose(np.asarray(seq), expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(rnn(xs)[0]), expected[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"dilation_rate": 2, "kernel_size": (3, 5)},
        {"forget_bias": 0.0, "activation": "relu"},
        {"layer_norm": True, "forget_bias": 2.0},
    ],
    ids=["dilated", "no-forget-bias", "layer_norm"],
)
def test_layer_equals_the_cell_stepped_by_keras_rnn(options):
    # The layer convolves the inputs of all steps at once and skips the convolution over the
    # zero h_0; the cell convolves [x_t, h_{t-1}] at every step. Same weights, same outputs.
    rng = np.random.default_rng(7)
    xs = rng.normal(size=(2, 4, 9, 8, 3)).astype("float32")
    layer = ConvLSTM(4, **options)
    layer.build(xs.shape)
    _randomise(layer.cell, rng)
    rnn = keras.layers.RNN(
        FusedConvLSTMCell(4, **options), return_sequences=True, return_state=True
    )
    rnn.build(xs.shape)
    rnn.cell.set_weights(layer.cell.get_weights())
    h0, c0 = (rng.normal(size=(2, 9, 8, 4)).astype("float32") for _ in range(2))
    for state in (None, [h0, c0]):
        seq, (h, c) = layer(xs, initial_state=state)
        for got, want in zip((seq, h, c), rnn(xs, initial_state=state), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_matches_keras_conv_lstm2d():
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(2, 5, 7, 6, 3)).astype("float32")
    filters = 4
    reference = keras.layers.ConvLSTM2D(
        filters, 3, padding="same", return_sequences=True, return_state=True
    )
    reference.build(xs.shape)
    kernel, recurrent_kernel, bias = (
        rng.normal(scale=0.3, size=v.shape).astype("float32") for v in reference.weights
    )
    reference.set_weights([kernel, recurrent_kernel, bias])

    def to_ijfo(array):
        # Keras's gate order along the last axis is (i, f, c, o); the fused cell's (i, j=c, f, o).
        i, f, c, o = np.split(array, 4, axis=-1)
        return np.concatenate([i, c, f, o], axis=-1)

    cell = FusedConvLSTMCell(filters, kernel_size=3, forget_bias=0.0)
    fused = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    fused.build(xs.shape)
    # The fused kernel's input-channel axis holds x's channels first, then h's.
    cell.set_weights([to_ijfo(np.concatenate([kernel, recurrent_kernel], axis=2)), to_ijfo(bias)])

    for got, want in zip(fused(xs), reference(xs), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.gpu
def test_matches_keras_conv_lstm2d_on_the_gpu():
    """On an Ampere-or-newer GPU, TF32 (on by default) rounds float32 products to 10 mantissa
    bits and the comparison above fails at 1e-5; conftest.py turns it off."""
    with keras.device("gpu:0"):
        test_matches_keras_conv_lstm2d()


def test_cell_without_input_frames_runs_on_the_state_alone():
    rng = np.random.default_rng(3)
    h0, c0 = (rng.normal(size=(2, 4, 4, 5)).astype("float32") for _ in range(2))
    layer = ConvLSTM(5, kernel_size=3)
    seq, (h, c) = layer(None, initial_state=[h0, c0], steps=3)
    assert tuple(layer.cell.kernel.shape) == (3, 3, 5, 20)
    w = _weights(layer.cell)
    expected_h, expected_c = h0, c0
    for t in range(3):
        expected_h, expected_c = _reference_step(None, expected_h, expected_c, w, 1.0)
        np.testing.assert_allclose(np.asarray(seq[:, t]), expected_h, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(c), expected_c, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "options", [{}, {"peephole": True, "layer_norm": True}], ids=["plain", "peephole+layer_norm"]
)
def test_gradients_reach_every_weight(options):
    xs = np.random.default_rng(4).normal(size=(2, 10, 5, 5, 2)).astype("float32")
    layer = ConvLSTM(4, kernel_size=3, **options)
    layer.build(xs.shape)
    target = np.random.default_rng(5).normal(size=(2, 10, 5, 5, 4)).astype("float32")
    grads = _gradients(layer, lambda out: ops.mean((out[0] - target) ** 2), xs)
    names = [v.name for v in layer.trainable_variables]
    expected = {"kernel"} | (
        {"gate_gamma", "gate_beta", "cell_gamma", "cell_beta"}
        | {"peephole_i", "peephole_f", "peephole_o"}
        if options
        else {"bias"}
    )
    assert set(names) == expected
    for name, grad in zip(names, grads, strict=True):
        assert grad is not None, name
        assert np.any(np.asarray(grad) != 0), name


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="uses TensorFlow's tape")
def test_gradient_reaches_the_first_of_ten_input_frames():
    import tensorflow as tf

    xs = tf.constant(np.random.default_rng(6).normal(size=(1, 10, 5, 5, 2)), dtype="float32")
    layer = ConvLSTM(4, kernel_size=3)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        _, (h, _) = layer(xs)
        loss = ops.sum(h)
    assert np.any(np.asarray(tape.gradient(loss, xs))[:, 0] != 0)


def test_config_round_trip():
    cell = FusedConvLSTMCell(
        filters=4,
        kernel_size=(3, 5),
        forget_bias=0.5,
        activation="relu",
        peephole=True,
        layer_norm=True,
        dilation_rate=2,
        kernel_initializer="he_normal",
        bias_initializer="ones",
        name="round_trip",
    )
    config = cell.get_config()
    clone = FusedConvLSTMCell.from_config(config)
    assert clone.get_config() == config
    for key in ("filters", "kernel_size", "forget_bias", "peephole", "layer_norm"):
        assert getattr(clone, key) == getattr(cell, key)
    serialised = keras.saving.serialize_keras_object(ConvLSTM(4, kernel_size=5, peephole=True))
    restored = keras.saving.deserialize_keras_object(serialised)
    assert isinstance(restored, ConvLSTM)
    assert restored.cell.kernel_size == (5, 5) and restored.cell.peephole


def test_golden_sums_with_fixed_weights_that_differ_per_gate():
    # Fixed weights, different for each gate: output channel k of the kernel takes the k-th of
    # 12 consecutive blocks of a ramp from -0.3 to 0.3, and each gate (i, j, f, o) has its own
    # bias. (A constant kernel would give the four gates the same pre-activation, and hide a
    # swap of gates.) The sums were computed once in float64 with `_reference_sequence`; with
    # the gates in any other order, the sum of the sequence is at least 0.2 away.
    xs = np.linspace(-1.0, 1.0, 2 * 3 * 4 * 4 * 2, dtype="float32").reshape(2, 3, 4, 4, 2)
    kernel = np.linspace(-0.3, 0.3, 3 * 3 * 5 * 12).reshape(12, 3, 3, 5).transpose(1, 2, 3, 0)
    bias = np.repeat([0.1, -0.2, 0.3, -0.4], 3)  # i, j, f, o
    layer = ConvLSTM(3, kernel_size=3)  # forget_bias 1.0
    layer.build(xs.shape)
    layer.cell.set_weights([kernel.astype("float32"), bias.astype("float32")])
    seq, (_, c) = layer(xs)
    assert float(ops.sum(seq)) == pytest.approx(-11.477804809293781, rel=1e-5)
    assert float(ops.sum(c)) == pytest.approx(1.2877004846552744, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"filters": 0},
        {"filters": 2.5},
        {"filters": 4, "kernel_size": (3,)},
        {"filters": 4, "kernel_size": 0},
        {"filters": 4, "forget_bias": "1"},
        {"filters": 4, "peephole": "yes"},
        {"filters": 4, "dilation_rate": -1},
        {"filters": 4, "activation": "no_such_activation"},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        FusedConvLSTMCell(**kwargs)


def test_peephole_cell_rejects_another_frame_size():
    layer = ConvLSTM(4, peephole=True)
    layer(np.zeros((1, 2, 6, 6, 1), "float32"))
    with pytest.raises(ValueError, match=r"\(6, 6\)"):
        layer(np.zeros((1, 2, 8, 8, 1), "float32"))


def test_conv_lstm_needs_inputs_or_state_and_steps():
    with pytest.raises(ValueError, match="initial_state"):
        ConvLSTM(4)(None, steps=3)
