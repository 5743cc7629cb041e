"""Evaluation of a tiny trained run: outputs, another data set, bad input, the console script."""

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from expect import fails_with_one_line
from omegaconf import OmegaConf

from nowcast.config import MetricsConfig, NormalisationConfig
from nowcast.data.store import REFLECTIVITY, write_store
from nowcast.distribute import choose_precision, dtype_policy
from nowcast.evaluation import evaluate
from nowcast.metrics import categorical_scores
from nowcast.model import build_model
from nowcast.reports import consecutive_runs, head_to_head
from nowcast.run import Run
from nowcast.units import (
    dbz_to_rain,
    denormalise,
    normalise,
    rain_to_dbz,
    scoring_for,
    to_physical,
)

METHODS = ["model", "persistence", "optical_flow", "block_matching"]


def test_head_to_head_counts_lead_times_won_and_the_mean_difference():
    model = np.array([[0.6, 0.3], [0.5, 0.2], [0.4, 0.1]])
    flow = np.array([[0.7, 0.2], [0.5, 0.1], [0.3, 0.1]])
    record = {
        "thresholds": [1.0, 5.0],
        "methods": {
            "model": {"scores": {"csi": model}},
            "optical_flow": {"scores": {"csi": flow}},
        },
    }
    title, wins, mean = head_to_head(record)[1:]
    assert title.split()[-2:] == [">=1", ">=5"]
    # Ties (0.5 = 0.5, 0.1 = 0.1) are not wins.
    assert wins.split() == ["optical_flow:", "leads", "won", "1/3", "2/3"]
    assert mean.split() == ["optical_flow:", "mean", "diff", "+0.000", "+0.067"]
    assert (
        head_to_head({"thresholds": [1.0], "methods": {"model": record["methods"]["model"]}}) == []
    )

    record["bootstrap"] = {
        "score": "csi",
        "level": 0.95,
        "samples": 1000,
        "unit": "run of consecutive windows",
        "runs": 8,
        "min_runs": 5,
        "windows": 100,
        "windows_per_run": [3, 41],
        "mean_difference_interval": {"optical_flow": [[-0.0123, 0.0151], [None, None]]},
    }
    interval, footnote = head_to_head(record)[4:6]
    assert interval.split() == ["optical_flow:", "95%", "interval", "-0.012..+0.015", "n/a"]
    assert footnote == (
        "Interval: 1000 resamples of the 8 runs of consecutive windows (3-41 windows each),"
    )
    for result in record["methods"].values():
        result["scores"]["hss"] = result["scores"]["csi"]
    assert len(head_to_head(record, score="hss")) == 4  # the interval is the CSI's

    # Too few runs: no interval, and the reason instead.
    record["bootstrap"].update(runs=1, windows=76, mean_difference_interval={})
    lines = head_to_head(record)
    assert not any("interval" in line for line in lines[:4])
    assert "".join(lines[4:]).startswith(
        "No interval: the 76 windows form 1 run of consecutive windows, fewer than the 5 a"
    )


def test_the_bootstrap_draws_runs_of_consecutive_windows():
    """A run goes on across gaps of up to a window's length (6 frames of 5 min here), from the
    last frame of a window to the first of the next, and stops at a new event."""
    times = np.arange(60) * 300
    times[40:] += 3600  # an hour without frames before frame 40
    starts = np.array([25, 0, 1, 2, 13, 26, 40, 41, 50])  # not in order
    runs = consecutive_runs(times, starts, window_length=6, minutes_per_frame=5)
    # 2 -> 13: 30 min from frame 7 to frame 13, one run; 13 -> 25: 35 min, a new one.
    assert runs.tolist() == [1, 0, 0, 0, 0, 1, 2, 2, 2]
    events = np.where(np.arange(60) < 10, 0, 1)  # frame 10 starts an event
    runs = consecutive_runs(times, starts, window_length=6, minutes_per_frame=5, events=events)
    assert runs.tolist() == [2, 0, 0, 0, 1, 2, 3, 3, 3]


