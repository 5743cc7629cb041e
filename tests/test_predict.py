"""`nowcast-predict`: from the newest radar files to a forecast file, and what it refuses.

The run is trained on a store converted from ODIM_H5 files with `downsample=2`, as a user
converts an archive; the newest ODIM files of the same product then go to `predict` as they
come from the radar network, on the source grid, stamped a few seconds after the minute.
"""

import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from data.radar_files import write_knmi, write_odim, write_sevir
from expect import fails_with_one_line
from hydra import compose, initialize_config_dir
from matplotlib import rcParams
from omegaconf import OmegaConf
from PIL import Image

from nowcast.config import ConvertCommandConfig, config_dir, register_configs
from nowcast.data.convert import convert
from nowcast.data.sources import SourceError
from nowcast.data.store import REFLECTIVITY, encode, open_store
from nowcast.forecast import detect_format, predict
from nowcast.units import dbz_to_rain

N_IN = N_OUT = 3  # debug=fast
SCAN_DELAY_S = 7  # radar products are stamped a few seconds after the nominal time


def write_odim_files(folder: Path, frames_dbz: np.ndarray, times: np.ndarray) -> list[Path]:
    """One ODIM_H5 composite per frame, each pixel of the (T, H, W) frames as 2x2 pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = encode(np.repeat(np.repeat(frames_dbz, 2, axis=1), 2, axis=2), REFLECTIVITY)
    paths = []
    for frame, time in zip(raw, times, strict=True):
        when = datetime.fromtimestamp(int(time) + SCAN_DELAY_S, tz=timezone.utc)
        paths.append(write_odim(folder / f"comp_{when:%Y%m%d%H%M}.h5", frame, when))
    return paths


@pytest.fixture(scope="module")
def odim(tiny_store, tmp_path_factory):
    """The tiny store's frames as 64x64 ODIM files, converted back with downsample=2."""
    root = tmp_path_factory.mktemp("odim")
    with open_store(tiny_store) as store:
        frames, times = store.read(0, len(store)), store.times
    files = write_odim_files(root / "archive", frames, times)
    cfg = OmegaConf.structured(
        ConvertCommandConfig(
            format="odim", input=str(root / "archive"), output=str(root / "store.h5"), downsample=2
        )
    )
    return {"files": files, "store": convert(cfg).path, "times": times}


@pytest.fixture
def odim_run(odim, fast_config, tmp_path_factory, trained_runs) -> Path:
    """A `debug=fast` run on the converted ODIM store, trained once for this module."""
    if "run" not in trained_runs:
        output_dir = tmp_path_factory.mktemp("odim_run")
        cfg = fast_config(
            f"paths.output_dir={output_dir}", f"data.path={odim['store']}", "trainer.verbose=0"
        )
        from nowcast.training import train

        trained_runs["run"] = train(cfg).run_dir
    return trained_runs["run"]


@pytest.fixture
def newest_files(odim, tmp_path) -> Path:
    """A folder of the four newest ODIM files, as a radar feed leaves them."""
    folder = tmp_path / "feed"
    folder.mkdir()
    for path in odim["files"][-4:]:
        shutil.copy(path, folder)
    return folder


def predict_config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("predict", overrides=list(overrides))


def test_forecast_from_radar_files_on_the_source_grid(odim, odim_run, newest_files, tmp_path):
    output = tmp_path / "out" / "forecast.h5"
    result = predict(
        predict_config(f"run={odim_run}", f"input={newest_files}", f"output={output}")
    )
    assert result.path == output and result.pictures == []
    assert sorted(p.name for p in output.parent.iterdir()) == ["forecast.h5"]

    issue_time = int(odim["times"][-1])  # snapped back to the minute
    with h5py.File(output) as f, open_store(odim["store"]) as store:
        forecast = f["forecast"][...]
        assert forecast.shape == (N_OUT, 32, 32) and forecast.dtype == np.float32
        assert f.attrs["units"] == f["forecast"].attrs["units"] == "mm/h"
        assert f.attrs["quantity"] == "RATE"
        assert f.attrs["issue_time"] == "2024-06-01T23:55:00Z"
        np.testing.assert_array_equal(f["valid_times"][...], issue_time + 300 * np.arange(1, 4))
        np.testing.assert_array_equal(f["lead_times"][...], [5.0, 10.0, 15.0])
        np.testing.assert_array_equal(f["input_times"][...], odim["times"][-N_IN:])
        # The grid of the frames the model saw: the training store's, which places the
        # downsampled grid on the ODIM source grid.
        grid = {key: f["grid"].attrs[key] for key in f["grid"].attrs}
        assert grid["downsample"] == 2 and grid["source_xsize"] == 64
        assert {key: store.grid[key] for key in grid} == pytest.approx(grid)
        # Outside radar coverage there is no forecast; inside, rain rates of the model's range.
        coverage = ~np.isnan(store.read(len(store) - 1, len(store))[0])
    np.testing.assert_array_equal(~np.isnan(forecast), np.broadcast_to(coverage, forecast.shape))
    assert np.all(forecast[:, coverage] >= 0)
    assert np.all(forecast[:, coverage] <= dbz_to_rain(70.0) * (1 + 1e-6))

    # The same frames read from the converted store give the same forecast.
    from_store = predict(
        predict_config(
            f"run={odim_run}", f"input={odim['store']}", f"output={tmp_path / 'store.h5'}"
        )
    )
    assert from_store.issue_time == issue_time
    np.testing.assert_allclose(from_store.forecast, forecast, rtol=1e-5, atol=1e-6)


