"""Console scripts: thin wrappers that compose a Hydra config and call the library.

Bad input (a missing store, a wrong value, a typo in a key) ends in one line on stderr naming
the problem and a non-zero exit. TensorFlow's C++ log is left out: what its libraries print
while they load (absl's banner, the oneDNN and CPU-instruction notices, "Could not find cuda
drivers" and the failed cuInit of a machine without a GPU), and later records below FATAL
(TF_CPP_MIN_LOG_LEVEL=3 unless it is set; TensorFlow's errors reach Python as exceptions).
Python's warnings stay. `-v` (or NOWCAST_DEBUG=1) shows all of it, and the full traceback of an
error.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nowcast.config import config_dir, register_configs
from nowcast.locks import LockedError, run_lock

log = logging.getLogger("nowcast")
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError, LockedError)
DATA_COMMANDS = {
    "synthetic": "output=<store.h5> [frames=N] [seed=S] [height=H] [width=W] [overwrite=true]",
    "convert": "format=<odim|knmi|sevir|store|fmi|mch|bom|pysteps> input=<folder, glob or file> "
    "output=<store.h5> "
    "[crop.height=H crop.width=W [crop.top=T crop.left=L]] [downsample=F] [overwrite=true]",
    "info": "input=<store.h5>",
}

VERBOSE_FLAGS = ("-v", "--verbose")
# A record of absl's C++ logging, which TensorFlow's libraries use: severity letter (I, W, E,
# F), date, time, thread, file:line].
_LOG_RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]+\] ")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called"

register_configs()


def take_verbose_flag(argv: list[str]) -> list[str]:
    """`argv` without -v/--verbose, which set NOWCAST_DEBUG=1 (Hydra does not know them)."""
    kept = [arg for arg in argv if arg not in VERBOSE_FLAGS]
    if len(kept) < len(argv):
        os.environ["NOWCAST_DEBUG"] = "1"
    return kept


def without_startup_notices(text: str) -> str:
    """What TensorFlow's libraries wrote to stderr while loading, less what is only noise.

    Left out: absl's banner, informational records (I...) with their continuation lines, and
    the failed cuInit where no CUDA driver is installed (a CPU machine; logged where
    TF_CPP_MIN_LOG_LEVEL is set below 3). Warnings, errors, and a failed cuInit on a machine
    with a driver stay.
    """
    no_driver = "Could not find cuda drivers" in text
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith(_ABSL_BANNER):
            dropping = True
        elif _LOG_RECORD.match(line):
            dropping = line[0] == "I" or (no_driver and "failed call to cuInit" in line)
        if not dropping:
            kept.append(line)
    return "".join(kept)


def import_keras_quietly() -> None:
    """Import Keras and its backend, and look for GPUs, with TensorFlow's start-up notices left
    out (see `without_startup_notices`); `-v` or NOWCAST_DEBUG=1 keeps them.

    TF_CPP_MIN_LOG_LEVEL does not reach these notices: TensorFlow's libraries print them through
    absl's logging before anything sets that up, straight to file descriptor 2. So that
    descriptor goes to a temporary file while they load, and what is left of it is printed
    after. Python's own writes (warnings) go to the real stderr meanwhile. CUDA_VISIBLE_DEVICES
    is left alone: GPUs are found as ever.
    """
    if os.environ.get("NOWCAST_DEBUG"):
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    real_stderr = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        sys.stderr = open(  # noqa: SIM115 (closed in the finally clause)
            os.dup(real_stderr),
            "w",
            buffering=1,
            encoding=python_stderr.encoding,
            errors=python_stderr.errors,
        )
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                # TensorFlow's first look for GPUs, where a machine without a driver logs a
                # failed cuInit (at TF_CPP_MIN_LOG_LEVEL under 3), while that is left out.
                tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(real_stderr, 2)
            os.close(real_stderr)
            captured.seek(0)
            sys.stderr.write(without_startup_notices(captured.read().decode(errors="replace")))
            sys.stderr.flush()


def run_reporting_errors(task: Callable[[], object], errors: tuple = USER_ERRORS) -> object:
    """Run `task`; a user error becomes one line on stderr and exit status 2."""
    try:
        return task()
    except errors as err:
        if os.environ.get("NOWCAST_DEBUG"):
            raise
        print(f"nowcast: error: {err}", file=sys.stderr)
        sys.exit(2)


def config_error_line(err: Exception) -> str:
    """Hydra's or OmegaConf's config error in one line: the first line of its message and of
    its cause (the rest, e.g. "append with +key", would hide a typo)."""
    causes = [str(e) for e in (err, err.__cause__) if e is not None and str(e)]
    line = ": ".join(cause.splitlines()[0].rstrip(".") for cause in causes)
    # An unknown group option: Hydra lists the valid ones, indented, after "Available options".
    listing = str(err).partition("Available options")[2].splitlines()[1:]
    options = [name.strip() for name in itertools.takewhile(lambda s: s[:1] == "\t", listing)]
    return f"{line}; options: {', '.join(options)}" if options else line


def check_data_option_chosen(args: list[str]) -> None:
    """Exit with one line when `args` set a key of the data group but choose no data option.

    evaluate and plot leave the group unset (the run's own store), and Hydra cannot set a key
    of a group that is not there: `data.path=x.h5` alone ended in an AssertionError from
    OmegaConf."""
    names = [arg.partition("=")[0].lstrip("+~") for arg in args]
    keys = [name for name in names if name.startswith("data.")]
    if keys and "data" not in names:
        options = ", ".join(sorted(path.stem for path in (config_dir() / "data").glob("*.yaml")))
        print(
            f"nowcast: error: {keys[0]}= sets the data group, which this command leaves to the "
            f"run's own store; choose the store's data option too, e.g. data=radar_hdf5 "
            f"{keys[0]}=... (options: {options})",
            file=sys.stderr,
        )
        sys.exit(2)


def run_hydra_reporting_errors(main: Callable[[], None], command: str) -> None:
    """Run a `@hydra.main` function; a config error (a key that does not exist, a value of the
    wrong type, an unknown group option) becomes one line on stderr and exit status 2, as the
    errors of `run_reporting_errors` do. HYDRA_FULL_ERROR=1 or NOWCAST_DEBUG=1 keep Hydra's
    own report. `-v`/`--verbose` in the arguments sets NOWCAST_DEBUG=1."""
    sys.argv[1:] = take_verbose_flag(sys.argv[1:])
    if os.environ.get("HYDRA_FULL_ERROR") or os.environ.get("NOWCAST_DEBUG"):
        main()
        return
    # Hydra re-raises its errors, instead of printing them in several lines, only with this.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        print(
            f"nowcast: error: {config_error_line(err)}; the valid keys and values: "
            f"{command} --cfg job",
            file=sys.stderr,
        )
        sys.exit(2)
    except RuntimeError as err:
        # submitit's, when hydra/launcher=slurm runs where there is no SLURM.
        if "srun" not in str(err):
            raise
        print(
            "nowcast: error: hydra/launcher=slurm found no SLURM here (no srun on the PATH); "
            "run it on a SLURM login node, or run the jobs on this machine with "
            "hydra/launcher=joblib",
            file=sys.stderr,
        )
        sys.exit(2)
    except OSError as err:
        if err.filename is None:
            raise
        # Most often the output folder (Hydra creates it before the task starts).
        print(
            f"nowcast: error: {err.filename}: {err.strerror}; check that the path exists and "
            "is writable, or choose another output folder with hydra.run.dir=<dir>",
            file=sys.stderr,
        )
        sys.exit(2)
    finally:
        del os.environ["HYDRA_FULL_ERROR"]


class RunDirectoryLock(Callback):
    """Locks the run directory of `nowcast-train` (nowcast.locks) before Hydra writes into it
    (.hydra/, the log), so that a second training there is refused before it changes anything.
    `train` takes the same lock again; it is released when the process exits.

    Registered in configs/train.yaml (`hydra.callbacks`); multirun jobs are locked by `train`
    alone. In a cluster of training tasks (TF_CONFIG, or a SLURM job step of several tasks) it
    does nothing: there only the chief locks, once TensorFlow has found which task that is.
    """

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if os.environ.get("TF_CONFIG") or int(os.environ.get("SLURM_NTASKS", 0)) > 1:
            return
        run_dir = Path(config.hydra.run.dir).absolute()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # Hydra fails to make it too, and that is reported in one line
        held = contextlib.ExitStack()
        try:
            held.enter_context(run_lock(run_dir))
        except LockedError as err:
            # Hydra turns what a callback raises into a warning and carries on.
            print(f"nowcast: error: {err}", file=sys.stderr)
            sys.exit(2)
        atexit.register(held.close)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    # TensorFlow loads here, after Hydra has checked the config.
    import_keras_quietly()
    from nowcast.callbacks import NonFiniteLossError
    from nowcast.resume import resume_config
    from nowcast.training import train

    if not OmegaConf.is_missing(cfg, "resume"):
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
        cfg = run_reporting_errors(lambda: resume_config(cfg.resume, overrides))
    try:
        result = run_reporting_errors(lambda: train(cfg), USER_ERRORS + (NonFiniteLossError,))
    except KeyboardInterrupt:
        if os.environ.get("NOWCAST_DEBUG"):
            raise
        # Ctrl-C: every file of the run is whole (written under a temporary name, then
        # renamed), so the run continues from its last backup.
        print(
            "\nnowcast: interrupted; continue from the last backup with: nowcast-train "
            f"resume={HydraConfig.get().runtime.output_dir}",
            file=sys.stderr,
        )
        sys.exit(130)
    run_dir = result.run_dir
    print(f"\nRun directory: {run_dir}")
    for name, what in [
        ("config.yaml", "resolved config"),
        ("model.keras", "final model"),
        ("checkpoints", "best.keras and last.keras"),
        ("tensorboard", f"TensorBoard logs (tensorboard --logdir {run_dir / 'tensorboard'})"),
        ("metrics.csv", "losses and learning rate per epoch"),
        ("backup", f"training state (train on: nowcast-train resume={run_dir} trainer.epochs=N)"),
    ]:
        if (run_dir / name).exists():  # no TensorBoard logs under JAX
            print(f"  {name:<12} {what}")
    print(f"Score it against persistence and optical flow: nowcast-evaluate run={run_dir}")


def train_main() -> None:
    """`nowcast-train [group=option ...] [key=value ...]`."""
    run_hydra_reporting_errors(_train, "nowcast-train")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="evaluate")
def _evaluate(cfg: DictConfig) -> None:
    from nowcast.sharding import check_shard_options

    # A bad shard= fails here in a second, before TensorFlow loads; `evaluate`, which tests and
    # notebooks call directly, parses it again to choose what it scores.
    run_reporting_errors(lambda: check_shard_options(cfg.shard, cfg.merge))
    from nowcast.memory import keep_freed_memory

    keep_freed_memory()  # before TensorFlow starts its threads
    import_keras_quietly()  # TensorFlow loads here, after Hydra and shard= have been checked
    from nowcast.evaluation import evaluate

    result = run_reporting_errors(lambda: evaluate(cfg))
    if cfg.shard is not None:
        print(f"\n{result.summary}")
        return
    print(f"\n{result.summary}\n\nEvaluation written to {result.output_dir}")
    for name, what in [
        ("metrics.json", "every score, the raw counts, and what was scored"),
        ("*.csv", "scores per lead time: categorical.csv, continuous.csv"),
        ("*.png", "CSI and HSS versus lead time: csi.png, hss.png"),
    ]:
        print(f"  {name:<12} {what}")
    if "stores" in result.metrics:
        print(f"  {'':<12} (the counts pooled over the stores)")
        print(f"  {'stores/':<12} each store's own: {', '.join(result.metrics['stores'])}")
        print(f"  {'scorecard.png':<12} mean CSI against a reference method, store by store")


def evaluate_main() -> None:
    """`nowcast-evaluate run=<run_dir> [checkpoint=best|last|<path>] [split=test] [data=...]
    [shard=i/n | merge=true]`."""
    check_data_option_chosen(sys.argv[1:])
    run_hydra_reporting_errors(_evaluate, "nowcast-evaluate")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="plot")
def _plot(cfg: DictConfig) -> None:
    import_keras_quietly()  # TensorFlow loads here, after Hydra has checked the config
    from nowcast.plotting import plot_run

    result = run_reporting_errors(lambda: plot_run(cfg))
    print(f"\n{result.summary}")


def plot_main() -> None:
    """`nowcast-plot run=<run_dir> [sample=<index or time>] [format=gif|mp4|png]`."""
    check_data_option_chosen(sys.argv[1:])
    run_hydra_reporting_errors(_plot, "nowcast-plot")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def _predict(cfg: DictConfig) -> None:
    import_keras_quietly()  # TensorFlow loads here, after Hydra has checked the config
    from nowcast.prediction import predict

    result = run_reporting_errors(lambda: predict(cfg))
    print(f"\n{result.summary}")


def predict_main() -> None:
    """`nowcast-predict run=<run_dir> input=<folder of radar files or a store> [output=<file>]`."""
    run_hydra_reporting_errors(_predict, "nowcast-predict")


def _data_usage() -> str:
    return "\n".join(
        f"{'usage:' if k == 0 else '      '} nowcast-data {name} {arguments}"
        for k, (name, arguments) in enumerate(DATA_COMMANDS.items())
    )


def _run_data_command(command: str, cfg: DictConfig) -> None:
    """The library call behind each `nowcast-data` command; prints what it did."""
    if command == "synthetic":
        from nowcast.data.synthetic import write_synthetic_store

        path = write_synthetic_store(Path(cfg.output).expanduser(), cfg, overwrite=cfg.overwrite)
        print(f"Wrote {path}")
    elif command == "convert":
        from nowcast.data.convert import convert

        result = convert(cfg)
        skipped = f"; {result.duplicates} duplicate frames skipped" if result.duplicates else ""
        print(
            f"Wrote {result.path}: {result.frames} frames of {result.height} x {result.width} "
            f"pixels, every {result.minutes_per_frame:g} min{skipped}"
        )
        print(f"Inspect it with: nowcast-data info input={result.path}")
    else:
        from nowcast.data.info import describe_store

        print(describe_store(cfg.input))


def data_main(argv: list[str] | None = None) -> None:
    """`nowcast-data {synthetic,convert,info} key=value ...` (see DATA_COMMANDS)."""
    argv = take_verbose_flag(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_data_usage())
        return
    if not argv or argv[0] not in DATA_COMMANDS:
        print(_data_usage(), file=sys.stderr)
        sys.exit(2)
    command, overrides = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def compose_command() -> DictConfig:
        try:
            return compose(f"data_command/{command}", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            raise ValueError(f"{config_error_line(err)} (usage: nowcast-data --help)") from None

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = run_reporting_errors(compose_command)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        print(
            f"nowcast: error: nowcast-data {command} needs "
            f"{', '.join(f'{key}=' for key in missing)}; "
            f"usage: nowcast-data {command} {DATA_COMMANDS[command]}",
            file=sys.stderr,
        )
        sys.exit(2)
    OmegaConf.resolve(cfg)
    run_reporting_errors(lambda: _run_data_command(command, cfg))
