"""Sharded scoring: shards of a tiny run's windows merge into what one process writes, the merge
refuses shards that do not belong together, and bad `shard=` values fail at start-up."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from expect import fails_with_one_line
from hydra import compose, initialize_config_dir

from nowcast.config import config_dir, register_configs
from nowcast.data.store import write_store
from nowcast.evaluation import evaluate
from nowcast.metrics import VerificationAccumulator
from nowcast.sharding import check_shard_options

BIN = Path(sys.executable).parent
# Sums of floats, which shards add up in another order than one process.
FLOAT_SUMS = ("error_sums", "fss_sums")
CONTINUOUS = ("mse", "mae", "b_mse", "b_mae", "fss")


@pytest.fixture(scope="module")
def bursts(tmp_path_factory) -> Path:
    """Six bursts of 8 frames, 90 minutes apart: 6 runs of 3 windows of 3 + 3 frames each."""
    minutes = np.concatenate([90 * k + 5 * np.arange(8) for k in range(6)])
    rng = np.random.default_rng(1)
    frames = rng.uniform(10.0, 45.0, (minutes.size, 32, 32)).astype(np.float32)
    path = tmp_path_factory.mktemp("bursts") / "bursts.h5"
    return write_store(path, frames, minutes * 60, grid={}, minutes_per_frame=5)


@pytest.fixture(scope="module")
def scored_once() -> dict:
    return {}


@pytest.fixture
def scored(tiny_run, bursts, evaluate_config, tmp_path_factory, scored_once) -> dict:
    """The bursts store scored once in one process and once in 2 shards, then merged."""
    if not scored_once:
        out = tmp_path_factory.mktemp("scored")
        options = [
            f"run={tiny_run}",
            "data=knmi",
            f"data.path={bursts}",
            "split=all",
            "baselines=[persistence]",
            # The model's float32 forecast of a window can change in the last bits with the
            # other windows of its batch, which differ between shards: one window a batch.
            "batch_size=1",
        ]
        single = evaluate(evaluate_config(*options, f"paths.output_dir={out / 'single'}"))
        sharded = [f"paths.output_dir={out / 'evaluation'}", *options]
        shards = [evaluate(evaluate_config(*sharded, f"shard={i}/4")) for i in range(4)]
        merged = evaluate(evaluate_config(*sharded, "merge=true"))
        scored_once.update(options=options, out=out, single=single, shards=shards, merged=merged)
    return scored_once


def test_shards_merge_into_what_one_process_writes(scored):
    out, single, merged = scored["out"], scored["single"], scored["merged"]
    assert merged.output_dir == out / "evaluation"
    shards = [result.output_dir for result in scored["shards"]]
    assert shards == [out / "evaluation-shards" / f"shard-{i}-of-4" for i in range(4)]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "temporary folders"

    # Each shard scored a stretch of 4 or 5 windows, which cuts runs of 3 windows in two, and
    # keeps their counts by global run id: the merge adds the parts of a run.
    runs = [[0, 1], [1, 2], [3, 4], [4, 5]]
    for index, result in enumerate(scored["shards"]):
        assert [p.name for p in result.output_dir.iterdir()] == ["shard.json"]
        record = json.loads((result.output_dir / "shard.json").read_text())
        assert record["shard"] == {"index": index, "count": 4, "windows": 4 + index % 2}
        for method in ("model", "persistence"):
            blocks = record["accumulators"][method]["block_contingency"]
            assert sorted(map(int, blocks)) == runs[index]

    one = json.loads((single.output_dir / "metrics.json").read_text())
    two = json.loads((merged.output_dir / "metrics.json").read_text())
    assert two["data"]["windows"] == one["data"]["windows"] == 18
    assert two["bootstrap"]["runs"] == 6 and two["bootstrap"]["mean_difference_interval"]
    for key in one:
        if key != "methods":
            assert two[key] == one[key], key  # what was scored, and the bootstrap interval
    assert list(two["methods"]) == list(one["methods"]) == ["model", "persistence"]
    for method, expected in one["methods"].items():
        result = two["methods"][method]
        assert result["contingency"] == expected["contingency"], method
        for part in FLOAT_SUMS:
            for name, values in expected[part].items():
                np.testing.assert_allclose(result[part][name], values, rtol=1e-12, atol=0)
        for part in ("scores", "mean_over_lead_times"):
            for name, values in expected[part].items():
                if name in CONTINUOUS:
                    np.testing.assert_allclose(result[part][name], values, rtol=1e-12, atol=0)
                else:
                    assert result[part][name] == values, (method, part, name)
    for name in ("categorical.csv", "summary.txt"):
        assert (merged.output_dir / name).read_text() == (single.output_dir / name).read_text()
    assert (merged.output_dir / "csi.png").is_file() and (merged.output_dir / "continuous.csv")


def copy_of_the_shards(scored, tmp_path) -> Path:
    folder = tmp_path / "shards"
    shutil.copytree(scored["out"] / "evaluation-shards", folder)
    return folder


def edit_shard(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_the_merge_refuses_shards_that_do_not_belong_together(
    scored, evaluate_config, tmp_path, capsys
):
    folder = copy_of_the_shards(scored, tmp_path)

    def merge(*overrides: str) -> str:
        cfg = evaluate_config(*scored["options"], f"shards_dir={folder}", "merge=true", *overrides)
        return fails_with_one_line(lambda: evaluate(cfg), capsys)

    line = merge("metrics.thresholds_mmh=[1,5]")
    assert f"{folder / 'shard-0-of-4'} was scored otherwise than this merge's settings" in line
    assert "its thresholds is [0.5, 1.0, 2.0, 5.0, 10.0, 30.0], this merge's is [1.0, 5.0]" in line
    assert line.endswith("or score that shard again with overwrite=true")
    line = merge("checkpoint=last")
    assert "its checkpoint is '" in line and "best.keras'" in line and "last.keras'" in line
    line = merge("baselines=[persistence,block_matching]")
    assert "its methods is ['model', 'persistence'], this merge's is ['model', 'persist" in line

    second = folder / "shard-1-of-4" / "shard.json"
    original = second.read_text()
    edit_shard(second, lambda r: r["scored"].update(checkpoint_sha256="0" * 64))
    assert "best.keras changed after shard-1-of-4 was scored" in merge()
    second.write_text(original)

    shutil.copytree(folder / "shard-1-of-4", folder / "shard-1-of-4 (copy)")
    line = merge()
    assert f"shard 1/4 is in {folder} 2 times (shard-1-of-4, shard-1-of-4 (copy))" in line
    shutil.rmtree(folder / "shard-1-of-4 (copy)")

    shutil.copytree(folder / "shard-1-of-4", folder / "shard-1-of-3")
    edit_shard(folder / "shard-1-of-3" / "shard.json", lambda r: r["shard"].update(count=3))
    assert f"{folder} holds shards of 3 and of 4 shards: remove the folders" in merge()
    shutil.rmtree(folder / "shard-1-of-3")

    shutil.rmtree(folder / "shard-1-of-4")
    line = merge()
    assert f"1 of the 4 shards missing from {folder}: score them with shard=1/4, then" in line
    shutil.rmtree(folder)
    assert f"no shards to merge in {folder}; score them first with shard=i/n" in merge()
    assert not (tmp_path / "evaluation").exists()


def test_shards_forecast_in_other_precisions_merge_and_say_so(scored, evaluate_config, tmp_path):
    """`precision=auto` on unlike machines: the counts still add up, and the merge lists every
    precision the model ran in. Shards written before the precision was recorded ran in
    float32."""
    folder = copy_of_the_shards(scored, tmp_path)
    edit_shard(folder / "shard-0-of-4" / "shard.json", lambda r: r.update(model_precision="x"))
    edit_shard(folder / "shard-1-of-4" / "shard.json", lambda r: r.pop("model_precision"))
    cfg = evaluate_config(*scored["options"], f"shards_dir={folder}", "merge=true")
    record = json.loads((evaluate(cfg).output_dir / "metrics.json").read_text())
    single = json.loads((scored["single"].output_dir / "metrics.json").read_text())
    (precision,) = single["model_precision"]
    assert record["model_precision"] == sorted({"x", "float32", precision})
    assert f"The model's forward pass in {' and '.join(record['model_precision'])}." in (
        (tmp_path / "evaluation" / "summary.txt").read_text()
    )
    assert record["methods"]["model"]["contingency"] == single["methods"]["model"]["contingency"]


def test_shards_need_as_many_windows_and_keep_what_exists(scored, evaluate_config, capsys):
    line = fails_with_one_line(
        lambda: evaluate(evaluate_config(*scored["options"], "shard=0/19")), capsys
    )
    assert "shard=0/19: there are 18 windows to score, fewer than the 19 shards" in line
    assert line.endswith("score them in shard=i/18 at most")

    options = [*scored["options"], f"paths.output_dir={scored['out'] / 'evaluation'}"]
    existing = scored["out"] / "evaluation-shards" / "shard-0-of-4"
    line = fails_with_one_line(lambda: evaluate(evaluate_config(*options, "shard=0/4")), capsys)
    assert f"{existing} exists; pass overwrite=true to replace it, or shards_dir=" in line
    line = fails_with_one_line(lambda: evaluate(evaluate_config(*options, "merge=true")), capsys)
    assert f"{scored['out'] / 'evaluation'} exists; pass overwrite=true" in line


@pytest.mark.parametrize("shard", ["3/2", "a/b", "0/0", "1", "-1/2", "1/2/3"])
def test_a_bad_shard_is_one_line(shard, capsys):
    line = fails_with_one_line(lambda: check_shard_options(shard, False), capsys)
    assert line == (
        "nowcast: error: shard must be i/n with 0 <= i < n, e.g. shard=0/4 for the first of "
        f"4 shards. Received: shard={shard!r}"
    )


def test_shard_and_merge_together_are_one_line(capsys):
    line = fails_with_one_line(lambda: check_shard_options("0/2", True), capsys)
    assert "shard= and merge=true are two steps" in line


def test_a_bad_shard_stops_the_command_before_tensorflow_loads(tmp_path):
    done = subprocess.run(
        [str(BIN / "nowcast-evaluate"), "run=no_such_run", "shard=3/2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "nowcast: error: shard must be i/n with 0 <= i < n, e.g. shard=0/4 for the first of "
        "4 shards. Received: shard='3/2'"
    ]
    assert list(tmp_path.iterdir()) == []


def test_accumulator_totals_survive_a_json_round_trip():
    accumulator = VerificationAccumulator(
        n_lead_times=2, thresholds=[1.0, 5.0], fss_threshold=1.0, fss_scales=[1, 3]
    )
    rng = np.random.default_rng(0)
    fields = rng.gamma(0.5, 4.0, (2, 3, 2, 8, 8)).astype(np.float32)
    fields[1, :, 0, :2] = np.nan
    accumulator.update(forecast=fields[0], observation=fields[1], blocks=[4, 9, 4])
    copy = VerificationAccumulator.from_record(json.loads(json.dumps(accumulator.to_record())))
    for name in ("contingency", "errors", "fss"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(accumulator, name))
    assert sorted(copy.block_contingency) == [4, 9]
    np.testing.assert_array_equal(copy.block_contingency[9], accumulator.block_contingency[9])
    copy.merge(accumulator)  # the same settings
    np.testing.assert_array_equal(copy.contingency, 2 * accumulator.contingency)

    vil = VerificationAccumulator(
        n_lead_times=2,
        thresholds=[16.0],
        fss_threshold=16.0,
        fss_scales=[1],
        balanced_thresholds=None,
    )
    vil.update(forecast=fields[0], observation=fields[1])
    record = json.loads(json.dumps(vil.to_record()).replace("NaN", "null"))
    assert np.isnan(VerificationAccumulator.from_record(record).errors[:, 3:]).all()
    record["fss"] = record["fss"][:1]
    with pytest.raises(ValueError, match=r"fss of shape \(2, 1, 3\) .* shape=\(1, 1, 3\)"):
        VerificationAccumulator.from_record(record)


def with_hydra_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("evaluate", list(overrides), return_hydra_config=True)


def test_multirun_files_go_beside_the_shards():
    """`-m` puts Hydra's multirun.yaml (and SLURM's logs) in the shards' folder, or under
    logs/evaluate/ when run= itself is swept; the jobs make no folders of their own."""
    cfg = with_hydra_config("run=/runs/a")
    assert cfg.shards_dir == "/runs/a/evaluation-shards"
    assert cfg.hydra.sweep.dir == cfg.shards_dir
    assert with_hydra_config().hydra.sweep.dir.startswith("logs/evaluate/multirun/")


def test_shards_on_slurm_log_beside_the_shards():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = with_hydra_config("run=/runs/a", "hydra/launcher=slurm")
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.submitit_folder == "/runs/a/evaluation-shards/.submitit/%j"


def test_joblib_shards_then_merge_through_the_command(scored, tmp_path):
    """`-m ... shard=0/2,1/2 hydra/launcher=joblib`, then `merge=true`: the same metrics.json
    as one process, and nothing written where the commands run."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    options = [*scored["options"], f"paths.output_dir={tmp_path / 'evaluation'}", "progress=false"]

    def command(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "nowcast-evaluate"), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    shards = command("-m", *options, "shard=0/2,1/2", "hydra/launcher=joblib")
    assert "Shard 1/2: 9 of the 18 windows scored" in shards.stdout
    assert "the same command with merge=true in place of shard=0/2" in shards.stdout
    merged = command(*options, "merge=true")
    assert f"Evaluation written to {tmp_path / 'evaluation'}" in merged.stdout
    assert f"Merged the 2 shards in {tmp_path / 'evaluation-shards'}" in merged.stdout
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "evaluation-shards").iterdir()) == [
        "multirun.yaml",
        "shard-0-of-2",
        "shard-1-of-2",
    ]
    one = json.loads((scored["single"].output_dir / "metrics.json").read_text())
    two = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert two["bootstrap"] == one["bootstrap"]
    for method, expected in one["methods"].items():
        assert two["methods"][method]["contingency"] == expected["contingency"]
