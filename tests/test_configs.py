"""Every option of every config group composes against its schema, and typos fail at start-up."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nowcast.config import MetricsConfig, config_dir, register_configs
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


def test_loss_options_hold_only_their_terms_and_combine_on_the_command_line(compose_config):
    assert compose_config("loss=mae").loss.terms == {"mae": 1.0}
    assert compose_config("loss=balanced").loss.terms == {"balanced_mse": 1.0, "balanced_mae": 1.0}
    default = compose_config().loss  # balanced_csi: the balanced losses plus the soft CSI
    assert default.soft_csi_thresholds_mmh == MetricsConfig().thresholds_mmh  # trained as scored
    assert default.terms == {"balanced_mse": 1.0, "balanced_mae": 1.0, "soft_csi": 0.5}
    assert default.lead_decay == compose_config("loss=balanced").loss.lead_decay == 0.9
    combined = compose_config("loss=mse", "+loss.terms.balanced_mae=0.5").loss.terms
    assert combined == {"mse": 1.0, "balanced_mae": 0.5}


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


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_into_a_valid_run(compose_config, experiment):
    cfg = compose_config(f"experiment={experiment}", "data.path=somewhere.h5")
    assert make_optimizer(cfg.optimizer, total_steps=10).learning_rate is not None
    assert make_loss(cfg.loss, cfg.data.normalisation).terms
    if cfg.data.name == "synthetic":  # the network takes the frames the preset generates
        frame = (cfg.data.synthetic.height, cfg.data.synthetic.width, 1)
        assert build_model(cfg.model, n_out=1, input_shape=frame).count_params() > 0


def test_experiment_sets_several_groups_and_keeps_command_line_overrides(compose_config):
    cfg = compose_config("experiment=shi2017_hko7", "data.path=hko7.h5", "data.batch_size=2")
    assert cfg.data.name == "radar_hdf5" and cfg.data.n_out == 20
    assert len(cfg.model.stages) == 3 and cfg.model.stages[0].downsample_stride == 5
    assert set(cfg.loss.terms) == {"balanced_mse", "balanced_mae"}
    assert (cfg.optimizer.schedule, cfg.optimizer.beta_1) == ("step", 0.5)
    assert cfg.trainer.steps_per_epoch is None
    assert cfg.data.batch_size == 2


def compose_with_hydra(*overrides):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_resume_runs_in_the_run_directory():
    assert compose_with_hydra("resume=/runs/a").hydra.run.dir == "/runs/a"
    assert compose_with_hydra().hydra.run.dir.startswith("logs/train/")


def test_slurm_launcher_config_extends_the_submitit_plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = compose_with_hydra("hydra/launcher=slurm").hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.tasks_per_node == 1
    assert OmegaConf.is_missing(launcher, "partition") or launcher.partition is None


@pytest.mark.parametrize(
    "override",
    [
        "trainer.epochz=3",
        "trainer.epochs=three",
        "model.stages.0.filterz=4",
        "data=radar",
        "experiment=shi2017",
    ],
)
def test_typos_and_wrong_types_fail_when_composing(compose_config, override):
    with pytest.raises(ConfigCompositionException):
        compose_config(override)


def test_synthetic_store_name_follows_its_size(compose_config):
    cfg = compose_config("data.synthetic.height=64", "data.synthetic.width=64")
    assert cfg.data.path.endswith("synthetic_64x64_f2304_s0.h5")
