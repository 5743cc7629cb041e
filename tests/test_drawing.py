"""Radar pictures (nowcast.drawing): colour scales, animations and stills."""

import re
import subprocess

import numpy as np
import pytest
from matplotlib import animation, rcParams
from matplotlib.colors import to_rgba
from PIL import Image

from nowcast.drawing import (
    NO_DATA_COLOUR,
    RADAR_SCALES,
    ForecastSequence,
    animate_forecast,
    lead_times_shown,
    plot_forecast_grid,
    radar_scale,
)

ISSUE_TIME = 1717243200  # 2024-06-01T12:00:00Z
METHODS = ("model", "persistence", "optical_flow")
# Figures at 100 dpi: 3.2-inch panels 0.12 inch apart, 0.15 inch left, 1.3 inches for the
# colour bar; 0.95 inch of titles above and 0.35 of caption below; rounded up to even pixels.
ONE_PANEL_PX = (466, 450)
FOUR_PANELS_PX = (1462, 450)


def sequence(n_in=2, n_out=3, *, observed=True, methods=METHODS, shape=(16, 16), unit="mm/h"):
    """Rain rates rising from 0 over the frame, no data in the top-left corner."""
    rng = np.random.default_rng(0)
    frames = rng.gamma(0.8, 3.0, size=(n_in + n_out, *shape)).astype(np.float32)
    frames[:, :4, :4] = np.nan
    inputs, later = frames[:n_in], frames[n_in:]
    return ForecastSequence(
        inputs=inputs,
        forecasts={name: later * (k + 1) for k, name in enumerate(methods)},
        observation=later if observed else None,
        issue_time=ISSUE_TIME,
        minutes_per_frame=5,
        unit=unit,
        caption="test",
    )


def test_colour_scales_are_discrete_with_white_below_and_grey_for_no_data():
    for unit, scale in RADAR_SCALES.items():
        colour_map, norm = scale.colour_map()
        levels = np.array(scale.levels)
        below, above = levels[0] - 1e-3, levels[-1] * 10
        inside = (levels[:-1] + levels[1:]) / 2  # one value in each class
        colours = colour_map(norm(np.ma.masked_invalid([below, *levels, *inside, above, np.nan])))
        n = len(levels)
        assert tuple(colours[0]) == to_rgba("white"), unit
        for k in range(n):  # a level starts its class; the class's middle has the same colour
            assert tuple(colours[1 + k]) == to_rgba(scale.colours[k]), (unit, levels[k])
        for k in range(n - 1):
            assert tuple(colours[1 + n + k]) == to_rgba(scale.colours[k]), (unit, inside[k])
        assert tuple(colours[-2]) == to_rgba(scale.colours[-1])
        assert tuple(colours[-1]) == to_rgba(NO_DATA_COLOUR)
    assert radar_scale("mm/h").levels[:4] == (0.1, 0.2, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"no colour scale for unit 'in/h', known: mm/h, dBZ"):
        radar_scale("in/h")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": np.zeros((16, 16))}, r"inputs must be \(n_in, height, width\)"),
        ({"forecasts": {}}, "at least one method"),
        ({"forecasts": {"model": np.zeros((3, 16, 8))}}, r"model must be .* shape=\(3, 16, 8\)"),
        ({"observation": np.zeros((2, 16, 16))}, r"observation must be .*\(2, 16, 16\)"),
        ({"minutes_per_frame": 0}, "minutes_per_frame must be > 0"),
        ({"unit": "mm"}, "no colour scale for unit 'mm'"),
    ],
)
def test_inconsistent_sequences_are_refused(change, message):
    good = sequence()
    fields = {
        "inputs": good.inputs,
        "forecasts": good.forecasts,
        "observation": good.observation,
        "issue_time": ISSUE_TIME,
        "minutes_per_frame": 5,
        "unit": "mm/h",
    }
    with pytest.raises(ValueError, match=message):
        ForecastSequence(**{**fields, **change})


@pytest.mark.parametrize(
    ("n_out", "most", "shown"),
    [(12, 6, [1, 3, 5, 7, 9, 11]), (20, 6, [3, 7, 11, 15, 19]), (3, 6, [0, 1, 2]), (1, 6, [0])],
)
def test_the_still_shows_evenly_spaced_lead_times_up_to_the_last(n_out, most, shown):
    assert lead_times_shown(n_out, most) == shown


def test_animation_read_back_has_one_frame_per_input_and_lead_time(tmp_path):
    animate_forecast(tmp_path / "four.gif", sequence(n_in=2, n_out=3))
    with Image.open(tmp_path / "four.gif") as gif:
        assert (gif.n_frames, gif.size) == (2 + 3, FOUR_PANELS_PX)
        first, last = np.array(gif.convert("RGB")), None
        gif.seek(gif.n_frames - 1)
        last = np.array(gif.convert("RGB"))
    # Forecast panels are empty during the inputs and hold frames at the lead times.
    assert not np.array_equal(first, last)

    # An operational nowcast: no observation, the model alone.
    animate_forecast(tmp_path / "one.gif", sequence(observed=False, methods=("model",)))
    with Image.open(tmp_path / "one.gif") as gif:
        assert (gif.n_frames, gif.size) == (2 + 3, ONE_PANEL_PX)


@pytest.mark.skipif(not animation.FFMpegWriter.isAvailable(), reason="ffmpeg is not installed")
def test_mp4_read_back_with_ffmpeg(tmp_path):
    animate_forecast(tmp_path / "four.mp4", sequence(n_in=2, n_out=3))
    decoded = subprocess.run(
        [rcParams["animation.ffmpeg_path"], "-i", str(tmp_path / "four.mp4"), "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    assert decoded.returncode == 0, decoded.stderr
    assert int(re.findall(r"frame=\s*(\d+)", decoded.stderr)[-1]) == 2 + 3
    assert "{}x{}".format(*FOUR_PANELS_PX) in decoded.stderr


def test_mp4_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(rcParams, "animation.ffmpeg_path", str(tmp_path / "no_ffmpeg"))
    with pytest.raises(ValueError, match=r"MP4 animations need ffmpeg.*use format=gif"):
        animate_forecast(tmp_path / "movie.mp4", sequence())
    with pytest.raises(ValueError, match=r"unknown animation format, allowed: gif, mp4"):
        animate_forecast(tmp_path / "movie.avi", sequence())
    assert list(tmp_path.iterdir()) == []


def test_the_still_draws_no_data_in_grey(tmp_path):
    grey = np.array(to_rgba(NO_DATA_COLOUR)[:3]) * 255

    def grey_pixels(seq) -> int:
        path = tmp_path / "still.png"
        plot_forecast_grid(path, seq)
        pixels = np.array(Image.open(path).convert("RGB")).astype(float)
        return int(np.all(np.abs(pixels - grey) < 1, axis=-1).sum())

    with_gaps = sequence(methods=("model",))
    covered = sequence(methods=("model",))
    for frames in (covered.inputs, covered.observation, covered.forecasts["model"]):
        np.nan_to_num(frames, copy=False, nan=0.0)
    # The 4x4-pixel corner of every panel (7: 1 + 3 observed, 3 forecast) is grey, 80x80
    # pixels of the figure each; without gaps only the colour bar's no-data key is.
    assert grey_pixels(with_gaps) > grey_pixels(covered) + 7 * 80 * 80 * 0.9
