"""Structured schemas of every Hydra config group, registered in Hydra's ConfigStore.

Each YAML option in `configs/<group>/` starts with `defaults: [base_<group>]`, so a key that is
not in the schema, or a value of the wrong type, fails when the config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

from nowcast.balanced import BALANCED_THRESHOLDS_MMH, BALANCED_WEIGHTS

# Rain-rate thresholds (mm/h) that forecasts are scored at, and trained for by the soft CSI:
# HKO-7's ladder with 1 mm/h added.
RAIN_LADDER_MMH = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Keys that older runs' config.yaml may hold and the schemas no longer have. A key goes here
# when it is removed, so those runs still resume and evaluate.
RETIRED_KEYS = (
    # Never read by training, which orders windows itself (nowcast.training.window_order).
    "data.shuffle_buffer",
)
# Keys added since, whose value older runs took from another key: new key -> that key. Filled
# in when such a config.yaml is read, so a resumed run keeps the settings it was trained with.
INHERITED_KEYS = {
    # The soft CSI was scored at the balanced losses' thresholds.
    "loss.soft_csi_thresholds_mmh": "loss.thresholds_mmh",
}


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
    height: int = 256
    width: int = 256
    seed: int = 0
    pixel_km: float = 1.0
    minutes_per_frame: int = 5


@dataclass
class SplitConfig:
    """Train/validation/test split by contiguous blocks of time, never by shuffled windows."""

    # Null: the longest of 24, 12, 6, 4, 3, 2, 1.5, 1, 0.5 h or one window's length that gives
    # every split its windows and, for a list of stores, leaves every store training windows
    # where a length does (nowcast.data.windows.choose_block_hours); the log says which.
    block_hours: float | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15


@dataclass
class DataConfig:
    """A store and how its windows are cut, selected, split and scaled (nowcast.data.pipeline).

    Dry training windows: a pixel is wet at or above `wet_threshold` (store units: dBZ, or
    VIL levels for SEVIR; 7 dBZ is 0.1 mm/h with Marshall-Palmer). Training windows whose mean
    fraction of wet pixels is below `min_wet_fraction` are left out (`dry_weight` 0) or kept
    with sample weight `dry_weight`. `augment` flips and rotates training windows at random.
    `patch_size`: train on a square patch of that many pixels from each training window, at a
    place drawn anew each time the window is read, among those where at least
    `min_valid_fraction` of the patch has data, instead of the whole frames: a step costs
    less, so more steps fit in the same time, and large composites fit in memory. Validation,
    test and evaluation use whole frames, so the model must be fully convolutional (no
    peephole, `model.recurrent=fused`) and the patch divisible by its downsample strides.
    Windows with less than `min_valid_fraction` of their pixels valid are left out, counted
    over the whole grid (`valid_fraction_of: grid`) or over the radars' coverage
    (`coverage`: a composite's radars see only part of its rectangular grid).
    """

    name: str = MISSING
    # One store, or a list of stores trained on together (nowcast.data.store_set).
    path: Any = MISSING
    # Stores held out whole: every window of theirs goes to the test split.
    holdout: list[str] = field(default_factory=list)
    n_in: int = 5
    n_out: int = 12
    stride: int = 1
    batch_size: int = 8
    min_valid_fraction: float = 0.5
    valid_fraction_of: str = "grid"
    min_wet_fraction: float = 0.0
    wet_threshold: float = 7.0
    dry_weight: float = 0.0
    augment: bool = False
    patch_size: int | None = None
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
    # fused (nowcast's ConvLSTM) | keras (keras.layers.ConvLSTM2D, for comparison).
    recurrent: str = "fused"
    # The head also takes the newest input frame at full resolution (a U-Net-style skip).
    last_frame_skip: bool = False
    # The network corrects the newest frame moved along the input frames' motion (block
    # matching up to advection_max_speed pixels per frame; nowcast.model.advection).
    advection: bool = False
    advection_max_speed: int = 12
    # With advection: 0, or the bands of scale of the moved frame (finer than 2 pixels,
    # 2-4, 4-8, ... and the rest) that the network weighs per pixel and lead time, as S-PROG's
    # cascade lets each scale decay (nowcast.model.cascade).
    scale_bands: int = 0
    # With advection: outside training, each forecast frame takes the extrapolation's
    # distribution of values in its own rank order (nowcast.model.matching), as S-PROG keeps
    # the rain area.
    probability_matching: bool = False


@dataclass
class LossConfig:
    """Weighted sum of named pixel losses on the normalised scale.

    `balanced_*` losses weight each pixel by the observed rain rate (Shi et al. 2017):
    `weights[k]` applies from `thresholds_mmh[k-1]` up to `thresholds_mmh[k]`; `soft_csi` is
    one minus a differentiable CSI at each of `soft_csi_thresholds_mmh`, and `matched_csi` the
    same of the forecast as probability matching makes it (nowcast.losses). `terms` is
    empty here: OmegaConf merges dicts key by key, so a default term would stay in every option.
    """

    terms: dict[str, float] = field(default_factory=dict)
    thresholds_mmh: list[float] = field(default_factory=lambda: list(BALANCED_THRESHOLDS_MMH))
    weights: list[float] = field(default_factory=lambda: list(BALANCED_WEIGHTS))
    # Lead time k (0 first) weighs lead_decay**k, scaled to a mean of 1; 1 weighs all alike.
    lead_decay: float = 1.0
    # The `soft_csi` term's sigmoid width in dBZ: a forecast this far above a threshold counts
    # as 0.73 of a yes, this far below as 0.27.
    soft_csi_width_dbz: float = 2.0
    # The evaluation's ladder: with only the heavier thresholds, the sigmoid scores light rain
    # just below the lowest one as part of a false alarm and the term drags it down.
    soft_csi_thresholds_mmh: list[float] = field(default_factory=lambda: list(RAIN_LADDER_MMH))


@dataclass
class OptimizerConfig:
    """Optimizer (adam | adamw) and learning-rate schedule (see nowcast.training.make_optimizer).

    Schedules: `constant`; `cosine` decay to 0 over the run after `warmup_steps` of linear
    warm-up; `step`, times `decay_rate` every `decay_steps` steps; `plateau`, times
    `plateau_factor` when the validation loss has not improved for `plateau_patience` epochs,
    down to `min_learning_rate`.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 0.0
    global_clipnorm: float | None = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 20000
    decay_rate: float = 0.7
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_learning_rate: float = 1e-6


@dataclass
class TrainerConfig:
    """How `nowcast-train` runs (see nowcast.training and nowcast.distribute).

    `precision`: auto | float32 | mixed_float16 | mixed_bfloat16, and `jit_compile` (XLA):
    auto | true | false; `auto` picks what is fastest on the device found. `strategy`:
    auto | one_device | mirrored | multi_worker (tf.distribute); `data.batch_size` is the global
    batch, split across replicas. `backup_every_steps`: also back up the training state every
    so many steps within an epoch, so an interrupted run resumes mid-epoch (0: epoch ends only).
    `image_samples`: validation windows whose forecasts go to TensorBoard every epoch.
    """

    epochs: int = 10
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    strategy: str = "auto"
    early_stopping_patience: int | None = None
    backup_every_steps: int = 100
    image_samples: int = 2
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
    # A run directory to continue, with the config saved in it (see nowcast.training);
    # unset (???) for a new run.
    resume: str = MISSING
    # A run directory (its best checkpoint) or a .keras file whose weights a new run starts
    # from: fine-tuning, with this run's own optimizer and schedule. Null: random weights.
    init: str | None = None


@dataclass
class SyntheticCommandConfig(SyntheticConfig):
    """`nowcast-data synthetic output=<store.h5> [frames=N] [seed=S] ...`."""

    output: str = MISSING
    overwrite: bool = False


@dataclass
class CropConfig:
    """A pixel window of the source grid (row 0 at the top); null top/left centre it.

    Null height/width keep the whole extent along that axis.
    """

    top: int | None = None
    left: int | None = None
    height: int | None = None
    width: int | None = None


@dataclass
class ConvertCommandConfig:
    """`nowcast-data convert format=<odim|knmi|sevir|store|fmi|mch|bom|pysteps> input=<...>
    output=<store.h5>`.

    See nowcast.data.convert. `quantity` picks the ODIM/KNMI quantity to read (default: the
    first known one in the file); `catalog` is SEVIR's CATALOG.csv (default: found next to or
    above the input). fmi, mch, bom and pysteps are read with pysteps' importers
    (nowcast.data.importers): `importer` names the importer for format=pysteps,
    `importer_kwargs` adds keyword arguments of it (`+importer_kwargs.qty=DBZH`), and
    `fn_pattern` reads the time from file names of that pattern (pysteps' archive format, e.g.
    radar_%Y%m%d%H%M) instead of from the files. `minutes_per_frame` is inferred from the
    timestamps when null. `zr_a`, `zr_b` turn rain rates into dBZ, and dBZ into rain rates for
    block averaging. Against clutter, before block averaging: `max_rain_mmh` makes pixels above
    that rain rate no data (masked, not clipped: see nowcast.data.convert), and `min_quality`
    (ODIM only) makes pixels whose QIND quality field (0-1) is below it no data; null turns
    either off.
    """

    format: str = MISSING
    input: str = MISSING
    output: str = MISSING
    overwrite: bool = False
    quantity: str | None = None
    catalog: str | None = None
    importer: str | None = None
    importer_kwargs: dict[str, Any] = field(default_factory=dict)
    fn_pattern: str | None = None
    crop: CropConfig = field(default_factory=CropConfig)
    downsample: int = 1
    minutes_per_frame: float | None = None
    zr_a: float = 200.0
    zr_b: float = 1.6
    max_rain_mmh: float | None = None
    min_quality: float | None = None


@dataclass
class InfoCommandConfig:
    """`nowcast-data info input=<store.h5>`."""

    input: str = MISSING


@dataclass
class MetricsConfig:
    """Verification settings, in physical units after de-normalising (see nowcast.metrics).

    Reflectivity stores are scored as rain rates (mm/h), VIL stores in VIL levels; each has its
    thresholds (HKO-7's ladder with 1 mm/h added; SEVIR's). Categorical scores are computed at
    every threshold, the fractions skill score at one over square windows of `fss_scales` pixels.
    The model's mean CSI minus each baseline's gets a 95 % interval from `bootstrap_samples`
    resamples (0: none) of the runs of consecutive windows scored (a split's blocks of
    `data.split.block_hours`; for split=all, the stretches without a long gap), each drawn
    whole; with fewer than 5 runs there is no interval, and the summary says why
    (nowcast.reports.consecutive_runs).
    """

    thresholds_mmh: list[float] = field(default_factory=lambda: list(RAIN_LADDER_MMH))
    fss_threshold_mmh: float = 1.0
    thresholds_vil: list[float] = field(default_factory=lambda: [16, 74, 133, 160, 181, 219])
    fss_threshold_vil: float = 133.0
    fss_scales: list[int] = field(default_factory=lambda: [5, 20])
    bootstrap_samples: int = 1000
    # Scoring several stores: scorecard.png colours each method's mean CSI minus this one's
    # (null: optical_flow where it is scored, else the first baseline).
    scorecard_reference: str | None = None


@dataclass
class EvaluateConfig:
    """`nowcast-evaluate run=<run_dir> [checkpoint=best|last|<path>] [split=test] [data=...]`.

    `data` is empty by default: the run's own windows (its split.json) are scored. Selecting a
    data option scores another store, split by that option's settings; the window lengths and
    normalisation always come from the run, since the model was trained on them. `split=all`
    scores every valid window of the store (`data.min_valid_fraction`), unsplit: for a store
    the run was not trained on. `baselines`: persistence, optical_flow (pysteps),
    block_matching (the extrapolation that a model with `model.advection` corrects, scored
    alone) and sprog (pysteps' S-PROG: optical flow whose small scales fade), any of them.
    S-PROG is not on by default: it costs about 3 times optical flow per window (measured:
    docs/evaluation.md); add it with `baselines=[persistence,optical_flow,block_matching,sprog]`.
    It needs data.n_in >= 3.

    `batch_size`: windows forecast and scored at once; unset, the run's `data.batch_size`, cut
    for large frames to about half a million pixels a batch (one window of 760 x 696).
    `precision`: what the model's forward pass computes in, as `trainer.precision` (auto:
    bfloat16 on CPUs and GPUs that have it, else float32; its speed and effect on the scores,
    measured: docs/evaluation.md); `precision=float32` gives counts that do not depend on the
    machine's arithmetic.

    Sharded scoring (nowcast.sharding): `shard=i/n` scores only the i-th of n equal stretches
    of the windows and writes their raw totals to `shards_dir`/shard-<i>-of-<n>/;
    `merge=true`, with the shards' other settings, sums the n shards into the usual outputs in
    `paths.output_dir`.

    `probability_matching`: null scores the model as it was trained; true or false switches
    its weight-free matching step (`model.probability_matching`) on or off, e.g. to score a run
    trained without it matched; it needs a run trained with `model.advection`.
    """

    run: str = MISSING
    checkpoint: str = "best"
    probability_matching: bool | None = None
    split: str = "test"
    data: DataConfig | None = None
    batch_size: int | None = None
    precision: str = "auto"
    baselines: list[str] = field(
        default_factory=lambda: ["persistence", "optical_flow", "block_matching"]
    )
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    progress: bool = True
    overwrite: bool = False
    shard: str | None = None
    merge: bool = False
    shards_dir: str = MISSING
    paths: PathsConfig = MISSING


@dataclass
class PlotConfig:
    """`nowcast-plot run=<run_dir> [sample=<index or time>] [format=gif|mp4|png]`.

    Draws one window of `split` (see nowcast.plotting.plot_run): `sample` is its index, or the
    UTC time of its newest input frame (e.g. 2024-06-01T12:00); null picks the wettest.
    `format`: gif or mp4 (an animation, plus a still) or png (the still alone). `units`: mm/h
    or dBZ for reflectivity runs (null: mm/h). `evaluation`: where `nowcast-evaluate` wrote
    metrics.json, for the skill plots. `data` selects another store, and `split=all` every
    valid window of it, as for evaluate. `probability_matching`: as for evaluate.
    """

    run: str = MISSING
    checkpoint: str = "best"
    probability_matching: bool | None = None
    split: str = "test"
    data: DataConfig | None = None
    sample: str | None = None
    format: str = "gif"
    units: str | None = None
    baselines: list[str] = field(default_factory=lambda: ["persistence", "optical_flow"])
    max_lead_times: int = 6
    fps: float = 2.0
    evaluation: str = MISSING
    overwrite: bool = False
    paths: PathsConfig = MISSING


@dataclass
class PredictConfig:
    """`nowcast-predict run=<run_dir> input=<folder of radar files or a store> [output=<file>]`.

    See nowcast.prediction.predict. `format`: the input's (odim, knmi, sevir, store; null:
    recognised from the files; fmi, mch, bom, pysteps: given), `quantity`: which ODIM/KNMI
    quantity to read; `importer`, `importer_kwargs`, `fn_pattern`: as for `nowcast-data
    convert`. `output`: the forecast file (null: nowcast_<issue time>.h5 in the current
    directory). `plot`: also draw the forecast beside it, gif or mp4 (an animation, plus a
    still) or png. The model's grid and time step come from `reference_store` (null: the store
    the run was trained on).
    `max_rain_mmh` and `min_quality` mask clutter as `nowcast-data convert` does (pixels above
    that rain rate, or ODIM pixels of lower QIND quality, are no data): give the ones the
    training store was converted with, which the store does not record.
    `probability_matching`: as for evaluate.
    """

    run: str = MISSING
    input: str = MISSING
    probability_matching: bool | None = None
    output: str | None = None
    format: str | None = None
    quantity: str | None = None
    importer: str | None = None
    importer_kwargs: dict[str, Any] = field(default_factory=dict)
    fn_pattern: str | None = None
    checkpoint: str = "best"
    reference_store: str | None = None
    plot: str | None = None
    max_lead_times: int = 6
    fps: float = 2.0
    overwrite: bool = False
    max_rain_mmh: float | None = None
    min_quality: float | None = None


def _value_or(key: str, default: object, *, _root_: DictConfig) -> object:
    """`${nowcast.value_or:key,default}`: the value at `key`, or `default` while a value it
    needs is missing. Hydra's multirun resolves its sweep directory from the config without the
    swept keys (`nowcast-evaluate -m run=a,b` leaves `run` missing there)."""
    try:
        return OmegaConf.select(_root_, key, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError):
        return default


def register_configs() -> None:
    """Put every schema into Hydra's ConfigStore, which the YAML options extend by name, and
    nowcast's resolvers into OmegaConf."""
    OmegaConf.register_new_resolver("nowcast.value_or", _value_or, replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="data_synthetic_schema", node=SyntheticCommandConfig)
    store.store(name="data_convert_schema", node=ConvertCommandConfig)
    store.store(name="data_info_schema", node=InfoCommandConfig)
    store.store(name="evaluate_schema", node=EvaluateConfig)
    store.store(name="plot_schema", node=PlotConfig)
    store.store(name="predict_schema", node=PredictConfig)
    for group, schema in [
        ("data", DataConfig),
        ("model", ModelConfig),
        ("loss", LossConfig),
        ("optimizer", OptimizerConfig),
        ("trainer", TrainerConfig),
        ("paths", PathsConfig),
    ]:
        store.store(group=group, name=f"base_{group}", node=schema)


def read_saved_config(path: str | Path) -> DictConfig:
    """A run's saved config.yaml, without the keys that later versions removed (RETIRED_KEYS)
    and with those they added filled in as the run had them (INHERITED_KEYS)."""
    cfg = OmegaConf.load(path)
    for key in RETIRED_KEYS:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and name in node:
            del node[name]
    for key, source in INHERITED_KEYS.items():
        value = OmegaConf.select(cfg, source)
        if value is not None and OmegaConf.select(cfg, key) is None:
            OmegaConf.update(cfg, key, value)
    return cfg