def test_scores_are_in_rain_rate_for_reflectivity_and_in_levels_for_vil():
    norm = NormalisationConfig()
    one_mmh = float(normalise(rain_to_dbz(1.0), norm))
    values = np.array([np.nan, -0.2, 0.0, one_mmh, 1.5], np.float32)
    rain = to_physical(values, norm, "DBZH")
    assert np.isnan(rain[0]) and rain[1] == rain[2] == 0.0
    assert rain[3] == pytest.approx(1.0, rel=1e-5)
    assert rain[4] == pytest.approx(to_physical(np.float32(1.0), norm, "DBZH"), rel=1e-6)
    assert scoring_for("DBZH", MetricsConfig()).thresholds == [0.5, 1, 2, 5, 10, 30]

    vil_norm = NormalisationConfig(dbz_min=0.0, dbz_max=255.0)
    levels = to_physical(np.array([np.nan, 0.0, 0.5, 2.0], np.float32), vil_norm, "VIL")
    np.testing.assert_allclose(levels, [np.nan, 0.0, 127.5, 255.0])
    vil = scoring_for("VIL", MetricsConfig())
    assert vil.unit == "VIL level" and vil.thresholds == [16, 74, 133, 160, 181, 219]
    assert not vil.balanced
    with pytest.raises(ValueError, match=r"positive and increasing, Received: \[2.0, 1.0\]"):
        scoring_for("DBZH", MetricsConfig(thresholds_mmh=[2.0, 1.0]))


