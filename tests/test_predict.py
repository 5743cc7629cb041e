"""`nowcast-predict`: from the newest radar files to a forecast file, and what it refuses.

The run is trained on a store converted from ODIM_H5 files with `downsample=2`, as a user
converts an archive; the newest ODIM files of the same product then go to `predict` as they
come from the radar network, on the source grid, stamped a few seconds after the minute.
Files of another product with the store's 4-km pixels and 5-minute step are forecast on their
own grid; other pixel sizes and time steps are refused.
"""

import shutil
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
from nowcast.prediction import detect_format, predict
from nowcast.units import dbz_to_rain

N_IN = N_OUT = 3  # debug=fast
SCAN_DELAY_S = 7  # radar products are stamped a few seconds after the nominal time
STRIDES = 4  # the run's downsample stride: the model takes frame sides that 4 divides
OTHER_PROJDEF = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +units=m"


def write_odim_files(
    folder: Path,
    frames_dbz: np.ndarray,
    times: np.ndarray,
    *,
    repeat: int = 2,
    where: Mapping[str, Any] | None = None,
) -> list[Path]:
    """One ODIM_H5 composite per frame, each pixel of the (T, H, W) frames as `repeat` x
    `repeat` pixels; `where` replaces attributes of write_odim's grid (2-km pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = encode(np.repeat(np.repeat(frames_dbz, repeat, axis=1), repeat, axis=2), REFLECTIVITY)
    paths = []
    for frame, time in zip(raw, times, strict=True):
        when = datetime.fromtimestamp(int(time) + SCAN_DELAY_S, tz=timezone.utc)
        paths.append(write_odim(folder / f"comp_{when:%Y%m%d%H%M}.h5", frame, when))
        with h5py.File(paths[-1], "r+") as f:
            f["where"].attrs.update(where or {})
    return paths


def write_other_grid(odim: dict, folder: Path) -> np.ndarray:
    """The store's three newest frames inside 47 x 42 ODIM composites of another projection
    with 4-km pixels (the model's, to 0.5 %); returns their (3, 47, 42) dBZ, NaN = no data."""
    with open_store(odim["store"]) as store:
        frames, times = store.read(len(store) - 3, len(store)), store.times[-3:]
    frames_dbz = np.full((3, 47, 42), np.nan, np.float32)
    frames_dbz[:, 5:37, 3:35] = frames  # placed off-centre, so that a shifted crop shows
    where = {"projdef": np.bytes_(OTHER_PROJDEF), "xscale": 4000.0, "yscale": 3980.0}
    write_odim_files(folder, frames_dbz, times, repeat=1, where=where)
    return frames_dbz


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
    """A `debug=fast` run on the converted ODIM store, trained once for this module, with a
    stride of 4: a crop to its multiples differs from one to the even sides advection needs."""
    if "run" not in trained_runs:
        output_dir = tmp_path_factory.mktemp("odim_run")
        cfg = fast_config(
            f"paths.output_dir={output_dir}",
            f"data.path={odim['store']}",
            "trainer.verbose=0",
            f"model.stages.0.downsample_stride={STRIDES}",
            f"model.stages.0.downsample_kernel={STRIDES}",
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
    assert result.grid_note is None and "own grid" not in result.summary

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
    assert from_store.issue_time == issue_time and from_store.grid_note is None
    np.testing.assert_allclose(from_store.forecast, forecast, rtol=1e-5, atol=1e-6)


def test_clutter_is_masked_as_convert_masks_it(odim_run, newest_files, tmp_path):
    # Sea clutter of 70 dBZ (about 1,200 mm/h) in the newest file, inside radar coverage.
    newest = sorted(newest_files.iterdir())[-1]
    with h5py.File(newest, "r+") as f:
        data = f["dataset1/data1/data"]
        raw = data[...]
        raw[30:34, 30:34] = (70.0 + 32.0) / 0.5
        data[...] = raw
    kept, masked = (
        predict(
            predict_config(
                f"run={odim_run}", f"input={newest_files}", f"output={tmp_path / name}", *extra
            )
        ).forecast
        for name, extra in (("kept.h5", ()), ("masked.h5", ("max_rain_mmh=150",)))
    )
    clutter = np.zeros(kept.shape[1:], bool)
    clutter[15:17, 15:17] = True  # the model's grid is the ODIM grid downsampled by 2
    assert np.isfinite(kept[:, clutter]).all()
    assert np.isnan(masked[:, clutter]).all()
    np.testing.assert_array_equal(np.isnan(masked[:, ~clutter]), np.isnan(kept[:, ~clutter]))


def test_forecast_on_another_grid_of_the_models_pixel_size(odim, odim_run, tmp_path):
    frames_dbz = write_other_grid(odim, tmp_path / "feed")
    output = tmp_path / "forecast.h5"
    result = predict(
        predict_config(f"run={odim_run}", f"input={tmp_path / 'feed'}", f"output={output}")
    )
    # The centre of 47 x 42 pixels whose sides the stride divides: 44 x 40 from (1, 1).
    assert result.forecast.shape == (N_OUT, 44, 40)
    coverage = ~np.isnan(frames_dbz[-1, 1:45, 1:41])
    assert coverage.any() and not coverage.all()
    np.testing.assert_array_equal(
        ~np.isnan(result.forecast), np.broadcast_to(coverage, result.forecast.shape)
    )
    assert result.summary.endswith(
        "\nForecast on the input's own grid, not the training store's: 47 x 42 pixels of "
        "4000 x 3980 m, cropped to its centre 44 x 40 from row 1, column 1, as the model takes "
        "sides that are multiples of 4 (/grid in the forecast file records the crop)."
    )
    with h5py.File(output) as f:
        grid = dict(f["grid"].attrs)
        assert f["forecast"].shape == (N_OUT, 44, 40)
    assert grid["projdef"] == OTHER_PROJDEF
    assert {key: grid[key] for key in ("ysize", "xsize", "xscale", "yscale")} == {
        "ysize": 44,
        "xsize": 40,
        "xscale": 4000.0,
        "yscale": 3980.0,
    }
    crop = ("crop_top", "crop_left", "downsample", "source_ysize", "source_xsize")
    assert [grid[key] for key in crop] == [1, 1, 1, 47, 42]


def test_a_gap_among_the_newest_files_writes_nothing(odim_run, newest_files, tmp_path, capsys):
    files = sorted(newest_files.iterdir())
    files[-2].unlink()
    output = tmp_path / "out" / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={newest_files}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert "are not consecutive" in line
    assert f"{files[-3]} (2024-06-01T23:45:00Z) is followed by {files[-1]}" in line
    assert not output.parent.exists()


@pytest.mark.parametrize(
    ("pixel_m", "fix"),
    [
        (  # write_odim's 2-km pixels: half the model's
            2000.0,
            "make a store of 4000 x 4000 m pixels from these files with nowcast-data convert "
            "downsample=2 and pass it as input=, or use a run trained on a store of "
            "2000 x 2000 m pixels",
        ),
        (
            8000.0,
            "use a run trained on a store of 8000 x 8000 m pixels (nowcast-data convert "
            "downsample=2 makes one of 4000-m files)",
        ),
        (4100.0, "use a run trained on a store of 4100 x 4100 m pixels"),  # 2.5 % larger
    ],
)
def test_files_of_another_pixel_size_write_nothing(odim, odim_run, tmp_path, capsys, pixel_m, fix):
    with open_store(odim["store"]) as store:
        frames, times = store.read(len(store) - 3, len(store)), store.times[-3:]
    feed = tmp_path / "feed"
    where = {"xscale": pixel_m, "yscale": pixel_m}
    newest = write_odim_files(feed, frames[:, :24, :24], times, where=where)[-1]  # 48 x 48
    output = tmp_path / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={feed}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert line.endswith(
        f"{newest} has pixels of another size than the model's (those of {odim['store']}): "
        f"yscale={pixel_m} (the model's: 4000.0); xscale={pixel_m} (the model's: 4000.0); {fix}"
    )
    assert not output.exists() and sorted(tmp_path.iterdir()) == [feed]


def test_frames_of_different_grids_write_nothing(odim, odim_run, tmp_path, capsys):
    with open_store(odim["store"]) as store:
        frames, times = store.read(len(store) - 3, len(store)), store.times[-3:]
    where = {"xscale": 4000.0, "yscale": 4000.0}
    older = write_odim_files(tmp_path / "feed", frames[:2, :20, :20], times[:2], where=where)
    newest = write_odim_files(tmp_path / "feed", frames[2:, :24, :24], times[2:], where=where)
    cfg = predict_config(
        f"run={odim_run}", f"input={tmp_path / 'feed'}", f"output={tmp_path / 'forecast.h5'}"
    )
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert line.endswith(
        f"{older[0]} is on another grid than the newest frame, {newest[0]}: ysize=40 (the "
        "newest's: 48); xsize=40 (the newest's: 48); pass frames of one grid"
    )


@pytest.mark.parametrize("one_size", ["model.peephole=true", "model.recurrent=keras"])
def test_a_model_of_one_frame_size_takes_only_its_grid(odim, odim_run, tmp_path, capsys, one_size):
    run = tmp_path / "run"
    shutil.copytree(odim_run, run)
    run_cfg = OmegaConf.load(run / "config.yaml")
    run_cfg.merge_with_dotlist([one_size])
    OmegaConf.save(run_cfg, run / "config.yaml")
    write_other_grid(odim, tmp_path / "feed")  # the model's pixel size, 47 x 42 of them
    output = tmp_path / "forecast.h5"
    cfg = predict_config(f"run={run}", f"input={tmp_path / 'feed'}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert f"is not on the model's grid (that of {odim['store']}): " in line
    assert "ysize=47 (the model's: 32); xsize=42 (the model's: 32); projdef=" in line
    assert line.endswith("; pass radar files or a store on that grid")
    assert not output.exists()


def test_frames_of_another_time_step_write_nothing(odim, odim_run, tmp_path, capsys):
    with open_store(odim["store"]) as store:
        every_other = np.arange(len(store) - 5, len(store), 2)  # a 10-minute archive
        frames, times = store.read(len(store) - 5, len(store))[::2], store.times[every_other]
    write_odim_files(tmp_path / "feed", frames, times)
    output = tmp_path / "forecast.h5"
    cfg = predict_config(f"run={odim_run}", f"input={tmp_path / 'feed'}", f"output={output}")
    line = fails_with_one_line(lambda: predict(cfg), capsys)
    assert line.endswith(
        f"the newest 3 frames of {tmp_path / 'feed'} are 10 min apart, but the model forecasts "
        f"in steps of 5 min, the time step of its training store ({odim['store']}); pass "
        "frames 5 min apart, or use a run trained on a store of 10-min frames"
    )
    assert not output.exists()


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
    line = fails_with_one_line(lambda: predict(predict_config(*base, "max_rain_mmh=0")), capsys)
    assert "max_rain_mmh must be > 0" in line
    line = fails_with_one_line(lambda: predict(predict_config(*base, "min_quality=2")), capsys)
    assert "min_quality is a QIND quality index from 0 to 1" in line

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
