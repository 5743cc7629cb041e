"""train(cfg) end to end on tiny runs: outputs, seeds, resume, non-finite losses, devices."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nowcast import distribute
from nowcast.callbacks import NonFiniteLossError
from nowcast.config import config_dir, register_configs
from nowcast.distribute import (
    check_global_batch,
    choose_precision,
    cpu_flags,
    distribute_windows,
    make_strategy,
    resolve_jit_compile,
)
from nowcast.losses import make_loss
from nowcast.model.encoder_forecaster import LEAD_TABLE
from nowcast.resume import TrainingState, resume_config
from nowcast.training import (
    RunBatches,
    build_compiled_model,
    evenly_spaced,
    make_optimizer,
    split_windows,
    train,
    window_order,
)

# Two epochs of three steps, a backup every two steps: enough to interrupt mid-epoch.
REFERENCE = (
    "debug=fast",
    "trainer.epochs=2",
    "trainer.backup_every_steps=2",
    "trainer.validation_steps=1",
    "trainer.image_samples=1",
    "trainer.verbose=0",
    # Flips drawn by each window's place in the run: a resumed or distributed run must match.
    "data.augment=true",
    # Patches placed the same way: trained on 16x16 patches, validated on the 32x32 frames.
    "data.patch_size=16",
    # MSE: with the balanced loss, validation losses under MirroredStrategy differ from one
    # device by about 1e-3 relative (training losses by 2e-5); not yet explained.
    "loss=mse",
)


def compose_run(run_dir, store, *overrides):
    """The reference config with outputs in `run_dir`; module-scoped fixtures need it too."""
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={run_dir}",
                f"paths.data_dir={run_dir.parent}",
                f"data.path={store}",
                *REFERENCE,
                *overrides,
            ],
        )
    GlobalHydra.instance().clear()
    OmegaConf.resolve(cfg)
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_store):
    """One uninterrupted two-epoch run that the other tests compare with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return train(compose_run(run_dir, tiny_store))


@pytest.fixture
def run_config(tmp_path, tiny_store):
    def _compose(*overrides):
        return compose_run(tmp_path / "run", tiny_store, *overrides)

    return _compose


def tensorboard_tags(folder) -> set[str]:
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags.update(value.tag for value in event.summary.value)
    return tags


def assert_same_history(history, expected, rtol=1e-5):
    assert history.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(history[name], expected[name], rtol=rtol, err_msg=name)


def test_the_steps_of_a_fit_can_be_called_one_by_one(fast_config, tmp_path):
    """The windows (split.json written), their batches and the compiled model, as `_fit` makes
    them, without training."""
    cfg = fast_config(f"paths.output_dir={tmp_path}")
    windows = split_windows(cfg, tmp_path)
    assert json.loads((tmp_path / "split.json").read_text())["splits"].keys() == {
        "train",
        "val",
        "test",
    }
    assert not set(windows.starts["train"]) & set(windows.starts["val"])
    batches = RunBatches(cfg, windows, None, total_steps=2)
    inputs, targets = next(iter(batches.training(1)))[:2]
    assert tuple(inputs.shape) == (2, 3, 32, 32, 1) and tuple(targets.shape) == (2, 3, 32, 32, 1)
    loss = make_loss(cfg.loss, cfg.data.normalisation)
    model = build_compiled_model(cfg, windows.shapes[0], total_steps=2, loss=loss, initial=None)
    assert model.compiled and tuple(model(inputs).shape) == (2, 3, 32, 32, 1)


def test_run_directory_holds_models_logs_and_state(reference):
    run_dir = reference.run_dir
    for name in ["config.yaml", "split.json", "model.keras", "metrics.csv"]:
        assert (run_dir / name).is_file(), name
    for name in ["best.keras", "last.keras"]:
        assert (run_dir / "checkpoints" / name).is_file(), name
    assert {"epoch_loss", "epoch_learning_rate"} <= tensorboard_tags(run_dir / "tensorboard/train")
    assert "forecasts" in tensorboard_tags(run_dir / "tensorboard/forecasts")

    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert reference.history.keys() == {"loss", "val_loss", "learning_rate"}
    for name, values in reference.history.items():
        assert len(values) == 2 and np.isfinite(values).all(), name
        np.testing.assert_allclose(values, [float(row[name]) for row in rows], rtol=1e-6)

    state = TrainingState.load(run_dir / "backup")
    assert (state.epoch, state.step, state.stopped_early) == (2, 0, False)
    assert state.callbacks["best_checkpoint"]["best"] == min(reference.history["val_loss"])

    split = json.loads((run_dir / "split.json").read_text())["splits"]
    assert set(split["train"]["start_times"]).isdisjoint(split["test"]["start_times"])
    model = keras.models.load_model(run_dir / "model.keras")
    inputs = np.zeros((1, 3, 32, 32, 1), "float32")
    assert model.predict(inputs, verbose=0).shape == (1, 3, 32, 32, 1)
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), reference.model.predict(inputs, verbose=0), atol=1e-6
    )


