"""Benchmark the fused-gate ConvLSTM encoder-forecaster against the same network built from
`keras.layers.ConvLSTM2D`, on the same synthetic batches, in one process.

    make bench                                   # the default model and the Shi 2017 preset
    python scripts/benchmark.py --quick          # a tiny model, in seconds (the test runs it)
    python scripts/benchmark.py --presets hko7 --frame-size 240 --batch 4
    python scripts/benchmark.py --precision float32 --jit off   # full precision, XLA off

For each preset it builds the model twice, with `recurrent="fused"` (nowcast.model.ConvLSTM)
and `recurrent="keras"` (ConvLSTM2D), identical otherwise, and measures:

- a training step (`train_on_batch`: forward, loss, backward, Adam update) and a forward pass
  (`predict_on_batch`) of each: warm-up, then `--repeats` rounds that time each call once in
  turn, with the reference conv2d below, so that load from other processes on a shared
  machine hits all of them alike; medians are reported (minima beside them in the table);
- FLOPs: 2 per multiply-add of every convolution, counted analytically from the config (a
  ConvLSTM step convolves [x_t, h_{t-1}] to 4F channels, also where h is zero; a transposed
  convolution counts as the convolution it transposes; element-wise ops, loss and optimizer
  are not counted), and a training step as 3x the forward pass. Both builds are credited with
  the same FLOPs, and the achieved GFLOP/s is compared with one large conv2d timed in the
  same rounds (`utilisation`);
- the input pipeline alone (TensorFlow backend): windows per second from an HDF5 store written
  for the preset's frame size (nowcast.data.pipeline.make_dataset: parallel reads, prefetch),
  against the windows per second one fused training step consumes (`pipeline_headroom`);
- peak memory: the process's maximum resident set size after each build's warm-up (it only
  grows, so the second build's figure includes the first), and the accelerator's peak per
  build where there is one.

XLA (`--jit auto`) is what Keras picks: off for TensorFlow on a CPU (it made ConvLSTM2D far
slower there), on for a GPU and for JAX. The precision (`--precision auto`) is what training's
`trainer.precision=auto` picks (nowcast.distribute.choose_precision): mixed_bfloat16 on CPUs
with native bfloat16 and on GPUs of compute capability 8.0 and up, else mixed_float16 or
float32; the run prints which one ran and why. The JSON records TF_ENABLE_ONEDNN_OPTS:
TensorFlow uses oneDNN kernels by default only on CPUs with AVX-512 and the like, and setting
it to 1 changes CPU figures a lot (`make bench` sets it to 1, as `make train` does).

It prints a table and writes a JSON file with one entry per preset (default
benchmarks/benchmark-<device>-<backend>[-onednn][-<precision>][-<xla>][-<presets>].json, the
presets named when not both). `--profile` also traces a few training steps of each build with the
TensorFlow profiler and prints where the time goes, by op type and by layer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import ops
from omegaconf import OmegaConf

from nowcast.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    NormalisationConfig,
    OptimizerConfig,
    SyntheticConfig,
    config_dir,
)
from nowcast.distribute import PRECISIONS, choose_precision, dtype_policy
from nowcast.losses import make_loss
from nowcast.model import build_model

BUILDS = ("fused", "keras")
FLOP_CONVENTION = (
    "2 FLOPs per multiply-add of every convolution, counted from the config; a ConvLSTM step "
    "convolves [x_t, h_{t-1}] (C_in + F channels) to 4F, also where h is zero; a transposed "
    "convolution counts as the convolution it transposes; element-wise ops, loss and "
    "optimizer not counted; training step = 3 x forward; both builds credited alike"
)


@dataclass(frozen=True)
class Preset:
    """A model config (configs/model/<model>.yaml or inline fields) and the data it runs on."""

    model: str | dict
    frame_size: int
    batch: int
    n_in: int
    n_out: int
    gpu_frame_size: int | None = None  # a larger size where a GPU can afford it


_DATA = DataConfig()
_FRAMES = SyntheticConfig()
PRESETS = {
    # The CPU default: configs/model/convlstm_small.yaml on the default synthetic data.
    "default": Preset("convlstm_small", _FRAMES.height, _DATA.batch_size, _DATA.n_in, _DATA.n_out),
    # Shi et al. (2017), batch 4 as in the paper. The paper's 480x480 frames would take tens
    # of seconds a step on a 2-core CPU; 120x120 keeps the network and its strides (maps of
    # 24, 8 and 4 instead of 96, 32 and 16) and times in a few seconds a step.
    "hko7": Preset("convlstm_hko7", 120, 4, _DATA.n_in, _DATA.n_out, gpu_frame_size=480),
    # --quick: a one-stage model on 32x32 frames, for the test.
    "tiny": Preset(
        {
            "stages": [
                {
                    "filters": 8,
                    "kernel_size": 3,
                    "downsample_filters": 4,
                    "downsample_kernel": 3,
                    "downsample_stride": 2,
                }
            ],
            "head_filters": 4,
        },
        32,
        2,
        3,
        3,
    ),
}
DEFAULT_PRESETS = ["default", "hko7"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fused ConvLSTM vs keras.layers.ConvLSTM2D: step times, FLOP "
        "utilisation, input pipeline, memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model, few repeats")
    parser.add_argument(
        "--presets",
        nargs="+",
        choices=sorted(PRESETS),
        help="presets to run (default: default hko7; with --quick: tiny)",
    )
    parser.add_argument("--batch", type=int, help="batch size for every preset")
    parser.add_argument("--frame-size", type=int, help="frame height and width for every preset")
    parser.add_argument("--repeats", type=int, help="timed calls per build (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per build first")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="Keras dtype policy; auto: what training picks on this device",
    )
    parser.add_argument(
        "--jit",
        default="auto",
        choices=("auto", "on", "off"),
        help="XLA for the steps; auto: Keras's choice (off for TensorFlow on a CPU, else on)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="trace training steps (TensorFlow) and print"
    )
    parser.add_argument("--output", type=Path, help="JSON file (default under benchmarks/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    args.presets = args.presets or (["tiny"] if args.quick else DEFAULT_PRESETS)
    args.repeats = args.repeats or (3 if args.quick else 10)
    for name in ("batch", "frame_size", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, received {value}")
    if args.warmup < 1:
        parser.error(f"--warmup must be >= 1 (the first call compiles), received {args.warmup}")
    if args.output is not None and args.output.exists() and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")
    return args


# Device and memory ---------------------------------------------------------------------------


def device_name() -> tuple[str, bool]:
    """(a name of the device the model runs on, whether it is an accelerator)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return details.get("device_name", "gpu"), True
    elif keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.device_kind, True
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", False