def test_a_gap_among_the_newest_files_writes_nothing(odim_run, newest_files, tmp_path, capsys):
    files = sorted(newest_files.iterdir())
    files[-2].unlink()
    output = tmp_path / "out" / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={newest_files}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert "are not consecutive" in line
    assert f"{files[-3]} (2024-06-01T23:45:00Z) is followed by {files[-1]}" in line
    assert not output.parent.exists()


def test_files_of_another_grid_write_nothing(odim, odim_run, tmp_path, capsys):
    with open_store(odim["store"]) as store:
        frames, times = store.read(len(store) - 3, len(store)), store.times[-3:]
    feed = tmp_path / "feed"
    write_odim_files(feed, frames[:, :24, :24], times)  # 48x48 pixels of the same product
    output = tmp_path / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={feed}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert "is not on the model's grid" in line and str(odim["store"]) in line
    assert "ysize=48 (the model's: 32); xsize=48 (the model's: 32)" in line
    assert not output.exists() and sorted(tmp_path.iterdir()) == [feed]


def test_frames_off_the_time_step_write_nothing(odim, odim_run, tmp_path, capsys):
    with open_store(odim["store"]) as store:
        frames, times = store.read(len(store) - 3, len(store)), store.times[-3:].copy()
    times[-1] += 120 - SCAN_DELAY_S  # 2 minutes late: no longer a frame of the 5-minute steps
    newest = write_odim_files(tmp_path / "feed", frames, times)[-1]
    output = tmp_path / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={tmp_path / 'feed'}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert f"{newest} is stamped 2024-06-01T23:57:00Z, off the 5-min steps" in line
    assert not output.exists()


def test_input_formats_are_recognised(tiny_store, tmp_path):
    when = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
    pixels = np.zeros((8, 8), np.uint8)
    assert detect_format(write_odim(tmp_path / "odim.h5", pixels, when)) == "odim"
    assert detect_format(write_knmi(tmp_path / "knmi.h5", pixels, when)) == "knmi"
    vil = np.zeros((1, 8, 8, 49), np.uint8)
    sevir = write_sevir(tmp_path / "sevir", vil, ["S1"], ["2019-06-01 12:00:00"])
    assert detect_format(sevir) == "sevir"
    assert detect_format(tiny_store) == "store"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = pixels
    with pytest.raises(SourceError, match="pass format=odim|knmi|sevir|store"):
        detect_format(tmp_path / "other.h5")


def test_bad_requests_are_one_line_and_write_nothing(
    odim_run, newest_files, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "forecast.h5"
    base = [f"run={odim_run}", f"input={newest_files}", f"output={output}"]
    monkeypatch.setitem(rcParams, "animation.ffmpeg_path", str(tmp_path / "no_ffmpeg"))
    line = fails_with_one_line(lambda: predict(predict_config(*base, "plot=mp4")), capsys)
    assert "need ffmpeg, which was not found" in line and "format=gif" in line
    line = fails_with_one_line(lambda: predict(predict_config(*base, "plot=avi")), capsys)
    assert "unknown plot, allowed: gif, mp4, png" in line

    too_few = tmp_path / "two"
    too_few.mkdir()
    for path in sorted(newest_files.iterdir())[-2:]:
        shutil.copy(path, too_few)
    cfg = predict_config(f"run={odim_run}", f"input={too_few}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert "holds 2 frame(s); the model needs the 3 newest frames, 5 min apart" in line

    moved_store = predict_config(*base, f"reference_store={tmp_path / 'gone.h5'}")
    line = fails_with_one_line(lambda: predict(moved_store), capsys)
    assert "the store the run was trained on is missing" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feed", "two"]

    output.write_text("a forecast a forecaster is reading")
    line = fails_with_one_line(lambda: predict(predict_config(*base)), capsys)
    assert f"{output} exists; pass overwrite=true" in line
    assert output.read_text() == "a forecast a forecaster is reading"


def test_console_script_writes_the_forecast_and_its_animation(odim_run, newest_files, tmp_path):
    output = tmp_path / "forecast.h5"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "nowcast-predict"),
            f"run={odim_run}",
            f"input={newest_files}",
            f"output={output}",
            "plot=gif",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nowcast issued 2024-06-01T23:55:00Z from 3 frames" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "feed",
        "forecast.gif",
        "forecast.h5",
        "forecast.png",
    ]
    with Image.open(tmp_path / "forecast.gif") as gif:
        assert gif.n_frames == N_IN + N_OUT
        width, height = gif.size
    with Image.open(tmp_path / "forecast.png") as still:
        assert still.size[0] > width  # the still shows three frames per row, the animation one
    assert (width, height) == (466, 450)  # one 3.2-inch panel and the colour bar, 100 dpi
    with h5py.File(output) as f:
        assert f["forecast"].shape == (N_OUT, 32, 32)
