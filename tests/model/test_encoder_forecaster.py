"""EncoderForecaster shapes, validation, serialisation, and the model registry."""

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.config import ModelConfig, StageConfig
from nowcast.model import EncoderForecaster, FusedConvLSTMCell, build_model
from nowcast.model.encoder_forecaster import RECURRENT_LAYERS


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _stage(filters=6, downsample_filters=4, downsample_kernel=3, downsample_stride=2):
    return {
        "filters": filters,
        "kernel_size": 3,
        "downsample_filters": downsample_filters,
        "downsample_kernel": downsample_kernel,
        "downsample_stride": downsample_stride,
    }


TWO_STAGES = [_stage(filters=6, downsample_filters=4), _stage(filters=8, downsample_filters=6)]


def _frames(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_output_shape_and_dtype():
    model = EncoderForecaster(TWO_STAGES, n_out=4)
    forecast = model(_frames((2, 3, 32, 32, 1)))
    assert tuple(forecast.shape) == (2, 4, 32, 32, 1)
    assert keras.backend.standardize_dtype(forecast.dtype) == "float32"


def test_forecast_length_does_not_depend_on_input_length():
    model = EncoderForecaster(TWO_STAGES, n_out=4)
    for n_in in (2, 5):
        assert tuple(model(_frames((1, n_in, 16, 16, 1))).shape) == (1, 4, 16, 16, 1)


def test_any_frame_size_the_strides_divide():
    model = EncoderForecaster(TWO_STAGES, n_out=2, out_channels=2)
    model(_frames((1, 2, 32, 32, 1)))
    assert tuple(model(_frames((1, 2, 16, 24, 1))).shape) == (1, 2, 16, 24, 2)


def test_frame_size_the_strides_do_not_divide_is_rejected_with_the_numbers():
    stages = [_stage(downsample_kernel=4, downsample_stride=4), _stage(filters=8)]
    model = EncoderForecaster(stages, n_out=2)
    message = r"frame height 100 .* 4\*2=8 \(stages\[0\].downsample_stride=4, stages\[1\]"
    with pytest.raises(ValueError, match=message):
        model(_frames((1, 2, 100, 96, 1)))
    with pytest.raises(ValueError, match=r"frame width 30 .* 4\*2=8"):
        model.build((None, None, 32, 30, 1))


@pytest.mark.parametrize(
    "stages, match",
    [
        ([], "non-empty"),
        (
            [_stage(downsample_kernel=2, downsample_stride=3)],
            r"stride=3 is larger than stages\[0\].downsample_kernel=2",
        ),
        ([_stage(filters=0)], r"stages\[0\].filters"),
        ([{"filters": 4}], "exactly the keys"),
    ],
)
def test_inconsistent_stages_are_rejected(stages, match):
    with pytest.raises(ValueError, match=match):
        EncoderForecaster(stages, n_out=2)


def test_output_is_float32_under_mixed_precision():
    model = EncoderForecaster(TWO_STAGES, n_out=2, dtype="mixed_bfloat16")
    forecast = model(_frames((1, 2, 16, 16, 1)))
    assert keras.backend.standardize_dtype(forecast.dtype) == "float32"
    assert model.encoder_rnns[0].cell.compute_dtype == "bfloat16"


def test_saved_and_loaded_model_gives_identical_forecasts(tmp_path):
    model = EncoderForecaster(TWO_STAGES, n_out=3, peephole=True, layer_norm=True)
    inputs = _frames((2, 3, 16, 16, 1))
    expected = np.asarray(model(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, EncoderForecaster)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_allclose(np.asarray(loaded(inputs)), expected, rtol=0, atol=1e-6)


def test_last_frame_skip_gives_the_head_the_newest_frame_of_each_sample(tmp_path):
    model = EncoderForecaster(TWO_STAGES, n_out=3, head_filters=4, last_frame_skip=True)
    inputs = _frames((2, 3, 16, 16, 1))
    model(inputs)
    # The head's kernel takes the 4 upsampled channels, then the frame: pass only the frame.
    kernel = np.zeros(model.head.kernel.shape, np.float32)
    assert kernel.shape == (3, 3, 5, 4)
    kernel[1, 1, 4, 0] = 1.0
    model.head.set_weights([kernel, np.zeros(4, np.float32)])
    model.output_conv.set_weights([np.ones((1, 1, 4, 1), np.float32), np.zeros(1, np.float32)])
    forecast = np.asarray(model(inputs))
    for lead in range(3):
        np.testing.assert_allclose(forecast[:, lead], inputs[:, -1], rtol=1e-6)

    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_config()["last_frame_skip"] is True
    np.testing.assert_allclose(np.asarray(loaded(inputs)), forecast, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="`last_frame_skip` must be True or False"):
        EncoderForecaster(TWO_STAGES, n_out=3, last_frame_skip="yes")


@pytest.mark.parametrize("recurrent", RECURRENT_LAYERS)
def test_each_forecaster_stage_starts_from_its_encoder_stages_final_state(monkeypatch, recurrent):
    # The hand-off on its own: the other model tests still pass when a forecaster stage starts
    # from zeros instead.
    model = EncoderForecaster(TWO_STAGES, n_out=2, recurrent=recurrent)
    inputs = _frames((2, 3, 16, 16, 1))
    model.build(inputs.shape)
    initial_states, final_states = {}, {}

    def record(layer):
        call = layer.call

        def recording_call(*args, **kwargs):
            initial_states[layer.name] = kwargs.get("initial_state")
            outputs = call(*args, **kwargs)
            # ConvLSTM returns (sequence, [h, c]); ConvLSTM2D [sequence, h, c].
            final_states[layer.name] = outputs[1] if recurrent == "fused" else outputs[1:]
            return outputs

        monkeypatch.setattr(layer, "call", recording_call)

    for layer in (*model.encoder_rnns, *model.forecaster_rnns):
        record(layer)
    model(inputs)
    for k in range(len(TWO_STAGES)):
        assert initial_states[f"encoder_rnn_{k}"] is None
        handed = initial_states[f"forecaster_rnn_{k}"]
        assert handed is not None, f"forecaster stage {k} started from zeros"
        for got, want in zip(handed, final_states[f"encoder_rnn_{k}"], strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_build_model_from_each_config_form():
    dataclass_cfg = ModelConfig(
        stages=[
            StageConfig(filters=6, downsample_filters=4, downsample_kernel=3, downsample_stride=2)
        ],
        head_filters=4,
    )
    for cfg in (dataclass_cfg, OmegaConf.structured(dataclass_cfg)):
        model = build_model(cfg, n_out=2, input_shape=(16, 16, 1))
        assert model.built and model.count_params() > 0
        assert model.n_out == 2 and model.head_filters == 4


def test_build_model_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="'unet'.*encoder_forecaster"):
        build_model({"name": "unet", "stages": TWO_STAGES}, n_out=2)


def _keras_to_fused(kernel, recurrent_kernel, bias, forget_bias):
    """ConvLSTM2D weights as the fused cell's: one kernel over [x, h], gates (i, j, f, o).

    Keras orders the gates (i, f, c, o) and has its forget bias in `bias`; the fused cell adds
    `forget_bias` at run time, so it is taken out of the copied bias.
    """

    def to_ijfo(array):
        i, f, c, o = np.split(array, 4, axis=-1)
        return np.concatenate([i, c, f, o], axis=-1)

    i, f, c, o = np.split(bias, 4)
    bias = np.concatenate([i, f - forget_bias, c, o])
    return [to_ijfo(np.concatenate([kernel, recurrent_kernel], axis=2)), to_ijfo(bias)]


def test_keras_recurrent_layers_compute_the_same_network():
    keras_model = EncoderForecaster(TWO_STAGES, n_out=3, recurrent="keras")
    fused = EncoderForecaster(TWO_STAGES, n_out=3)
    inputs = _frames((2, 4, 16, 16, 1))
    keras_model.build(inputs.shape)
    fused.build(inputs.shape)
    rng = np.random.default_rng(1)
    for variable in keras_model.weights:
        variable.assign(rng.normal(scale=0.3, size=variable.shape).astype("float32"))
    for source, target in zip(keras_model.layers, fused.layers, strict=True):
        assert source.name == target.name
        weights = source.get_weights()
        if isinstance(source, keras.layers.ConvLSTM2D):
            assert isinstance(target.cell, FusedConvLSTMCell)
            kernel, recurrent_kernel, bias = weights
            if target.cell.input_channels == 0:
                # The top forecaster stage: ConvLSTM2D's one zero input channel has weights of
                # its own, which multiply zeros.
                assert source.name == "forecaster_rnn_1" and kernel.shape[2] == 1
                kernel = kernel[:, :, :0]
            weights = _keras_to_fused(kernel, recurrent_kernel, bias, fused.forget_bias)
        target.set_weights(weights)
    # Same states carried from encoder to forecaster, same forecasts.
    np.testing.assert_allclose(
        np.asarray(fused(inputs)), np.asarray(keras_model(inputs)), rtol=0, atol=1e-5
    )
    top_filters = TWO_STAGES[-1]["filters"]
    assert keras_model.count_params() - fused.count_params() == 3 * 3 * 4 * top_filters


def test_recurrent_option_through_the_config_and_serialisation(tmp_path):
    cfg = OmegaConf.structured(
        ModelConfig(stages=[StageConfig(**TWO_STAGES[0])], recurrent="keras")
    )
    model = build_model(cfg, n_out=2, input_shape=(16, 16, 1))
    assert all(isinstance(rnn, keras.layers.ConvLSTM2D) for rnn in model.encoder_rnns)
    inputs = _frames((1, 2, 16, 16, 1))
    expected = np.asarray(model(inputs))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_config()["recurrent"] == "keras"
    np.testing.assert_allclose(np.asarray(loaded(inputs)), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"recurrent": "torch"}, "fused, keras.*'torch'"),
        ({"recurrent": "keras", "peephole": True}, "peephole=True"),
        ({"recurrent": "keras", "layer_norm": True}, "layer_norm=True"),
        ({"recurrent": "keras", "forget_bias": 0.5}, "forget_bias=0.5"),
    ],
)
def test_recurrent_option_rejects_what_conv_lstm2d_cannot_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EncoderForecaster(TWO_STAGES, n_out=2, **kwargs)