def test_evaluate_scores_the_run_split_and_baselines(tiny_run, evaluate_config):
    result = evaluate(evaluate_config(f"run={tiny_run}", "batch_size=16"))
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["metrics.json", "categorical.csv", "continuous.csv", "summary.txt", "csi.png", "hss.png"]
    )
    assert not list(out.parent.glob(".evaluation.*")), "temporary folders left behind"

    record = json.loads((out / "metrics.json").read_text())
    split = json.loads((tiny_run / "split.json").read_text())
    assert record["data"]["windows"] == split["splits"]["test"]["windows"]
    assert record["data"]["store"] == split["store"]
    assert record["checkpoint"] == str(tiny_run / "checkpoints" / "best.keras")
    assert record["lead_times_min"] == [5.0, 10.0, 15.0]
    assert record["thresholds"] == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
    assert record["units"] == "mm/h" and record["data"]["quantity"] == "DBZH"
    assert list(record["methods"]) == METHODS
    assert record["model_precision"] == [choose_precision("auto")[0]]

    valid_pixels = None
    for method, scores in record["methods"].items():
        counts = np.stack([scores["contingency"][k] for k in scores["contingency"]], axis=-1)
        assert counts.shape == (3, 6, 4)
        # Every valid pixel lands in exactly one cell, for every method and threshold.
        totals = counts.sum(axis=-1)
        assert np.all(totals == totals[:, :1]), method
        valid_pixels = totals[:, 0] if valid_pixels is None else valid_pixels
        np.testing.assert_array_equal(totals[:, 0], valid_pixels)
        np.testing.assert_array_equal(scores["error_sums"]["valid_pixels"], valid_pixels)
        # The stored scores are those of the stored counts.
        for name, value in categorical_scores(counts).items():
            stored = np.array(scores["scores"][name], dtype=float)
            np.testing.assert_allclose(stored, value, rtol=1e-12, err_msg=f"{method} {name}")
        assert np.array(scores["scores"]["fss"]).shape == (3, 2)
    persistence = record["methods"]["persistence"]["mean_over_lead_times"]
    assert 0 < persistence["csi"][0] < 1 and persistence["mse"] > 0
    # The interval would resample the runs of consecutive test windows (of 6 frames: a new run
    # after more than 30 min from one's last frame to the next's first): the split's blocks of
    # 4 h, too few to trust.
    start_times = split["splits"]["test"]["start_times"]
    seconds = np.array([t.removesuffix("Z") for t in start_times], "datetime64[s]").astype(int)
    runs = 1 + np.sum(np.diff(seconds) > (5 + 6) * 300)
    bootstrap = record["bootstrap"]
    assert bootstrap["runs"] == runs < 5 and bootstrap["windows"] == len(seconds)
    assert bootstrap["mean_difference_interval"] == {}
    assert "95% interval" not in result.summary
    assert f"windows form {runs} run" in result.summary

    with open(out / "categorical.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(METHODS) * 3 * 6
    assert rows[0]["method"] == "model" and float(rows[0]["threshold"]) == 0.5
    with open(out / "continuous.csv") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["fss_ge1_5px", "fss_ge1_20px"]
    for method in METHODS:
        assert method in result.summary
    assert result.summary == (out / "summary.txt").read_text().strip()


def test_another_data_set_with_a_fitting_frame_size(tiny_run, evaluate_config, tmp_path):
    other = tmp_path / "other_48x48.h5"
    cfg = evaluate_config(
        f"run={tiny_run}",
        "data=synthetic",
        f"data.path={other}",
        "data.synthetic={frames: 120, height: 48, width: 48, seed: 5}",
        "data.split.block_hours=2",
        "split=val",
        "baselines=[persistence]",
        "batch_size=16",
    )
    record = evaluate(cfg).metrics
    assert record["data"]["store"] == str(other) and record["data"]["frame_size"] == [48, 48]
    assert record["data"]["split_from"] == "data config" and record["data"]["windows"] > 0
    assert list(record["methods"]) == ["model", "persistence"]


def test_split_all_scores_every_valid_window_of_another_store(tiny_run, evaluate_config, tmp_path):
    """A store the run never saw, too short to split: every window with enough data is scored."""
    frames = np.full((14, 32, 32), 30.0, np.float32)
    frames[:, 16:, :] = np.nan  # the radars cover half of the grid
    frames[9] = np.nan  # a frame without data
    path = write_store(tmp_path / "day.h5", frames, np.arange(14) * 300, grid={},
                       minutes_per_frame=5)  # fmt: skip
    overrides = [f"run={tiny_run}", "data=knmi", f"data.path={path}", "baselines=[persistence]"]
    with pytest.raises(ValueError, match="split 'val' receives too few windows"):
        evaluate(evaluate_config(*overrides))
    result = evaluate(evaluate_config(*overrides, "split=all"))
    # Windows of 3 + 3 frames: 9 starts; those holding the empty frame have 5/6 of the coverage.
    assert result.metrics["data"]["windows"] == 9
    assert result.metrics["data"]["valid_fraction_of"] == "coverage"
    assert "every window of" in result.summary
    assert "9 windows with at least 0.5 of the coverage valid" in result.summary
    strict = evaluate(evaluate_config(*overrides, "split=all", "data.min_valid_fraction=0.9",
                                      "overwrite=true"))  # fmt: skip
    assert strict.metrics["data"]["windows"] == 9 - 5  # starts 4-8 hold frame 9


def test_a_store_of_another_time_step_is_refused(tiny_run, evaluate_config, tmp_path):
    """The run's lead times are frames: a 10-minute store would be scored at 10-120 min."""
    frames = np.full((14, 32, 32), 30.0, np.float32)
    path = write_store(tmp_path / "ten.h5", frames, np.arange(14) * 600, grid={},
                       minutes_per_frame=10)  # fmt: skip
    cfg = evaluate_config(f"run={tiny_run}", "data=knmi", f"data.path={path}", "split=all")
    with pytest.raises(ValueError, match=r"ten.h5 has a time step of 10 min, but the run was "
                       r"trained on 5-minute frames"):  # fmt: skip
        evaluate(cfg)
    assert not (tmp_path / "evaluation").exists()


def test_bad_run_directories_and_checkpoints_are_one_line(
    tiny_run, evaluate_config, tmp_path, capsys
):
    missing = tmp_path / "no_such_run"
    line = fails_with_one_line(lambda: evaluate(evaluate_config(f"run={missing}")), capsys)
    assert f"run directory not found: {missing}" in line

    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(tiny_run / "config.yaml", untrained)
    line = fails_with_one_line(lambda: evaluate(evaluate_config(f"run={untrained}")), capsys)
    assert "checkpoint not found" in line and "best.keras" in line and "checkpoint=" in line

    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip file")
    cfg = evaluate_config(f"run={tiny_run}", f"checkpoint={junk}")
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert f"{junk} is not a Keras checkpoint" in line


def test_a_checkpoint_of_another_architecture_is_one_line(
    tiny_run, evaluate_config, tmp_path, capsys
):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_run, changed, ignore=shutil.ignore_patterns("evaluation"))
    run_cfg = OmegaConf.load(changed / "config.yaml")
    run_cfg.model.head_filters = 6
    OmegaConf.save(run_cfg, changed / "config.yaml")
    line = fails_with_one_line(lambda: evaluate(evaluate_config(f"run={changed}")), capsys)
    assert "does not match the model of the run's config.yaml" in line
    assert "head_filters=4 in the checkpoint, 6 expected" in line
    assert not (tmp_path / "evaluation").exists()