def reset_device_memory_peak() -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def device_memory_peak_mb() -> float | None:
    """Peak accelerator memory since the last reset (TensorFlow) or since start (JAX)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    elif keras.backend.backend() == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2**20
    return None


def max_rss_mb() -> float:
    """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# FLOPs ---------------------------------------------------------------------------------------


def _kernel_area(kernel_size) -> int:
    return kernel_size * kernel_size if isinstance(kernel_size, int) else int(np.prod(kernel_size))


def forward_flops(model_cfg: dict, n_in: int, n_out: int, height: int, width: int) -> float:
    """FLOPs of one forward pass of one window (see FLOP_CONVENTION), from the model config.

    Follows nowcast.model.EncoderForecaster: per stage a strided convolution and a ConvLSTM in
    the encoder; in the forecaster, from the top down, a ConvLSTM (the top one without input
    frames, the others on the upsampled output of the stage above) and a transposed
    convolution back to the stage's input size; then the 3x3 head and the 1x1 output.
    """

    def conv(pixels: int, kernel_size, c_in: int, c_out: int) -> float:
        area = kernel_size**2 if isinstance(kernel_size, int) else int(np.prod(kernel_size))
        return 2.0 * pixels * area * c_in * c_out

    stages, head = model_cfg["stages"], model_cfg["head_filters"]
    total = n_out * (conv(height * width, 3, head, head) + conv(height * width, 1, head, 1))
    channels = 1
    for k, stage in enumerate(stages):
        filters, down = stage["filters"], stage["downsample_kernel"]
        height, width = height // stage["downsample_stride"], width // stage["downsample_stride"]
        pixels = height * width
        total += n_in * conv(pixels, down, channels, stage["downsample_filters"])
        lstm_inputs = stage["downsample_filters"] + filters
        total += n_in * conv(pixels, stage["kernel_size"], lstm_inputs, 4 * filters)
        # The top forecaster stage has no input frames; the others get F_k upsampled channels.
        lstm_inputs = filters + (filters if k + 1 < len(stages) else 0)
        total += n_out * conv(pixels, stage["kernel_size"], lstm_inputs, 4 * filters)
        # The transposed convolution back to the stage's input size: each of its input
        # pixels meets the whole kernel once.
        up_channels = stages[k - 1]["filters"] if k else head
        total += n_out * conv(pixels, down, filters, up_channels)
        channels = stage["downsample_filters"]
    return total


