"""Every option of every config group composes against its schema into the values its file sets
and builds what they describe; typos fail at start-up."""

from pathlib import Path

import keras
import numpy as np
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


def values_set_by(path: Path) -> dict:
    """Dotted key -> value of each leaf that an option's file sets, under the package it is
    composed into; left out: its defaults list, `???` and interpolations."""
    package = ".".join(path.relative_to(config_dir()).parent.parts)
    if path.read_text().startswith("# @package _global_"):
        package = ""
    values = {}

    def walk(node, key):
        if isinstance(node, dict):
            for name, child in node.items():
                walk(child, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{key}.{index}")
        elif not (isinstance(node, str) and ("${" in node or node == "???")):
            values[key] = node

    content = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    content.pop("defaults", None)
    walk(content, package)
    return values


def assert_holds_the_values_of(cfg, path: Path) -> None:
    values = values_set_by(path)
    assert values, path
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, f"{key} of {path.name}"


def assert_built_as_configured(net: keras.Model, model_cfg) -> None:
    """Each stage's layers have the sizes its config gives."""
    for k, stage in enumerate(model_cfg.stages):
        conv = net.get_layer(f"encoder_conv_{k}")
        assert conv.filters == stage.downsample_filters
        assert conv.kernel_size == (stage.downsample_kernel,) * 2
        assert conv.strides == (stage.downsample_stride,) * 2
        for name in (f"encoder_rnn_{k}", f"forecaster_rnn_{k}"):
            cell = net.get_layer(name).cell
            assert (cell.filters, cell.kernel_size) == (stage.filters, (stage.kernel_size,) * 2)
    assert len(net.encoder_rnns) == len(model_cfg.stages)
    assert net.get_layer("head_conv").filters == model_cfg.head_filters
    assert net.advection == model_cfg.advection


def assert_learning_rates_as_configured(optimizer, opt_cfg, total_steps: int) -> None:
    """The optimizer's name, and its rate at the start and once warm-up is over."""
    assert type(optimizer).__name__.lower() == opt_cfg.name  # Adam, AdamW
    warmup = min(opt_cfg.warmup_steps, total_steps - 1)
    for step, rate in [
        (0, 0.0 if warmup else opt_cfg.learning_rate),
        (warmup, opt_cfg.learning_rate),
    ]:
        optimizer.iterations.assign(step)
        assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(rate)


def test_model_presets_are_all_listed_here():
    assert set(options("model")) == set(FRAME_SIZE)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_preset_builds(compose_config, model):
    cfg = compose_config(f"model={model}")
    size = FRAME_SIZE[model]
    net = build_model(cfg.model, n_out=2, input_shape=(size, size, 1))
    assert_built_as_configured(net, cfg.model)
    forecast = net(np.zeros((1, 2, size, size, 1), "float32"))
    assert tuple(forecast.shape) == (1, 2, size, size, 1)


@pytest.mark.parametrize("loss", options("loss"))
def test_every_loss_option_builds(compose_config, loss):
    cfg = compose_config(f"loss={loss}")
    expected = OmegaConf.to_container(cfg.loss.terms)
    assert make_loss(cfg.loss, cfg.data.normalisation).terms == expected


def test_loss_options_hold_only_their_terms_and_combine_on_the_command_line(compose_config):
    assert compose_config("loss=mae").loss.terms == {"mae": 1.0}
    assert compose_config("loss=balanced").loss.terms == {"balanced_mse": 1.0, "balanced_mae": 1.0}
    default = compose_config().loss  # balanced_csi: the balanced losses plus the soft CSI
    assert default.soft_csi_thresholds_mmh == MetricsConfig().thresholds_mmh  # trained as scored
    assert default.terms == {"balanced_mse": 1.0, "balanced_mae": 1.0, "soft_csi": 0.5}
    assert default.lead_decay == compose_config("loss=balanced").loss.lead_decay == 0.9
    matched = compose_config("loss=balanced_matched_csi").loss
    assert matched.terms == {"balanced_mse": 1.0, "balanced_mae": 1.0, "matched_csi": 0.5}
    assert matched.soft_csi_thresholds_mmh == default.soft_csi_thresholds_mmh
    combined = compose_config("loss=mse", "+loss.terms.balanced_mae=0.5").loss.terms
    assert combined == {"mse": 1.0, "balanced_mae": 0.5}


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_option_builds(compose_config, optimizer):
    cfg = compose_config(f"optimizer={optimizer}")
    assert_holds_the_values_of(cfg, config_dir() / "optimizer" / f"{optimizer}.yaml")
    built = make_optimizer(cfg.optimizer, total_steps=10)
    assert_learning_rates_as_configured(built, cfg.optimizer, total_steps=10)


@pytest.mark.parametrize(
    "override",
    [f"data={o}" for o in options("data")]
    + [f"trainer={o}" for o in options("trainer")]
    + [f"debug={o}" for o in options("debug")],
)
def test_every_other_option_composes_and_holds_its_values(compose_config, override):
    cfg = compose_config(override, "data.path=somewhere.h5")
    group, option = override.split("=")
    assert_holds_the_values_of(cfg, config_dir() / group / f"{option}.yaml")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_into_a_valid_run(compose_config, experiment):
    cfg = compose_config(f"experiment={experiment}", "data.path=somewhere.h5")
    assert_holds_the_values_of(cfg, config_dir() / "experiment" / f"{experiment}.yaml")
    built = make_optimizer(cfg.optimizer, total_steps=10)
    assert_learning_rates_as_configured(built, cfg.optimizer, total_steps=10)
    expected = OmegaConf.to_container(cfg.loss.terms)
    assert make_loss(cfg.loss, cfg.data.normalisation).terms == expected
    if cfg.data.name == "synthetic":  # the network takes the frames the preset generates
        frame = (cfg.data.synthetic.height, cfg.data.synthetic.width, 1)
        assert_built_as_configured(build_model(cfg.model, n_out=1, input_shape=frame), cfg.model)


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
    cfg = compose_with_hydra("hydra/launcher=slurm")
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert_holds_the_values_of(cfg, config_dir() / "hydra" / "launcher" / "slurm.yaml")


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
    assert cfg.data.path.endswith("synthetic_v2_64x64_f2304_s0.h5")


def test_the_gpu_recipe_for_real_radar_is_the_cpu_recipe_scaled_up(compose_config):
    """Scores of the two compare: only batch, patch size and schedule differ."""
    cpu = compose_config("experiment=real_radar", "data.path=[a.h5]")
    gpu = compose_config("experiment=real_radar_gpu", "data.path=[a.h5]")
    assert gpu.model == cpu.model and gpu.loss == cpu.loss
    assert (gpu.data.batch_size, gpu.data.patch_size) == (16, 256)
    assert gpu.data.augment and gpu.data.valid_fraction_of == "coverage"
    assert gpu.optimizer.learning_rate == cpu.optimizer.learning_rate
    steps = [cfg.trainer.epochs * cfg.trainer.steps_per_epoch for cfg in (cpu, gpu)]
    assert steps[1] > steps[0]
