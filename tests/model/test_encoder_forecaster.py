"""EncoderForecaster shapes, validation, serialisation, and the model registry."""

import keras
import numpy as np
import pytest
from omegaconf import OmegaConf

from nowcast.config import ModelConfig, StageConfig
from nowcast.model import EncoderForecaster, build_model


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