# Models and timings ---------------------------------------------------------------------------


def config_option(group: str, option: str | dict, schema: type) -> dict:
    """configs/<group>/<option>.yaml (or the fields given), checked against its schema."""
    if isinstance(option, str):
        option = OmegaConf.load(config_dir() / group / f"{option}.yaml")
        option.pop("defaults", None)
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(schema), option))


def build(fields: dict, recurrent: str, n_out: int, frame: tuple[int, int], jit: str):
    """The model with the given recurrent layer, compiled with the training defaults: the mse
    loss (configs/loss/mse.yaml) and Adam (configs/optimizer/adam.yaml)."""
    keras.utils.set_random_seed(0)
    model = build_model({**fields, "recurrent": recurrent}, n_out=n_out, input_shape=(*frame, 1))
    opt = config_option("optimizer", "adam", OptimizerConfig)
    model.compile(
        optimizer=keras.optimizers.Adam(
            learning_rate=opt["learning_rate"],
            beta_1=opt["beta_1"],
            beta_2=opt["beta_2"],
            global_clipnorm=opt["global_clipnorm"],
        ),
        loss=make_loss(
            LossConfig(**config_option("loss", "mse", LossConfig)), NormalisationConfig()
        ),
        jit_compile={"auto": "auto", "on": True, "off": False}[jit],
    )
    return model


def time_alternating(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each function: `warmup` untimed calls each, then `repeats` rounds
    that call each once in turn, so slow phases of a shared machine hit all of them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "all": seconds}


@dataclass(frozen=True)
class ReferenceConv:
    """One large 'same' conv2d in the compute dtype: the machine's own yardstick of FLOP/s."""

    batch: int
    size: int
    channels: int
    kernel: int

    @classmethod
    def for_run(cls, quick: bool, accelerator: bool) -> ReferenceConv:
        if quick:
            return cls(2, 32, 32, 3)
        return cls(64, 128, 256, 3) if accelerator else cls(8, 64, 128, 3)

    @property
    def flop(self) -> float:
        return 2.0 * self.batch * self.size**2 * self.kernel**2 * self.channels**2

    def make_call(self) -> Callable[[], object]:
        dtype = keras.config.dtype_policy().compute_dtype
        rng = np.random.default_rng(0)
        x = ops.convert_to_tensor(rng.random((self.batch, self.size, self.size, self.channels)))
        w = rng.random((self.kernel, self.kernel, self.channels, self.channels)) * 0.01
        x, w = ops.cast(x, dtype), ops.cast(ops.convert_to_tensor(w), dtype)
        # The sum makes the call wait for the result without copying the whole output back;
        # cast first, since NumPy has no bfloat16 to take it in.
        return lambda: ops.convert_to_numpy(
            ops.cast(ops.sum(ops.conv(x, w, padding="same")), "float32")
        )


def pipeline_windows_per_second(
    preset: Preset, frame: tuple[int, int], batch: int, batches: int, workdir: Path
) -> float:
    """Windows per second from nowcast.data.pipeline.make_dataset over a synthetic HDF5 store.

    As in training: shuffled windows, parallel reads, prefetch. The store holds enough windows
    that none is read twice. TensorFlow only (tf.data).
    """
    from nowcast.data.pipeline import WindowReader, make_dataset
    from nowcast.data.synthetic import write_synthetic_store

    window = preset.n_in + preset.n_out
    warmup = 2
    frames = window - 1 + (batches + warmup) * batch
    store = workdir / f"synthetic_{frame[0]}x{frame[1]}_{frames}.h5"
    if not store.exists():
        write_synthetic_store(
            store, SyntheticConfig(frames=frames, height=frame[0], width=frame[1])
        )
    reader = WindowReader(
        store,
        np.arange(frames - window + 1),
        n_in=preset.n_in,
        n_out=preset.n_out,
        norm=NormalisationConfig(),
        seed=0,
    )
    dataset = make_dataset(reader, batch_size=batch, shuffle=True, drop_remainder=True)
    batches_iter = iter(dataset)
    for _ in range(warmup):
        next(batches_iter)
    start = time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    return batches * batch / (time.perf_counter() - start)