def test_a_model_that_copies_its_last_frame_scores_exactly_persistence(
    tiny_run, evaluate_config, tmp_path
):
    """The sanity checks of the synthetic benchmark: copying the newest frame is persistence,
    and on moving echoes optical flow is far ahead of it, as on real radar."""
    copier = tmp_path / "copier"
    shutil.copytree(tiny_run, copier, ignore=shutil.ignore_patterns("evaluation"))
    run_cfg = OmegaConf.load(copier / "config.yaml")
    run_cfg.model.last_frame_skip = True
    run_cfg.model.update(advection=False, scale_bands=0, probability_matching=False)
    OmegaConf.save(run_cfg, copier / "config.yaml")
    model = build_model(run_cfg.model, n_out=run_cfg.data.n_out, input_shape=(32, 32, 1))
    head = np.zeros(model.head.kernel.shape, np.float32)
    head[1, 1, -1, 0] = 1.0  # the head passes the newest frame, the output conv adds it up
    model.head.set_weights([head, np.zeros(head.shape[-1], np.float32)])
    model.output_conv.set_weights([np.ones((1, 1, head.shape[-1], 1), np.float32), np.zeros(1)])
    model.save(copier / "checkpoints" / "best.keras")

    cfg = evaluate_config(
        f"run={copier}",
        "data=synthetic",
        f"data.path={tmp_path / 'day64.h5'}",
        "data.synthetic.height=64",
        "data.synthetic.width=64",
        "data.synthetic.frames=288",
        "data.split.block_hours=4",
        "precision=float32",  # bfloat16 would round the copied frame
    )
    methods = evaluate(cfg).metrics["methods"]
    for score, values in methods["persistence"]["scores"].items():
        np.testing.assert_allclose(methods["model"]["scores"][score], values, rtol=1e-6)
    # At 1 mm/h: ahead at every lead time (5-15 min here), by half as much again on the mean.
    flow, persistence = (
        np.asarray(methods[m]["scores"]["csi"])[:, 1] for m in ("optical_flow", "persistence")
    )
    assert (flow > persistence).all() and flow.mean() > 1.5 * persistence.mean(), (
        flow,
        persistence,
    )


