"""Devices: numeric precision, XLA, and tf.distribute strategies with per-worker data shards.

TensorFlow is imported inside the functions that need it, so the package imports and trains
under another Keras backend. Under JAX, `trainer.strategy=auto` with more than one local device
is Keras's `keras.distribution.DataParallel` (each batch split across the devices), and
`one_device` is Keras's default; `mirrored` and `multi_worker` need TensorFlow. Under TensorFlow,
`trainer.strategy`:

- `auto`: MultiWorkerMirroredStrategy in a cluster of several tasks (TF_CONFIG, or a SLURM job
  step of several tasks), MirroredStrategy with more than one GPU, else Keras's default (no
  strategy);
- `one_device`: OneDeviceStrategy on the first GPU, else the CPU;
- `mirrored`: MirroredStrategy over every GPU, or every logical CPU device where there is none;
- `multi_worker`: MultiWorkerMirroredStrategy over the cluster that TF_CONFIG describes, or else
  the tasks of the SLURM job (one task per node; tf.distribute's SlurmClusterResolver).

`data.batch_size` is the global batch: each step's batch is split across all replicas, and each
worker reads only its own part of it (see `distribute_windows`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Linux's /proc/cpuinfo names for native bfloat16 arithmetic, which oneDNN runs bf16
# convolutions on: AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX (Sapphire Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
SWITCHES = {"auto": "auto", "true": True, "false": False}


def _check_choice(name: str, value: str, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name}, allowed: {', '.join(allowed)}. Received: {value!r}")
    return value


def _gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of each visible GPU; empty without GPUs or under the torch backend."""
    if keras.backend.backend() == "jax":
        import jax

        return [
            tuple(int(part) for part in device.compute_capability.split(".")[:2])
            for device in jax.devices()
            if device.platform == "gpu"
        ]
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    return [
        tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (`flags` in /proc/cpuinfo, e.g. avx512_bf16).

    Plain file reading, so it imports no backend. Empty where the file is missing or has no
    `flags` line (macOS, Windows, ARM): no native bfloat16 is assumed there.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def choose_precision(
    precision: str, *, flags: Iterable[str] | None = None, setting: str = "trainer.precision"
) -> tuple[str, str]:
    """The Keras dtype policy for `precision`, and why it was chosen (for the log).

    `auto` picks the fastest one that keeps the model's skill:

    - GPUs: mixed_bfloat16 at compute capability 8.0 and up (Ampere, Hopper: bfloat16 tensor
      cores, no loss scaling needed), mixed_float16 on 7.x (Volta, Turing), else float32;
    - CPUs with native bfloat16 (a flag of BF16_CPU_FLAGS), under TensorFlow with its oneDNN
      kernels (on by default on such CPUs; off with TF_ENABLE_ONEDNN_OPTS=0): mixed_bfloat16,
      whose training step was about 1.3x faster than float32's on a 2-core AVX512-BF16 CPU, for
      the same skill (docs/benchmarks.md);
    - other CPUs, CPUs without oneDNN (bfloat16 was 4-7x slower there) and CPUs under other
      backends (not measured): float32.

    Args:
        precision: auto | float32 | mixed_float16 | mixed_bfloat16; all but auto pass through.
        flags: the CPU's feature flags; None reads them (`cpu_flags`).
        setting: the setting `precision` came from, for messages.

    Raises:
        ValueError: an unknown precision.
    """
    _check_choice(setting, precision, PRECISIONS)
    if precision != "auto":
        return precision, f"set by {setting}"
    capabilities = _gpu_compute_capabilities()
    if capabilities:
        oldest = min(capabilities)
        gpus = f"auto on GPUs whose lowest compute capability is {oldest[0]}.{oldest[1]}"
        if oldest >= (8, 0):
            return "mixed_bfloat16", gpus
        return ("mixed_float16" if oldest >= (7, 0) else "float32"), gpus
    native = sorted(set(BF16_CPU_FLAGS) & set(cpu_flags() if flags is None else flags))
    if not native:
        return "float32", f"auto on a CPU without native bfloat16 ({' or '.join(BF16_CPU_FLAGS)})"
    if keras.backend.backend() != "tensorflow":
        return "float32", (
            f"auto on a CPU with {', '.join(native)} under {keras.backend.backend()}, where "
            "bfloat16 has not been measured"
        )
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        return "float32", (
            f"auto on a CPU with {', '.join(native)} but TF_ENABLE_ONEDNN_OPTS=0: bfloat16 "
            "needs TensorFlow's oneDNN kernels"
        )
    return "mixed_bfloat16", f"auto on a CPU with native bfloat16 ({', '.join(native)})"


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Keras's global dtype policy is `policy` inside the block: the layers built there
    compute in it. The policy before is restored after."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def resolve_jit_compile(jit_compile: str | bool) -> str | bool:
    """`trainer.jit_compile` as Keras's `compile(jit_compile=...)` takes it.

    `auto` is Keras's own rule: under TensorFlow, XLA on GPUs, off on CPU-only machines
    (measured slower there for this model) and under tf.distribute. JAX always compiles with XLA:
    `auto` and `true` are the same there, and `false` runs each step op by op (debugging only,
    many times slower).
    """
    # OmegaConf stores a command-line `true` in a str field as "True".
    key = str(jit_compile).lower()
    return SWITCHES[_check_choice("trainer.jit_compile", key, tuple(SWITCHES))]


def _tf_config_tasks() -> int:
    """How many tasks the cluster in TF_CONFIG has (0 without TF_CONFIG)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(tasks) for tasks in cluster.values())


def _slurm_tasks() -> int:
    return int(os.environ.get("SLURM_NTASKS", 0))


def make_strategy(name: str):
    """The tf.distribute strategy that `trainer.strategy` names, or None for Keras's default.

    Raises:
        ValueError: an unknown name, a strategy that needs the TensorFlow backend under another
            one, or `multi_worker` without a TF_CONFIG cluster.
    """
    _check_choice("trainer.strategy", name, STRATEGIES)
    if keras.backend.backend() != "tensorflow":
        if name in ("mirrored", "multi_worker"):
            raise ValueError(
                f"trainer.strategy={name} uses tf.distribute and needs KERAS_BACKEND=tensorflow; "
                "under other backends use trainer.strategy=auto (data parallel over all local "
                f"devices). Received: backend {keras.backend.backend()!r}"
            )
        devices = keras.distribution.list_devices()
        if name == "auto" and keras.backend.backend() == "jax" and len(devices) > 1:
            return keras.distribution.DataParallel(devices=devices)
        return None
    import tensorflow as tf

    if name == "auto":
        if _tf_config_tasks() > 1 or _slurm_tasks() > 1:
            name = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            return None
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if _tf_config_tasks():
        return _multi_worker_strategy(cluster_resolver=None)
    if _slurm_tasks():
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return _multi_worker_strategy(cluster_resolver=resolver)
    raise ValueError(
        "trainer.strategy=multi_worker needs a cluster: run it as several SLURM tasks, or set "
        'TF_CONFIG in each worker, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )


def _multi_worker_strategy(cluster_resolver):
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """Works around Keras 3's `fit` under this strategy (keras-team/keras#20585).

        Keras reduces nested (inputs, targets) batches and scalar losses with
        `strategy.reduce(..., axis=0)`; the collective strategy takes one value at a time,
        and no axis for scalars. Each value is reduced on its own, scalars across replicas.
        """

        def reduce(self, reduce_op, value, axis):
            def reduce_one(item):
                local = (
                    item.values[0] if isinstance(item, tf.distribute.DistributedValues) else item
                )
                return super(MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, item, axis if local.shape.rank else None
                )

            return tf.nest.map_structure(reduce_one, value)

    return MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)


def num_replicas(strategy) -> int:
    if isinstance(strategy, keras.distribution.DataParallel):
        return strategy.device_mesh.devices.size
    return strategy.num_replicas_in_sync if strategy is not None else 1


def is_chief(strategy) -> bool:
    """Whether this process writes the run directory: the only one, or the cluster's chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def distribute_windows(
    strategy,
    windows: np.ndarray,
    make_dataset: Callable[[np.ndarray, int, np.ndarray], object],
    first_position: int = 0,
):
    """The training input: each step's global batch of windows, split across the replicas.

    Args:
        strategy: a tf.distribute strategy, a `keras.distribution.DataParallel` (which splits
            each global batch itself), or None for one device.
        windows: (steps, global_batch) window start indices, in the order they are trained on.
        make_dataset: (starts, batch_size, positions) -> batches of those windows (tf.data
            under a tf.distribute strategy); `positions` are the windows' places in the run's
            stream (they draw augmentation), the same whatever the replicas.
        first_position: the place of `windows[0, 0]` in the run's stream (a resumed run's).

    Returns:
        What `make_dataset` returns (no tf.distribute strategy) or a distributed dataset.
        Input pipeline p (one per worker) reads only its columns of `windows`, so no worker
        reads another's windows, and the replicas of one step together see exactly the step's
        global batch.
    """
    steps, global_batch = windows.shape
    positions = first_position + np.arange(windows.size).reshape(windows.shape)
    if strategy is None or isinstance(strategy, keras.distribution.DataParallel):
        return make_dataset(windows.ravel(), global_batch, positions.ravel())

    def dataset_fn(context):
        pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
        width = global_batch // pipelines
        # (steps, width): this pipeline's share of every step, read step by step.
        columns = slice(pipeline * width, (pipeline + 1) * width)
        return make_dataset(
            windows[:, columns].ravel(),
            context.get_per_replica_batch_size(global_batch),
            positions[:, columns].ravel(),
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def check_global_batch(batch_size: int, replicas: int) -> None:
    if batch_size % replicas:
        raise ValueError(
            f"data.batch_size is the global batch, split across {replicas} replicas, so it "
            f"must be a multiple of {replicas}. Received: data.batch_size={batch_size}"
        )