def test_same_seed_gives_the_same_losses(reference, run_config):
    assert_same_history(train(run_config()).history, reference.history)


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Raises after the given step of the given epoch, as a killed job would stop."""

    def __init__(self, epoch: int, step: int):
        super().__init__()
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current_epoch, batch + 1) == (self.epoch, self.step):
            raise Interrupt


def test_interrupted_run_continues_mid_epoch_to_the_same_result(reference, run_config):
    cfg = run_config()
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(Interrupt):
        train(cfg, callbacks=[InterruptAt(epoch=1, step=3)])
    state = TrainingState.load(run_dir / "backup")
    assert (state.epoch, state.step) == (1, 2)
    assert not (run_dir / "model.keras").exists()
    other = run_config("data.batch_size=4", "model.head_filters=8")
    with pytest.raises(ValueError, match=r"data.batch_size: 2 -> 4; model.head_filters: 4 -> 8"):
        train(other)

    resumed = train(cfg)  # the same command again
    assert_same_history(resumed.history, reference.history)
    assert int(resumed.model.optimizer.iterations.numpy()) == 6
    for got, expected in zip(
        resumed.model.get_weights(), reference.model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    with (run_dir / "metrics.csv").open() as file:
        assert [row["epoch"] for row in csv.DictReader(file)] == ["0", "1"]

    with pytest.raises(FileExistsError, match="trained its 2 epochs.*raise trainer.epochs"):
        train(cfg)


def test_resume_takes_the_saved_config_and_key_overrides(reference):
    cfg = resume_config(reference.run_dir, ["trainer.epochs=3", "optimizer.learning_rate=1e-4"])
    assert cfg.paths.output_dir == str(reference.run_dir)
    assert (cfg.trainer.epochs, cfg.optimizer.learning_rate) == (3, 1e-4)
    assert cfg.model.head_filters == 4 and cfg.data.n_out == 3  # debug=fast, from the run
    with pytest.raises(ValueError, match="only key=value overrides.*'model=convlstm_hko7'"):
        resume_config(reference.run_dir, ["model=convlstm_hko7"])
    with pytest.raises(FileNotFoundError, match="no config.yaml in"):
        resume_config(reference.run_dir / "checkpoints")


def test_resume_takes_a_config_saved_with_keys_removed_since(reference, tmp_path):
    saved = OmegaConf.load(reference.run_dir / "config.yaml")
    saved.data.shuffle_buffer = 256  # in every config.yaml written before it was removed
    OmegaConf.save(saved, tmp_path / "config.yaml")
    cfg = resume_config(tmp_path)
    assert "shuffle_buffer" not in cfg.data and cfg.data.n_out == 3


def test_resume_keeps_the_soft_csi_thresholds_of_a_run_saved_before_they_had_a_key(
    reference, tmp_path
):
    saved = OmegaConf.load(reference.run_dir / "config.yaml")
    del saved.loss["soft_csi_thresholds_mmh"]  # config.yaml before the key: the balanced ones
    saved.loss.thresholds_mmh = [2.0, 5.0, 10.0, 30.0]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    assert resume_config(tmp_path).loss.soft_csi_thresholds_mmh == [2.0, 5.0, 10.0, 30.0]
    assert resume_config(reference.run_dir).loss.soft_csi_thresholds_mmh == [
        0.5, 1.0, 2.0, 5.0, 10.0, 30.0
    ]  # fmt: skip


def test_resume_keeps_the_block_length_the_run_chose(reference, tmp_path):
    """A run that chose its block length goes on with it, whatever a later version would
    choose for the same stores: its validation windows must not become training windows."""
    saved = OmegaConf.load(reference.run_dir / "config.yaml")
    saved.data.split.block_hours = None  # chosen by the run
    OmegaConf.save(saved, tmp_path / "config.yaml")
    assert resume_config(tmp_path).data.split.block_hours is None  # no split.json: choose again
    split = json.loads((reference.run_dir / "split.json").read_text())
    (tmp_path / "split.json").write_text(json.dumps(split | {"block_hours": 6.0}))
    assert resume_config(tmp_path).data.split.block_hours == 6.0
    overridden = resume_config(tmp_path, ["data.split.block_hours=2"])
    assert overridden.data.split.block_hours == 2.0
    (tmp_path / "split.json").write_text('{"store": ')  # cut short
    with pytest.raises(ValueError, match=r"split.json is not a split record.*block_hours=6"):
        resume_config(tmp_path)
    assert resume_config(tmp_path, ["data.split.block_hours=2"]).data.split.block_hours == 2.0


class PoisonWeights(keras.callbacks.Callback):
    """Sets the output kernel to NaN before the given step of the given epoch."""

    def __init__(self, epoch: int, step: int):
        super().__init__()
        self.epoch, self.step = epoch, step

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.current_epoch, batch + 1) == (self.epoch, self.step):
            kernel = self.model.get_layer("output_conv").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(run_config):
    cfg = run_config()
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 2, step 2.*resume="):
        train(cfg, callbacks=[PoisonWeights(epoch=1, step=2)])
    assert not (run_dir / "model.keras").exists()
    last = keras.models.load_model(run_dir / "checkpoints/last.keras")
    assert all(np.isfinite(w).all() for w in last.get_weights())
    state = TrainingState.load(run_dir / "backup")
    assert (state.epoch, state.step) == (1, 0)
    backup = keras.models.load_model(run_dir / "checkpoints/last.keras")
    backup.load_weights(run_dir / "backup" / state.weights)
    assert all(np.isfinite(w).all() for w in backup.get_weights())


class RecordStartingWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]


def test_init_starts_a_new_run_from_another_runs_weights(reference, run_config, tmp_path):
    best = keras.models.load_model(reference.run_dir / "checkpoints/best.keras")
    expected = [np.array(w) for w in best.get_weights()]
    # Four lead times instead of three: the gate logits of the third go on to the fourth.
    lead_table = next(k for k, w in enumerate(best.weights) if w.name == LEAD_TABLE)
    table = expected[lead_table]
    assert np.all(table[-1] != 0)  # trained, so that the repeated row is seen
    expected[lead_table] = np.concatenate([table, table[-1:]])
    for init in (reference.run_dir, reference.run_dir / "checkpoints/best.keras"):
        start = RecordStartingWeights()
        cfg = run_config(f"init={init}", "data.n_out=4", "trainer.epochs=1")
        cfg.paths.output_dir = str(tmp_path / f"from_{Path(init).name}")
        result = train(cfg, callbacks=[start])
        assert len(start.weights) == len(expected)
        for started, saved in zip(start.weights, expected, strict=True):
            np.testing.assert_array_equal(started, saved)
        # A new run with its own schedule: one epoch of its own, not the reference's third.
        assert len(result.history["loss"]) == 1
        assert OmegaConf.load(result.run_dir / "config.yaml").init == str(init)
    fresh = RecordStartingWeights()
    train(run_config(), callbacks=[fresh])
    assert not np.array_equal(fresh.weights[0], expected[0])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.head_filters=8"], r"init=.* holds another architecture than this run's model "
                                   r"\(head_filters=4 in the checkpoint, 8 expected\)"),
        (["data.normalisation.dbz_max=60"], r"init=.* was trained on data.normalisation"),
    ],
)  # fmt: skip
def test_init_of_another_model_is_one_line_before_any_output(
    reference, run_config, overrides, message
):
    cfg = run_config(f"init={reference.run_dir}", *overrides)
    with pytest.raises(ValueError, match=message) as error:
        train(cfg)
    assert "\n" not in str(error.value)
    run_dir = Path(cfg.paths.output_dir)
    for written in ("model.keras", "config.yaml", "split.json", "checkpoints"):
        assert not (run_dir / written).exists(), written


def test_init_that_is_not_a_checkpoint_is_one_line(run_config, tmp_path):
    missing = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError, match=f"init={missing} does not exist"):
        train(run_config(f"init={missing}"))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt.keras is not a Keras checkpoint"):
        train(run_config(f"init={corrupt}"))


@pytest.mark.skipif(
    len(tf.config.list_logical_devices("CPU")) < 2, reason="needs two logical CPU devices"
)
def test_mirrored_strategy_on_two_cpus_gives_the_losses_of_one_device(reference, run_config):
    # Global batch 2: one window per replica, the two replicas together the one-device batch.
    result = train(run_config("trainer.strategy=mirrored"))
    assert_same_history(result.history, reference.history)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_strategy_with_two_workers_gives_the_losses_of_one_device(
    reference, tmp_path, tiny_store
):
    run_dir = tmp_path / "run"
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    command = [
        sys.executable,
        "-m",
        "nowcast.train",
        *REFERENCE,
        f"data.path={tiny_store}",
        f"hydra.run.dir={run_dir}",
        "trainer.strategy=multi_worker",
    ]
    processes = [
        subprocess.Popen(
            command,
            env={
                **os.environ,
                "TF_CONFIG": json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                ),
            },
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    assert "2 replica(s) with MultiWorkerMirroredStrategy" in outputs[0]
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    history = {name: [float(row[name]) for row in rows] for name in reference.history}
    assert_same_history(history, reference.history)


def test_mixed_bfloat16_trains_and_restores_the_global_policy(run_config):
    result = train(
        run_config(
            "trainer.precision=mixed_bfloat16",
            "trainer.epochs=1",
            "trainer.steps_per_epoch=1",
            "trainer.image_samples=0",
        )
    )
    assert result.model.dtype_policy.name == "mixed_bfloat16"
    assert np.isfinite(result.history["loss"]).all()
    assert keras.mixed_precision.global_policy().name == "float32"


def test_missing_store_names_the_path_and_the_fix(fast_config, tmp_path):
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match=f"data store not found: {missing}.*data.path"):
        train(fast_config("data=radar_hdf5", f"data.path={missing}"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.peephole=true"], r"data.patch_size=16 needs a model that takes any frame size"),
        (["data.patch_size=15"], r"data.patch_size=15 must be a multiple of .* strides \(2\)"),
        (["data.patch_size=64"], r"data.patch_size=64 .* no larger than the 32 x 32 frames"),
    ],
)
def test_patches_the_model_cannot_train_on_fail_before_any_output(run_config, overrides, message):
    cfg = run_config(*overrides)
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not list(Path(cfg.paths.output_dir).iterdir())


def test_window_order_passes_over_every_window_and_extends_consistently():
    order = window_order(5, seed=3, count=12)
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    np.testing.assert_array_equal(window_order(5, seed=3, count=7), order[:7])
    assert not np.array_equal(window_order(5, seed=4, count=12), order)


def test_validation_windows_spread_over_the_whole_split():
    starts = np.arange(100, 200)
    np.testing.assert_array_equal(evenly_spaced(starts, 5), [100, 125, 150, 174, 199])
    np.testing.assert_array_equal(evenly_spaced(starts, 1), [100])
    np.testing.assert_array_equal(evenly_spaced(starts, 100), starts)
    np.testing.assert_array_equal(evenly_spaced(starts, 500), starts)


class FakeContext:
    def __init__(self, pipelines, pipeline, replicas):
        self.num_input_pipelines, self.input_pipeline_id = pipelines, pipeline
        self.replicas = replicas

    def get_per_replica_batch_size(self, global_batch):
        return global_batch // self.replicas


class FakeStrategy:
    """Two workers with two replicas each: calls the dataset function once per worker."""

    def distribute_datasets_from_function(self, dataset_fn):
        return [dataset_fn(FakeContext(2, pipeline, replicas=4)) for pipeline in range(2)]


def test_each_worker_reads_its_part_of_every_global_batch_at_its_place_in_the_run():
    windows = 100 + np.arange(24).reshape(3, 8)  # 3 steps of global batch 8
    parts = distribute_windows(FakeStrategy(), windows, lambda *args: args, first_position=40)
    assert [batch for _, batch, _ in parts] == [2, 2]
    first = np.array([0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19])
    np.testing.assert_array_equal(parts[0][0], 100 + first)
    np.testing.assert_array_equal(parts[1][0], 104 + first)
    np.testing.assert_array_equal(parts[0][2], 40 + first)
    np.testing.assert_array_equal(parts[1][2], 44 + first)
    starts, batch, positions = distribute_windows(None, windows, lambda *args: args)
    np.testing.assert_array_equal(starts, 100 + np.arange(24))
    np.testing.assert_array_equal(positions, np.arange(24))
    assert batch == 8


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ([], "float32"),
        ([(6, 1)], "float32"),
        ([(7, 5)], "mixed_float16"),
        ([(8, 0), (9, 0)], "mixed_bfloat16"),
        ([(7, 0), (9, 0)], "mixed_float16"),
    ],
)
def test_auto_precision_follows_the_gpus_found(monkeypatch, capabilities, expected):
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: capabilities)
    # flags=(): without GPUs, a CPU without native bfloat16.
    assert choose_precision("auto", flags=())[0] == expected
    if capabilities:  # with GPUs, the CPU's flags do not count
        assert choose_precision("auto", flags={"avx512_bf16"})[0] == expected
    assert choose_precision("float32")[0] == "float32"


@pytest.mark.parametrize(
    "flags, backend, onednn, expected, why",
    [
        ((), "tensorflow", None, "float32", "without native bfloat16"),
        (("avx2", "avx512f", "avx512_vnni"), "tensorflow", None, "float32", "without native"),
        (("avx512f", "avx512_bf16"), "tensorflow", None, "mixed_bfloat16", "avx512_bf16"),
        (("amx_tile", "amx_bf16"), "tensorflow", "1", "mixed_bfloat16", "amx_bf16"),
        (("avx512_bf16",), "tensorflow", "0", "float32", "TF_ENABLE_ONEDNN_OPTS=0"),
        (("avx512_bf16",), "jax", None, "float32", "under jax"),
    ],
)
def test_auto_precision_on_a_cpu_follows_its_bf16_flags(
    monkeypatch, flags, backend, onednn, expected, why
):
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute.keras.backend, "backend", lambda: backend)
    if onednn is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    policy, reason = choose_precision("auto", flags=flags)
    assert policy == expected
    assert why in reason
    # An explicit precision passes through whatever the CPU.
    for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert choose_precision(precision, flags=flags) == (precision, "set by trainer.precision")


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    # ARM lists "Features", macOS and Windows have no file: no native bfloat16 assumed.
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(tmp_path / "arm") == frozenset()
    assert cpu_flags(tmp_path / "missing") == frozenset()
    # Without `flags=`, auto reads the machine's own.
    monkeypatch.setattr(distribute, "_gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(distribute, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setattr(distribute.keras.backend, "backend", lambda: "tensorflow")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert choose_precision("auto")[0] == "mixed_bfloat16"


def test_device_settings_resolve_on_this_machine_and_reject_unknown_values(monkeypatch):
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        assert choose_precision("auto")[0] == choose_precision("auto", flags=cpu_flags())[0]
        assert choose_precision("auto", flags=())[0] == "float32"
    assert [resolve_jit_compile(v) for v in ("auto", "True", "false")] == ["auto", True, False]
    with pytest.raises(ValueError, match="allowed: auto, float32.*'float16'"):
        choose_precision("float16")
    with pytest.raises(ValueError, match="trainer.strategy.*'mirored'"):
        make_strategy("mirored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert (make_strategy("auto") is None) == (len(gpus) < 2)
    with pytest.raises(ValueError, match="multi_worker needs a cluster.*TF_CONFIG"):
        make_strategy("multi_worker")
    with pytest.raises(ValueError, match="multiple of 4.*data.batch_size=6"):
        check_global_batch(6, 4)


def rate_at(optimizer, step: int) -> float:
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_schedules_follow_the_config(compose_config):
    step = make_optimizer(
        compose_config(
            "optimizer.schedule=step", "optimizer.warmup_steps=0", "optimizer.decay_steps=10"
        ).optimizer,
        total_steps=100,
    )
    np.testing.assert_allclose(
        [rate_at(step, s) for s in (0, 9, 10, 25)], [1e-3, 1e-3, 7e-4, 4.9e-4], rtol=1e-6
    )
    cosine = make_optimizer(compose_config("optimizer=adam").optimizer, total_steps=1000)
    assert rate_at(cosine, 50) == pytest.approx(5e-4)  # half-way through the warm-up
    assert rate_at(cosine, 1000) == pytest.approx(0.0, abs=1e-9)
    plateau = make_optimizer(compose_config("optimizer=adam_plateau").optimizer, total_steps=100)
    assert rate_at(plateau, 50) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="warmup_steps is only used by the cosine schedule"):
        make_optimizer(compose_config("optimizer.schedule=plateau").optimizer, total_steps=100)