def test_a_run_saved_before_an_option_existed_loads_with_its_default(
    tiny_run, evaluate_config, tmp_path
):
    older = tmp_path / "older"
    shutil.copytree(tiny_run, older, ignore=shutil.ignore_patterns("evaluation"))
    best = older / "checkpoints" / "best.keras"
    with zipfile.ZipFile(best) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    saved = json.loads(files["config.json"])
    for option in ("recurrent", "last_frame_skip"):  # added after the first checkpoints
        del saved["config"][option]
    files["config.json"] = json.dumps(saved).encode()
    with zipfile.ZipFile(best, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    run_config = OmegaConf.load(older / "config.yaml")
    run_config.data.shuffle_buffer = 256  # a run config key removed since
    OmegaConf.save(run_config, older / "config.yaml")
    result = evaluate(evaluate_config(f"run={older}", "baselines=[]"))
    assert result.metrics["checkpoint"] == str(best)


def test_frames_the_model_cannot_take_are_one_line(tiny_run, evaluate_config, tmp_path, capsys):
    cfg = evaluate_config(
        f"run={tiny_run}",
        "data=synthetic",
        f"data.path={tmp_path / 'odd.h5'}",
        "data.synthetic={frames: 120, height: 33, width: 33}",
        "data.split.block_hours=2",
    )
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert "cannot take frames of 33x33 pixels" in line and "not divisible" in line
    assert not (tmp_path / "evaluation").exists()


def test_the_interval_resamples_runs_of_consecutive_windows(tiny_run, evaluate_config, tmp_path):
    """Six bursts of 8 frames (3 windows of 6 frames each). The first two are 20 minutes
    apart: one run of 6 windows. Then 90 minutes or more between bursts: 5 runs in all (not 6
    bursts, nor the 4 blocks of 3 hours the windows start in), just enough for an interval."""
    first_minutes = [0, 55, 180, 305, 430, 825]
    minutes = np.concatenate([m + 5 * np.arange(8) for m in first_minutes])
    rng = np.random.default_rng(0)
    frames = rng.uniform(10.0, 45.0, (minutes.size, 32, 32)).astype(np.float32)
    path = write_store(tmp_path / "bursts.h5", frames, minutes * 60, grid={},
                       minutes_per_frame=5)  # fmt: skip
    cfg = evaluate_config(
        f"run={tiny_run}", "data=knmi", f"data.path={path}", "split=all", "baselines=[sprog]"
    )
    result = evaluate(cfg)
    bootstrap = result.metrics["bootstrap"]
    assert result.metrics["data"]["windows"] == bootstrap["windows"] == 18
    assert bootstrap["runs"] == 5 and bootstrap["windows_per_run"] == [3, 6]
    assert np.shape(bootstrap["mean_difference_interval"]["sprog"]) == (6, 2)
    assert "sprog: 95% interval" in result.summary
    assert "1000 resamples of the 5 runs of consecutive windows (3-6 windows each)" in (
        result.summary
    )


def test_the_precision_of_the_forward_pass_rounds_the_network_alone(
    tiny_run, evaluate_config, tmp_path, capsys
):
    """bfloat16 (auto where the CPU has it) changes the network's arithmetic, not the baselines'
    nor the extrapolation's: block matching, which comes from the model's own pass, keeps its
    counts."""
    records = {}
    for precision in ("float32", "mixed_bfloat16"):
        cfg = evaluate_config(
            f"run={tiny_run}",
            f"precision={precision}",
            "baselines=[persistence,block_matching]",
            f"paths.output_dir={tmp_path / precision}",
        )
        result = evaluate(cfg)
        assert f"The model's forward pass in {precision}." in result.summary
        records[precision] = result.metrics
    full, rounded = (records[p] for p in ("float32", "mixed_bfloat16"))
    assert (full["model_precision"], rounded["model_precision"]) == (
        ["float32"],
        ["mixed_bfloat16"],
    )
    for method in ("persistence", "block_matching"):
        for name, counts in full["methods"][method]["contingency"].items():
            np.testing.assert_array_equal(
                rounded["methods"][method]["contingency"][name], counts, err_msg=method
            )
    mse = [r["methods"]["model"]["mean_over_lead_times"]["mse"] for r in (full, rounded)]
    assert mse[0] != mse[1] and mse[1] == pytest.approx(mse[0], rel=0.05)

    line = fails_with_one_line(
        lambda: evaluate(evaluate_config(f"run={tiny_run}", "precision=bf16")), capsys
    )
    assert line.endswith(
        "unknown precision, allowed: auto, float32, mixed_float16, mixed_bfloat16. "
        "Received: 'bf16'"
    )
    assert not (tmp_path / "evaluation").exists()


def test_bad_bootstrap_settings_are_one_line(tiny_run, evaluate_config, tmp_path, capsys):
    cfg = evaluate_config(f"run={tiny_run}", "metrics.bootstrap_samples=-1")
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert "metrics.bootstrap_samples must be >= 0 (0: no interval). Received: -1" in line
    assert not (tmp_path / "evaluation").exists()


def test_existing_output_is_kept_without_overwrite(tiny_run, evaluate_config, tmp_path, capsys):
    previous = tmp_path / "evaluation"
    previous.mkdir()
    (previous / "metrics.json").write_text("{}")
    cfg = evaluate_config(f"run={tiny_run}")
    line = fails_with_one_line(lambda: evaluate(cfg), capsys)
    assert f"{previous} exists; pass overwrite=true" in line
    assert (previous / "metrics.json").read_text() == "{}"


def test_console_script_end_to_end(tiny_run, tmp_path):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "nowcast-evaluate"), f"run={tiny_run}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tiny_run / "evaluation"
    assert f"Evaluation written to {out}" in done.stdout
    table = done.stdout[done.stdout.index("CSI") :]
    for method in METHODS:
        assert method in table
    assert (out / "metrics.json").is_file() and (out / "csi.png").is_file()
    assert list(tmp_path.iterdir()) == [], "nothing is written where the command runs"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_a_model_with_advection_gives_block_matching_from_its_own_pass(precision):
    """Scoring does not estimate the motion twice: the model's pass gives block matching's
    forecast, the one the baseline makes alone (to float rounding), also when the network
    computes in bfloat16: the frames are matched and moved in float32."""
    from nowcast.baselines import BlockMatching, Persistence
    from nowcast.evaluation import _forecast_jobs
    from nowcast.model import EncoderForecaster

    stage = {"filters": 4, "kernel_size": 3, "downsample_filters": 4, "downsample_kernel": 3}
    frames = np.random.default_rng(0).random((2, 4, 32, 32, 1), dtype=np.float32)
    baselines = {"persistence": Persistence(3), "block_matching": BlockMatching(3, 6)}
    for advection, n_jobs in ((True, 2), (False, 3)):
        with dtype_policy(precision):
            model = EncoderForecaster(
                [dict(stage, downsample_stride=2)],
                n_out=3,
                advection=advection,
                advection_max_speed=6,
            )
            model(frames)
        jobs = _forecast_jobs(model, baselines)
        assert len(jobs) == n_jobs
        forecasts = {name: f for job in jobs for name, f in job(frames).items()}
        assert sorted(forecasts) == ["block_matching", "model", "persistence"]
        np.testing.assert_allclose(forecasts["model"], model.predict_on_batch(frames), atol=1e-6)
        np.testing.assert_allclose(
            forecasts["block_matching"], baselines["block_matching"](frames), atol=1e-5
        )
    assert list(baselines) == ["persistence", "block_matching"], "the caller's dict is kept"