# Profile (TensorFlow) -------------------------------------------------------------------------


# "scope/op_name:OpType"; oneDNN kernels (TF_ENABLE_ONEDNN_OPTS=1) have types such as
# _MklNativeConv2DBackpropFilter, reported without the prefix.
_OP_EVENT = re.compile(r"([^:\s][^:]*):(?:_Mkl(?:Native)?)?([A-Za-z_][A-Za-z0-9_]*)")


def profile_train_steps(model, x, y, steps: int, logdir: Path) -> tuple[Counter, Counter]:
    """Milliseconds per training step by op type and by (layer, forward|backward).

    Traces `steps` training steps with the TensorFlow profiler into `logdir` and sums the op
    events of its XSpace.
    Op time is summed over the threads that run ops, so it can exceed the wall time.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(str(logdir))
    for _ in range(steps):
        model.train_on_batch(x, y)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(max(logdir.rglob("*.xplane.pb"), key=os.path.getmtime).read_bytes())
    layers = sorted((layer.name for layer in model.layers), key=len, reverse=True)
    by_type, by_layer = Counter(), Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                # Kernels run as events named "scope/op_name:OpType"; the events that enclose
                # them (executor runs "X::Y", function calls ":__inference_...") do not match.
                match = _OP_EVENT.fullmatch(plane.event_metadata[event.metadata_id].name)
                if match is None:
                    continue
                op_name, op_type = match.groups()
                milliseconds = event.duration_ps / 1e9 / steps
                by_type[op_type] += milliseconds
                backward = op_name.startswith("gradient_tape/")
                scopes = op_name.removeprefix("gradient_tape/").split("/")
                inner = scopes[1] if len(scopes) > 2 else ""
                layer = next((n for n in layers if inner.startswith(n)), None)
                if layer is None:  # the model's own ops (activations, reshapes), loss, optimizer
                    layer = {"adam": "optimizer", "compile_loss": "loss"}.get(scopes[0], "other")
                by_layer[layer, "backward" if backward else "forward"] += milliseconds
    return by_type, by_layer


# The benchmark --------------------------------------------------------------------------------


def benchmark_preset(
    name: str, args: argparse.Namespace, accelerator: bool, conv: ReferenceConv, workdir: Path
) -> dict:
    """Time both builds of one preset and the reference conv2d; the preset's JSON entry."""
    preset = PRESETS[name]
    size = args.frame_size or (preset.gpu_frame_size if accelerator else None) or preset.frame_size
    frame, batch = (size, size), args.batch or preset.batch
    fields = config_option("model", preset.model, ModelConfig)
    rng = np.random.default_rng(0)
    x = rng.random((batch, preset.n_in, *frame, 1), dtype=np.float32)
    y = rng.random((batch, preset.n_out, *frame, 1), dtype=np.float32)

    models, memory, calls = {}, {}, {}
    for recurrent in BUILDS:
        reset_device_memory_peak()
        models[recurrent] = model = build(fields, recurrent, preset.n_out, frame, args.jit)
        calls[f"train_{recurrent}"] = lambda m=model: m.train_on_batch(x, y)
        calls[f"forward_{recurrent}"] = lambda m=model: m.predict_on_batch(x)
        for _ in range(args.warmup):  # the first calls also compile
            calls[f"train_{recurrent}"]()
            calls[f"forward_{recurrent}"]()
        memory[recurrent] = {"max_rss_mb": max_rss_mb(), "device_peak_mb": device_memory_peak_mb()}
    # The reference convolution is timed in the same rounds, under the same load.
    calls["conv"] = conv.make_call()
    for _ in range(args.warmup):
        calls["conv"]()
    seconds = time_alternating(calls, args.repeats, warmup=0)
    conv_gflops = conv.flop / statistics.median(seconds["conv"]) / 1e9

    train = {b: statistics.median(seconds[f"train_{b}"]) for b in BUILDS}
    forward = {b: statistics.median(seconds[f"forward_{b}"]) for b in BUILDS}
    train_flop = 3 * batch * forward_flops(fields, preset.n_in, preset.n_out, *frame)
    train_gflops = {b: train_flop / train[b] / 1e9 for b in BUILDS}
    result = {
        "model": preset.model if isinstance(preset.model, str) else fields,
        "frame_size": list(frame),
        "batch": batch,
        "n_in": preset.n_in,
        "n_out": preset.n_out,
        "params": {b: models[b].count_params() for b in BUILDS},
        "jit_compile": {b: bool(models[b].jit_compile) for b in BUILDS},
        "train_step_speedup": train["keras"] / train["fused"],
        "forward_speedup": forward["keras"] / forward["fused"],
        # Ratios of the fastest calls: on a shared machine, the ones least disturbed.
        "train_step_speedup_of_minima": min(seconds["train_keras"]) / min(seconds["train_fused"]),
        "forward_speedup_of_minima": min(seconds["forward_keras"]) / min(seconds["forward_fused"]),
        "train_step_s": {b: summary(seconds[f"train_{b}"]) for b in BUILDS},
        "forward_s": {b: summary(seconds[f"forward_{b}"]) for b in BUILDS},
        "train_step_gflop": train_flop / 1e9,
        "train_gflop_per_s": train_gflops,
        "conv_s": summary(seconds["conv"]),
        "conv_gflop_per_s": conv_gflops,
        "utilisation": train_gflops["fused"] / conv_gflops,
        "utilisation_keras": train_gflops["keras"] / conv_gflops,
        "consumed_windows_per_s": batch / train["fused"],
        "pipeline_windows_per_s": None,
        "pipeline_headroom": None,
        "memory": memory,
    }
    if keras.backend.backend() == "tensorflow":
        windows = pipeline_windows_per_second(
            preset, frame, batch, batches=3 if args.quick else 20, workdir=workdir
        )
        result["pipeline_windows_per_s"] = windows
        result["pipeline_headroom"] = windows / result["consumed_windows_per_s"]
        if args.profile:
            result["profile_ms"] = {}
            for recurrent, model in models.items():
                logdir = workdir / f"profile_{name}_{recurrent}"
                by_type, by_layer = profile_train_steps(model, x, y, args.warmup, logdir)
                result["profile_ms"][recurrent] = {
                    "by_op_type": dict(by_type.most_common()),
                    "by_layer": {f"{layer} {part}": ms for (layer, part), ms in by_layer.items()},
                }
    return result


