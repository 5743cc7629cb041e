"""Structured schemas of every Hydra config group, registered in Hydra's ConfigStore.

Each YAML option in `configs/<group>/` starts with `defaults: [base_<group>]`, so a key that is
not in the schema, or a value of the wrong type, fails when the config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def config_dir() -> Path:
    """The `configs/` folder: inside the package when installed from a wheel, else the repo's."""
    packaged = Path(__file__).resolve().parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "configs"


@dataclass
class NormalisationConfig:
    """The model's scale: reflectivity in dBZ mapped linearly from [dbz_min, dbz_max] to [0, 1].

    Values below dbz_min (no echo) map to 0 and values above dbz_max are clipped. `zr_a`, `zr_b`
    are the Z-R relation Z = a R^b (Marshall-Palmer by default) used to turn rain-rate
    thresholds (mm/h) into dBZ and back.
    """

    dbz_min: float = 0.0
    dbz_max: float = 70.0
    zr_a: float = 200.0
    zr_b: float = 1.6


@dataclass
class SyntheticConfig:
    """Size and seed of the embedded synthetic radar-echo data set (see nowcast.data.synthetic)."""

    frames: int = 2304
    height: int = 128
    width: int = 128
    seed: int = 0
    pixel_km: float = 1.0
    minutes_per_frame: int = 5


@dataclass
class SplitConfig:
    """Train/validation/test split by contiguous blocks of time, never by shuffled windows."""

    block_hours: float = 24.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass
class DataConfig:
    name: str = MISSING
    path: str = MISSING
    n_in: int = 5
    n_out: int = 12
    stride: int = 1
    batch_size: int = 8
    shuffle_buffer: int = 256
    min_valid_fraction: float = 0.5
    split: SplitConfig = field(default_factory=SplitConfig)
    normalisation: NormalisationConfig = field(default_factory=NormalisationConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class StageConfig:
    """One encoder stage: a strided convolution (downsampling), then a ConvLSTM layer.

    The forecaster mirrors the stage: ConvLSTM layer, then a transposed convolution with the
    same kernel and stride back to the stage's input size.
    """

    filters: int = MISSING
    kernel_size: int = 3
    downsample_filters: int = MISSING
    downsample_kernel: int = 3
    downsample_stride: int = 2


@dataclass
class ModelConfig:
    name: str = "encoder_forecaster"
    stages: list[StageConfig] = field(default_factory=list)
    head_filters: int = 8
    forget_bias: float = 1.0
    activation: str = "tanh"
    peephole: bool = False
    layer_norm: bool = False
    conv_negative_slope: float = 0.2


@dataclass
class LossConfig:
    """Weighted sum of named pixel losses on the normalised scale.

    `balanced_*` losses weight each pixel by the observed rain rate (Shi et al. 2017):
    `weights[k]` applies from `thresholds_mmh[k-1]` up to `thresholds_mmh[k]`.
    """

    terms: dict[str, float] = field(default_factory=lambda: {"mse": 1.0})
    thresholds_mmh: list[float] = field(default_factory=lambda: [2.0, 5.0, 10.0, 30.0])
    weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 30.0])


@dataclass
class OptimizerConfig:
    name: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 0.0
    global_clipnorm: float | None = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0


@dataclass
class TrainerConfig:
    epochs: int = 10
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    seed: int = 0
    precision: str = "float32"
    jit_compile: bool = False
    early_stopping_patience: int | None = None
    verbose: int = 1


@dataclass
class PathsConfig:
    data_dir: str = "data"
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    trainer: TrainerConfig = MISSING
    paths: PathsConfig = MISSING


@dataclass
class DataCommandConfig(SyntheticConfig):
    """`nowcast-data synthetic output=<store.h5> [frames=N] [seed=S] ...`."""

    output: str = MISSING
    overwrite: bool = False


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore; the YAML options extend them by name."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="data_command_schema", node=DataCommandConfig)
    for group, schema in [
        ("data", DataConfig),
        ("model", ModelConfig),
        ("loss", LossConfig),
        ("optimizer", OptimizerConfig),
        ("trainer", TrainerConfig),
        ("paths", PathsConfig),
    ]:
        store.store(group=group, name=f"base_{group}", node=schema)