def test_baselines_are_set_up_as_the_runs_model():
    norm = {"dbz_min": -10.0, "dbz_max": 60.0, "zr_a": 300.0, "zr_b": 1.4}
    run_cfg = OmegaConf.create(
        {
            "data": {"n_in": 3, "n_out": 3, "normalisation": norm},
            "model": {"advection_max_speed": 2},
        }
    )
    run = Run(Path("run"), run_cfg, Path("run/checkpoints/best.keras"))
    baselines = run.baselines(["persistence", "block_matching", "sprog"])
    assert list(baselines) == ["persistence", "block_matching", "sprog"]
    assert baselines["persistence"].n_out == baselines["block_matching"].n_out == 3
    assert baselines["sprog"].n_out == 3
    assert baselines["block_matching"].max_speed == 2
    assert baselines["sprog"].norm == norm
    # S-PROG fits an AR(2) model to the 3 newest frames.
    run_cfg.data.n_in = 2
    assert list(run.baselines(["optical_flow"])) == ["optical_flow"]
    with pytest.raises(ValueError, match=r"sprog baseline needs at least 3 .* data.n_in=2; lea"):
        run.baselines(["optical_flow", "sprog"])


def test_rain_rates_only_where_there_is_echo_match_the_whole_field():
    """to_physical takes Z-R only on echo: the same values, bit for bit, as on every pixel."""
    norm = NormalisationConfig()
    values = np.random.default_rng(3).random((2, 3, 40, 50), dtype=np.float32) * 1.2 - 0.1
    values[values < 0.4] = 0.0
    values[0, 0, :5] = np.nan
    clipped = np.clip(values, 0.0, 1.0)
    everywhere = dbz_to_rain(denormalise(clipped, norm), norm.zr_a, norm.zr_b).astype(np.float32)
    expected = np.where(clipped <= 0.0, np.float32(0.0), everywhere)
    np.testing.assert_array_equal(to_physical(values, norm, REFLECTIVITY.name), expected)
