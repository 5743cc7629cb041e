"""Every option of every config group composes against its schema, and typos fail at start-up."""

import pytest
from hydra.errors import ConfigCompositionException

from nowcast.config import config_dir
from nowcast.losses import make_loss
from nowcast.model import build_model
from nowcast.training import make_optimizer

# Frame sizes that each model preset's strides divide (HKO-7: 5 * 3 * 2 = 30).
FRAME_SIZE = {"convlstm_small": 32, "convlstm_hko7": 60, "convlstm_shi2015": 16}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def test_model_presets_are_all_listed_here():
    assert set(options("model")) == set(FRAME_SIZE)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_preset_builds(compose_config, model):
    cfg = compose_config(f"model={model}")
    size = FRAME_SIZE[model]
    net = build_model(cfg.model, n_out=2, input_shape=(size, size, 1))
    assert net.count_params() > 0


@pytest.mark.parametrize("loss", options("loss"))
def test_every_loss_option_builds(compose_config, loss):
    cfg = compose_config(f"loss={loss}")
    assert make_loss(cfg.loss, cfg.data.normalisation).terms


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_option_builds(compose_config, optimizer):
    cfg = compose_config(f"optimizer={optimizer}")
    assert make_optimizer(cfg.optimizer, total_steps=10).learning_rate is not None


@pytest.mark.parametrize(
    "override",
    [f"data={o}" for o in options("data")]
    + [f"trainer={o}" for o in options("trainer")]
    + [f"debug={o}" for o in options("debug")],
)
def test_every_other_option_composes(compose_config, override):
    cfg = compose_config(override, "data.path=somewhere.h5")
    assert cfg.data.n_in > 0 and cfg.trainer.epochs > 0


@pytest.mark.parametrize(
    "override",
    ["trainer.epochz=3", "trainer.epochs=three", "model.stages.0.filterz=4", "data=radar"],
)
def test_typos_and_wrong_types_fail_when_composing(compose_config, override):
    with pytest.raises(ConfigCompositionException):
        compose_config(override)


def test_synthetic_store_name_follows_its_size(compose_config):
    cfg = compose_config("data.synthetic.height=64", "data.synthetic.width=64")
    assert cfg.data.path.endswith("synthetic_64x64_f2304_s0.h5")