def print_table(report: dict) -> None:
    load = report["load_average"]
    print(
        f"\n{report['device']}, {report['backend']}, XLA {report['jit']}; load average "
        f"{load['start'][0]:.1f} at start, {load['end'][0]:.1f} at end\n"
        f"precision {report['precision']}: {report['precision_reason']}"
    )
    header = (
        f"{'preset':8s} {'build':6s} {'params':>9s} {'train step ms':>15s} {'forward ms':>13s} "
        f"{'GFLOP/s':>8s} {'util.':>6s} {'peak RSS MB':>11s}"
    )
    print(header + "\n" + "-" * len(header))
    for name, entry in report["presets"].items():
        label = name
        for build_name in BUILDS:
            train, forward = entry["train_step_s"][build_name], entry["forward_s"][build_name]
            gflops = entry["train_gflop_per_s"][build_name]
            print(
                f"{label:8s} {build_name:6s} {entry['params'][build_name]:9,d} "
                f"{train['median'] * 1e3:8.0f} ({train['min'] * 1e3:4.0f}) "
                f"{forward['median'] * 1e3:6.0f} ({forward['min'] * 1e3:4.0f}) "
                f"{gflops:8.1f} {gflops / entry['conv_gflop_per_s']:6.0%} "
                f"{entry['memory'][build_name]['max_rss_mb']:11.0f}"
            )
            label = ""
        size = "x".join(map(str, entry["frame_size"]))
        print(
            f"{'':8s} {size} frames, batch {entry['batch']}, {entry['train_step_gflop']:.3g} "
            f"GFLOP per training step; reference conv2d {entry['conv_gflop_per_s']:.1f} GFLOP/s"
        )
        print(
            f"{'':8s} fused vs ConvLSTM2D: training step {entry['train_step_speedup']:.2f}x, "
            f"forward {entry['forward_speedup']:.2f}x (of the minima: "
            f"{entry['train_step_speedup_of_minima']:.2f}x, "
            f"{entry['forward_speedup_of_minima']:.2f}x)"
        )
        if entry["pipeline_headroom"] is None:
            print(f"{'':8s} input pipeline not timed (it needs the TensorFlow backend)")
        else:
            print(
                f"{'':8s} input pipeline {entry['pipeline_windows_per_s']:.0f} windows/s, "
                f"{entry['pipeline_headroom']:.0f}x the {entry['consumed_windows_per_s']:.1f}/s "
                "a fused training step consumes"
            )
    print("(times: median of the repeats, minimum in brackets; util.: of the reference conv2d)")
    for name, entry in report["presets"].items():
        for build_name, profile in entry.get("profile_ms", {}).items():
            total = sum(profile["by_op_type"].values())
            print(f"\nprofile {name} {build_name}: {total:.0f} ms of op time per training step")
            top = list(profile["by_op_type"].items())[:10]
            print("  by op type: " + ", ".join(f"{k} {v:.0f}" for k, v in top))
            layers = sorted(profile["by_layer"].items(), key=lambda item: -item[1])[:14]
            print("  by layer:   " + ", ".join(f"{k} {v:.0f}" for k, v in layers))
            recurrent = sum(v for k, v in profile["by_layer"].items() if "_rnn_" in k)
            print(
                f"  recurrent layers {recurrent:.0f} ms ({recurrent / total:.0%}), "
                f"everything else {total - recurrent:.0f} ms"
            )


