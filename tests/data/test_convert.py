"""`convert`: every format into a store; ordering, duplicates, crop and downsampling; bad input."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from radar_files import ODIM_PROJDEF, write_knmi, write_odim, write_sevir

from nowcast.config import ConvertCommandConfig, DataConfig
from nowcast.data.convert import convert
from nowcast.data.frames import regrid
from nowcast.data.pipeline import select_windows
from nowcast.data.sevir import vil_kg_m2_to_level, vil_level_to_kg_m2
from nowcast.data.store import Store
from nowcast.units import dbz_to_rain, rain_to_dbz

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
ROWS, COLS = 12, 10


def _config(**options):
    crop = options.pop("crop", {})
    cfg = OmegaConf.structured(ConvertCommandConfig(**options))
    for key, value in crop.items():
        cfg.crop[key] = value
    return cfg


def _raw(seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).integers(0, 160, size=(ROWS, COLS)).astype(np.uint8)
    raw[:2, :] = 255  # outside coverage
    return raw


def _odim_folder(folder: Path, minutes: list[int], seconds: dict[int, int] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, minute in enumerate(minutes):
        when = T0 + timedelta(minutes=minute, seconds=(seconds or {}).get(k, 0))
        # File names in reverse time order: the converter sorts by time, not by name.
        write_odim(folder / f"comp_{len(minutes) - k:03d}.h5", _raw(k), when)
    return folder


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_odim_folder_to_store(tmp_path):
    minutes = [0, 5, 10, 15, 25, 30, 35]  # 20 is missing: a gap
    source = _odim_folder(tmp_path / "odim", minutes, seconds={2: -3})  # 12:09:57 -> 12:10
    result = convert(_config(format="odim", input=str(source), output=str(tmp_path / "s.h5")))
    assert (result.frames, result.height, result.width) == (7, ROWS, COLS)
    assert result.minutes_per_frame == 5.0 and result.duplicates == 0
    store = Store(result.path)
    np.testing.assert_array_equal(store.times, [int(T0.timestamp()) + 60 * m for m in minutes])
    assert store.events is None and store.zr == (200.0, 1.6) and store.minutes_per_frame == 5.0
    assert store.grid["projdef"] == ODIM_PROJDEF and store.grid["LL_lat"] == 31.746
    frames = store.read(0, 7)
    for k in range(7):
        raw = _raw(k)
        echo = (raw != 0) & (raw != 255)
        np.testing.assert_array_equal(frames[k][echo], raw[echo] * 0.5 - 32.0)
        assert np.all(np.isnan(frames[k][raw == 255]))
        assert np.all(frames[k][raw == 0] == store.undetect_value)


def _knmi_pixels(seed: int) -> np.ndarray:
    """RAD_NL25_RAP_5min pixels: 0.01 mm in 5 minutes (none dry: see test_knmi), 65535 missing."""
    pixels = np.random.default_rng(seed).integers(1, 300, size=(ROWS, COLS)).astype(np.uint16)
    pixels[:2, :] = 65535  # outside the radars' range
    return pixels


def _knmi_dbz(pixels: np.ndarray) -> np.ndarray:
    return np.where(pixels == 65535, np.nan, rain_to_dbz(pixels * 0.01 * 12))


def _knmi_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        end = T0 + timedelta(minutes=5 * k)
        write_knmi(folder / f"RAD_NL25_RAP_5min_{k:03d}.h5", _knmi_pixels(k), end)
    return folder


def test_crop_and_block_average_in_rain_rate_then_crop_the_store_again(tmp_path):
    source = _knmi_folder(tmp_path / "knmi", 4)
    first = convert(
        _config(
            format="knmi",
            input=str(source / "RAD_NL25_*.h5"),
            output=str(tmp_path / "k.h5"),
            crop={"height": 8, "width": 8},
            downsample=2,
        )
    )
    store = Store(first.path)
    assert store.shape == (4, 4, 4)
    grid = store.grid
    # Centred: (12 - 8) / 2 rows and (10 - 8) / 2 columns off the top-left corner.
    assert (grid["crop_top"], grid["crop_left"], grid["downsample"]) == (2, 1, 2)
    assert (grid["xsize"], grid["ysize"], grid["source_xsize"], grid["source_ysize"]) == (
        4,
        4,
        COLS,
        ROWS,
    )
    assert grid["xscale"] == 2000.0 and "source_geo_row_offset" in grid

    window = _knmi_dbz(_knmi_pixels(1))[2:10, 1:9]
    for row in range(4):
        for col in range(4):
            block = window[2 * row : 2 * row + 2, 2 * col : 2 * col + 2]
            got = store.read(1, 2)[0, row, col]
            if np.isnan(block).sum() > 2:
                assert np.isnan(got)
            else:
                expected = rain_to_dbz(np.nanmean(dbz_to_rain(block)))
                assert abs(got - expected) <= 0.25 + 1e-6  # the store's 0.5 dBZ steps

    again = convert(
        _config(
            format="store",
            input=str(first.path),
            output=str(tmp_path / "k2.h5"),
            crop={"top": 1, "left": 2, "height": 2, "width": 2},
        )
    )
    cropped = Store(again.path)
    assert (cropped.grid["crop_top"], cropped.grid["crop_left"]) == (2 + 2, 1 + 4)
    assert cropped.grid["downsample"] == 2 and cropped.grid["source_xsize"] == COLS
    np.testing.assert_array_equal(cropped.read(0, 4), store.read(0, 4)[:, 1:3, 2:4])
    np.testing.assert_array_equal(cropped.times, store.times)


def test_regrid_averages_valid_pixels_in_the_linear_unit():
    frame = np.array([[0.0, 30.0, np.nan, np.nan], [10.0, 40.0, np.nan, 20.0]], np.float32)
    kwargs = {"top": 0, "left": 0, "height": 2, "width": 4, "factor": 2}
    dbz = regrid(frame, to_linear=dbz_to_rain, from_linear=rain_to_dbz, **kwargs)
    assert dbz.shape == (1, 2) and np.isnan(dbz[0, 1])  # 3 of 4 pixels no data
    assert dbz[0, 0] == pytest.approx(rain_to_dbz(dbz_to_rain(frame[:, :2]).mean()))
    vil = regrid(frame, to_linear=vil_level_to_kg_m2, from_linear=vil_kg_m2_to_level, **kwargs)
    assert vil[0, 0] == pytest.approx(vil_kg_m2_to_level(vil_level_to_kg_m2(frame[:, :2]).mean()))


def test_sevir_events_become_store_events(tmp_path):
    vil = np.random.default_rng(0).integers(0, 200, size=(4, 8, 8, 49)).astype(np.uint8)
    # Listed out of order; S10 and S30 overlap in time (storms in different places).
    times = [
        "2019-06-01 02:00:00",
        "2019-06-02 02:00:00",
        "2019-06-01 03:00:00",
        "2019-06-03 02:00:00",
    ]
    path = write_sevir(tmp_path / "sevir", vil, ["S10", "S20", "S30", "S40"], times)
    result = convert(
        _config(format="sevir", input=str(path), output=str(tmp_path / "v.h5"), downsample=2)
    )
    store = Store(result.path)
    assert store.shape == (4 * 49, 4, 4) and store.quantity == "VIL" and store.zr is None
    np.testing.assert_array_equal(store.events, np.repeat([0, 1, 2, 3], 49))
    assert np.all(np.diff(store.times[::49]) > 0)  # events in the order they start: S10, S30, ...
    assert store.times[49] < store.times[48]  # S30 starts while S10 is going on
    expected = vil_kg_m2_to_level(vil_level_to_kg_m2(vil[2, :2, :2, 5]).mean())  # S30, frame 5
    assert store.read(54, 55)[0, 0, 0] == pytest.approx(expected, abs=0.5)

    data = OmegaConf.structured(DataConfig(name="sevir", path=str(result.path)))
    data.n_in, data.n_out, data.stride, data.batch_size = 13, 12, 12, 1
    data.split.block_hours = 24
    data.split.val_fraction = data.split.test_fraction = 0.25
    selection = select_windows(store, data)
    events = {
        name: sorted({int(store.events[s]) for s in st}) for name, st in selection.starts.items()
    }
    # Whole events per split, by the 24-hour block they start in: train, val, test.
    assert events == {"train": [0, 1], "val": [2], "test": [3]}
    windows = np.concatenate(list(selection.starts.values()))
    assert sorted(windows.tolist()) == [e * 49 + k for e in range(4) for k in (0, 12, 24)]


def test_duplicate_times_keep_the_first_file_and_warn(tmp_path, caplog):
    source = _knmi_folder(tmp_path / "knmi", 3)
    write_knmi(source / "RAD_NL25_RAP_5min_zzz.h5", _knmi_pixels(9), T0 + timedelta(minutes=5))
    with caplog.at_level(logging.WARNING):
        result = convert(_config(format="knmi", input=str(source), output=str(tmp_path / "s.h5")))
    assert result.frames == 3 and result.duplicates == 1
    assert "duplicate time 2024-06-01T12:05:00Z: kept" in caplog.text
    assert "RAD_NL25_RAP_5min_zzz.h5" in caplog.text.split("skipped")[1]
    kept = Store(result.path).read(1, 2)[0]
    expected = _knmi_dbz(_knmi_pixels(1))  # not _knmi_pixels(9)
    np.testing.assert_allclose(kept, expected, atol=0.25 + 1e-6)  # the store's 0.5 dBZ steps


def test_existing_output_is_not_overwritten_without_overwrite(tmp_path):
    source = _knmi_folder(tmp_path / "knmi", 3)
    out = tmp_path / "s.h5"
    out.write_text("my notes")
    cfg = _config(format="knmi", input=str(source), output=str(out))
    with pytest.raises(FileExistsError, match="s.h5 exists; pass overwrite=true"):
        convert(cfg)
    assert out.read_text() == "my notes"
    cfg.overwrite = True
    assert convert(cfg).frames == 3


def _clutter_folder(folder: Path, **odim_options) -> Path:
    """Three ODIM frames of 40 dBZ rain with one 90 dBZ clutter pixel at (0, 0)."""
    folder.mkdir()
    raw = np.full((4, 4), (40.0 + 32.0) / 0.5, np.uint8)
    raw[0, 0] = (90.0 + 32.0) / 0.5  # 14,000 mm/h at Marshall-Palmer
    for k in range(3):
        write_odim(folder / f"comp_{k}.h5", raw, T0 + timedelta(minutes=5 * k), **odim_options)
    return folder


def test_max_rain_mmh_masks_clutter_before_block_averaging(tmp_path):
    source = _clutter_folder(tmp_path / "odim")
    frames = {}
    for cap in (None, 150.0):
        cfg = _config(
            format="odim", input=str(source), output=str(tmp_path / f"{cap}.h5"), downsample=2
        )
        cfg.max_rain_mmh = cap
        frames[cap] = Store(convert(cfg).path).read(0, 3)
    # Uncapped, the clutter pixel dominates its block's average rain rate.
    rain = dbz_to_rain(np.array([90.0, 40.0, 40.0, 40.0]))
    assert frames[None][0, 0, 0] == pytest.approx(rain_to_dbz(rain.mean()), abs=0.25)
    # Capped, it is no data, and its block is the average of the three others (40 dBZ).
    assert np.all(frames[150.0] == 40.0)


def test_min_quality_masks_odim_pixels_of_low_qind(tmp_path):
    quality = np.full((4, 4), 255, np.uint8)
    quality[0, 0] = 20  # the clutter pixel: QIND 0.08
    source = _clutter_folder(tmp_path / "odim", quality=quality)
    cfg = _config(format="odim", input=str(source), output=str(tmp_path / "s.h5"))
    cfg.min_quality = 0.5
    frames = Store(convert(cfg).path).read(0, 3)
    pixels = frames.reshape(3, -1)
    assert np.all(np.isnan(pixels[:, 0])) and np.all(pixels[:, 1:] == 40.0)
    cfg.min_quality, cfg.overwrite = 1.5, True
    with pytest.raises(ValueError, match=r"min_quality is a QIND quality index from 0 to 1"):
        convert(cfg)


def test_max_rain_mmh_is_refused_for_vil(tmp_path):
    vil = np.zeros((1, 8, 8, 49), np.uint8)
    path = write_sevir(tmp_path / "sevir", vil, ["S1"], ["2019-06-01 12:00:00"])
    cfg = _config(format="sevir", input=str(path), output=str(tmp_path / "v.h5"))
    cfg.max_rain_mmh = 150.0
    with pytest.raises(
        ValueError, match=r"max_rain_mmh caps rain rates, but these frames are SEV"
    ):
        convert(cfg)


def test_the_field_read_of_files_holding_several_is_logged_once(tmp_path, caplog):
    folder = tmp_path / "odim"
    folder.mkdir()
    for k in range(4):
        write_odim(
            folder / f"comp_{k}.h5",
            _raw(k),
            T0 + timedelta(minutes=5 * k),
            extra_data={"TH": _raw(k)},
        )
    with caplog.at_level(logging.INFO, logger="nowcast.data.convert"):
        convert(_config(format="odim", input=str(folder), output=str(tmp_path / "s.h5")))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
    assert said == [
        f"read /dataset1/data1 (DBZH), not /dataset1/data2 (TH) of {folder / 'comp_0.h5'} "
        "and 3 more file(s); pass quantity= to read another"
    ]


@pytest.mark.parametrize(
    "options, match",
    [
        (
            {"crop": {"height": 7}, "downsample": 2},
            r"not a multiple of downsample=2; set crop.height=6",
        ),
        ({"crop": {"height": 13}}, r"crop.height must be from 1 to the source's 12 pixels"),
        ({"crop": {"top": 6, "height": 8}}, r"crop.top \+ crop.height must stay inside"),
        ({"format": "nexrad"}, r"unknown format, allowed: odim, knmi, sevir, store"),
        ({"quantity": "VRADH"}, r"format=knmi reads quantity= ACRR, DBZH"),
        ({"min_quality": 0.5}, r"min_quality masks by the ODIM quality field \(QIND\), which "),
        ({"max_rain_mmh": 0.0}, r"max_rain_mmh must be > 0 \(or null\), Received: 0.0"),
    ],
)
def test_bad_options(tmp_path, options, match):
    source = _knmi_folder(tmp_path / "knmi", 2)
    args = {"format": "knmi", "input": str(source), "output": str(tmp_path / "s.h5")} | options
    with pytest.raises(ValueError, match=match):
        convert(_config(**args))
    assert not (tmp_path / "s.h5").exists()


# ----- bad input: one line naming the file, nothing written --------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _set_attr(path: Path, group: str, name: str, value) -> None:
    with h5py.File(path, "a") as f:
        f[group].attrs[name] = value


def _delete(path: Path, member: str) -> None:
    with h5py.File(path, "a") as f:
        del f[member]


BAD_INPUTS = {
    "missing-path": (
        shutil.rmtree,
        FileNotFoundError,
        r"input .*odim does not exist; check the path",
    ),
    "not-hdf5": (
        lambda folder: (folder / "comp_002.h5").write_text("date,time,dbz\n"),
        ValueError,
        r"comp_002.h5 is not an HDF5 file",
    ),
    "truncated": (
        lambda folder: _truncate(folder / "comp_002.h5"),
        ValueError,
        r"comp_002.h5 is truncated or corrupt",
    ),
    "missing-dataset": (
        lambda folder: _delete(folder / "comp_002.h5", "dataset1/data1/data"),
        ValueError,
        r"comp_002.h5 has no /datasetN/dataM/data dataset",
    ),
    "missing-attribute": (
        lambda folder: _delete(folder / "comp_002.h5", "dataset1/data1/what"),
        ValueError,
        r"comp_002.h5 has no quantity attribute",
    ),
    "other-grid": (
        lambda folder: write_odim(
            folder / "comp_009.h5", np.zeros((ROWS, COLS + 1), np.uint8), T0
        ),
        ValueError,
        r"comp_009.h5: grid of 12x11 pixels differs from the 12x10 of .*; convert files of one",
    ),
    "other-projection": (
        lambda folder: _set_attr(folder / "comp_002.h5", "where", "projdef", np.bytes_("+proj=x")),
        ValueError,
        r"comp_00\d.h5: grid projdef=.* differs from .* in .*comp_00\d.h5",
    ),
    "unknown-quantity": (
        lambda folder: _set_attr(
            folder / "comp_002.h5", "dataset1/data1/what", "quantity", np.bytes_("WRADH")
        ),
        ValueError,
        r"comp_002.h5: quantity 'WRADH' is not one nowcast reads",
    ),
    "unreadable-time": (
        lambda folder: _set_attr(folder / "comp_002.h5", "what", "time", np.bytes_("25:61")),
        ValueError,
        r"comp_002.h5: cannot read the time from date='20240601' time='25:61'",
    ),
    "all-no-data": (
        lambda folder: [
            write_odim(path, np.full((ROWS, COLS), 255, np.uint8), T0 + timedelta(minutes=5 * k))
            for k, path in enumerate(sorted(folder.iterdir()))
        ],
        ValueError,
        r"every one of the 3 frames from .*odim is no-data",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, case):
    folder = _odim_folder(tmp_path / "odim", [0, 5, 10])
    spoil, error, match = BAD_INPUTS[case]
    spoil(folder)
    out = tmp_path / "out"
    out.mkdir()
    cfg = _config(format="odim", input=str(folder), output=str(out / "s.h5"))
    with pytest.raises(error, match=match) as caught:
        convert(cfg)
    assert "\n" not in str(caught.value)
    assert _outputs(out) == []  # no store, no temporary file


def test_store_shorter_than_a_window_fails_when_training_starts(tmp_path):
    source = _odim_folder(tmp_path / "odim", [0, 5, 10, 20, 25, 30, 35])
    store = Store(
        convert(_config(format="odim", input=str(source), output=str(tmp_path / "s.h5"))).path
    )
    data = OmegaConf.structured(DataConfig(name="odim", path=str(store.path)))
    data.n_in, data.n_out = 3, 5
    with pytest.raises(ValueError, match=r"s.h5 has 7 frames, fewer than one window needs"):
        select_windows(store, data)
    data.n_in, data.n_out = 2, 3
    with pytest.raises(
        ValueError, match=r"s.h5 has no 5 consecutive frames 5 min apart \(the longest run is 4\)"
    ):
        select_windows(store, data)
