"""`nowcast-plot` (nowcast.plotting) on a tiny trained run."""

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from expect import fails_with_one_line
from hydra import compose, initialize_config_dir
from matplotlib import rcParams
from PIL import Image
from test_drawing import FOUR_PANELS_PX

from nowcast.config import config_dir, register_configs


def compose_command(name: str, *overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_plot_a_window_by_time_with_the_skill_of_the_evaluation(tiny_run, tmp_path, capsys):
    from nowcast.evaluation import evaluate
    from nowcast.plotting import plot_run

    plots, evaluation = tmp_path / "plots", tmp_path / "evaluation"
    evaluate(
        compose_command(
            "evaluate",
            f"run={tiny_run}",
            f"paths.output_dir={evaluation}",
            "baselines=[persistence]",
            "metrics.thresholds_mmh=[1.0,10.0]",  # two panels per skill plot: quicker to draw
            "batch_size=64",
            "progress=false",
        )
    )
    split = json.loads((tiny_run / "split.json").read_text())["splits"]["test"]
    start = datetime.fromisoformat(split["start_times"][12].replace("Z", "+00:00"))
    issued = start + timedelta(minutes=10)  # the newest of the 3 input frames
    window = [
        "plot",
        f"run={tiny_run}",
        f"paths.output_dir={plots}",
        f"evaluation={evaluation}",
        "baselines=[persistence]",
        "format=png",
        f"sample={issued:%Y-%m-%dT%H:%M}Z",
    ]
    cfg = compose_command(*window, "units=dBZ")
    result = plot_run(cfg)
    assert result.window == 12 and result.issue_time == issued.timestamp()
    name = f"forecast_{issued:%Y%m%dT%H%MZ}_dBZ.png"  # beside the mm/h picture, not in its place
    assert result.files == [plots / name]
    skill = [f"skill_{s}.png" for s in ("csi", "pod", "far", "hss", "ets", "bias")]
    assert [p.name for p in result.skill_files] == skill
    assert sorted(p.name for p in plots.iterdir()) == sorted([name, *skill])
    with Image.open(plots / name) as still:  # observed, model, persistence; t+0 and 3 leads
        assert still.size == (1496, 1180)

    line = fails_with_one_line(lambda: plot_run(cfg), capsys)
    assert f"{plots / name} exists; pass overwrite=true" in line
    in_rain_rate = plot_run(compose_command(*window))
    assert in_rain_rate.files == [plots / f"forecast_{issued:%Y%m%dT%H%MZ}.png"]
    assert (plots / name).is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sample=1000"], "sample=1000 is out of range: the test split has 43 windows (0 to 42)"),
        (["sample=2024-06-01T12:01"], "is not the issue time (newest input frame) of a test"),
        (["sample=noon"], "sample='noon' is neither a window index nor a UTC time"),
        (["units=VIL level"], "frames of DBZH are shown in mm/h or dBZ"),
        (["format=avi"], "unknown format, allowed: gif, mp4, png"),
        (["format=mp4"], "MP4 animations need ffmpeg"),
        (["checkpoint=last", "split=everything"], "unknown split, allowed: train, val, test"),
    ],
)
def test_bad_requests_are_one_line_and_draw_nothing(
    tiny_run, tmp_path, capsys, monkeypatch, overrides, message
):
    from nowcast.plotting import plot_run

    monkeypatch.setitem(rcParams, "animation.ffmpeg_path", str(tmp_path / "no_ffmpeg"))
    cfg = compose_command("plot", f"run={tiny_run}", f"paths.output_dir={tmp_path}", *overrides)
    assert message in fails_with_one_line(lambda: plot_run(cfg), capsys)
    assert list(tmp_path.iterdir()) == []


def test_console_script_draws_the_animation_and_the_still(tiny_run, tmp_path):
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "nowcast-plot"),
            f"run={tiny_run}",
            f"paths.output_dir={tmp_path / 'plots'}",
            f"evaluation={tmp_path / 'no_evaluation'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(the wettest; pass sample=<index or time> for another)" in done.stdout + done.stderr
    assert "No skill plots" in done.stdout
    files = sorted((tmp_path / "plots").iterdir())
    assert [p.suffix for p in files] == [".gif", ".png"] and files[0].stem == files[1].stem
    with Image.open(files[0]) as gif:
        # Observation, model, persistence and optical flow; 3 input and 3 lead-time frames.
        assert (gif.n_frames, gif.size) == (3 + 3, FOUR_PANELS_PX)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]