def default_output(device: str, precision: str, jit: str, presets: list[str]) -> Path:
    """Name the file after what changes the figures, so that `make bench --overwrite` replaces
    only a measurement made the same way: oneDNN on or off, and a subset of the presets."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.split(" (")[0].lower()).strip("-")
    backend = keras.backend.backend()
    onednn = backend == "tensorflow" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"
    parts = [slug, backend] + (["onednn"] if onednn else [])
    parts += [] if precision == "float32" else [precision]
    parts += [] if jit == "auto" else ["xla" if jit == "on" else "no-xla"]
    parts += [] if presets == DEFAULT_PRESETS else presets
    return Path("benchmarks") / f"benchmark-{'-'.join(parts)}.json"


def write_json(report: dict, path: Path) -> None:
    """Write to a temporary name beside `path`, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=path.name, suffix=".tmp-", delete=False
    ) as tmp:
        json.dump(report, tmp, indent=1)
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    precision, reason = choose_precision(args.precision, setting="--precision")
    # Restored after, so that a caller in the same process (the tests) keeps its own policy.
    with dtype_policy(precision):
        return run(args, precision, reason)


def run(args: argparse.Namespace, precision: str, reason: str) -> dict:
    """The benchmark under the dtype policy `precision` (already set); the report it writes."""
    device, accelerator = device_name()
    output = args.output or default_output(device, precision, args.jit, args.presets)
    if output.exists() and not args.overwrite:
        raise SystemExit(f"benchmark: error: {output} exists; pass --overwrite to replace it")
    report = {
        "device": device,
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "precision": precision,
        "precision_reason": reason,
        "jit": args.jit,
        "repeats": args.repeats,
        "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "load_average": {"start": list(os.getloadavg())},
        "flop_convention": FLOP_CONVENTION,
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        report["tensorflow_version"] = tf.__version__
    conv = ReferenceConv.for_run(args.quick, accelerator)
    report["reference_conv"] = {
        "input_shape": [conv.batch, conv.size, conv.size, conv.channels],
        "kernel_shape": [conv.kernel, conv.kernel, conv.channels, conv.channels],
        "dtype": keras.config.dtype_policy().compute_dtype,
        "flop": conv.flop,
    }
    report["presets"] = {}
    print(f"precision {precision}: {reason}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nowcast-bench-") as workdir:
        for name in args.presets:
            print(f"benchmarking {name} ...", flush=True)
            report["presets"][name] = benchmark_preset(
                name, args, accelerator, conv, Path(workdir)
            )
    report["load_average"]["end"] = list(os.getloadavg())
    print_table(report)
    write_json(report, output)
    print(f"\nwrote {output}")
    return report


if __name__ == "__main__":
    main()
