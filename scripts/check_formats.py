"""Check the radar formats nowcast reads through pysteps (and KNMI's, which it reads itself)
against pysteps, on real files.

For each folder: convert it to a store (whole frames, the default Z-R), then, for every frame of
the store, find the file that pysteps' archive (`pysteps.io.archive.find_by_date`, with the
file-name pattern of pystepsrc's data source) names for the frame's time, import it with the
data source's importer and importer_kwargs, turn the field into dBZ (rain rates and
accumulations through the store's Z-R) and compare: the same no-data pixels (NaN), the same
no-echo pixels (at or below pysteps' zerovalue, or under the store's floor), and the dBZ of the
other pixels within half the store's 0.5 dB step (the store rounds to the nearest step).

Usage (not a test: it reads real files, which the tests never do):

    .venv/bin/python scripts/check_formats.py ../shared/radar/fmi-2016-09-28 \
        ../shared/radar/mch-2015-05-15 ../shared/radar/bom-2020-10-31 ...
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from nowcast.config import ConvertCommandConfig
from nowcast.data.convert import convert
from nowcast.data.store import REFLECTIVITY, Store
from nowcast.units import rain_to_dbz

# nowcast format -> (file-name ending, pystepsrc data source, the shared files' name pattern
# where it differs from the data source's: BoM's radar 66 and 10-minute product).
SOURCES = {
    "fmi": (".pgm.gz", "fmi", None),
    "mch": (".gif", "mch", None),
    "bom": (".nc", "bom", "66_%Y%m%d_%H%M%S.prcp-c10"),
    "knmi": (".h5", "knmi", None),
}
HALF_STEP = REFLECTIVITY.gain / 2


def _format_of(folder: Path) -> str:
    for fmt, (ending, _, _) in SOURCES.items():
        if any(p.name.endswith(ending) for p in folder.iterdir()):
            return fmt
    sys.exit(f"{folder} holds none of the files this script knows: {', '.join(SOURCES)}")


def _pysteps_dbz(path: str, importer, kwargs: dict, zr: tuple[float, float]):
    """pysteps' field of one file as dBZ, its no-data and no-echo masks, rows north first."""
    field, _, metadata = importer(path, **kwargs)
    field = np.ma.filled(np.ma.asarray(field, dtype=np.float64), np.nan)
    no_data = np.isnan(field)
    with np.errstate(invalid="ignore"):
        no_echo = field <= metadata["zerovalue"]
    if metadata["unit"] == "dBZ":
        dbz = field
    else:
        rate = field * 60.0 / metadata["accutime"] if metadata["unit"] == "mm" else field
        with np.errstate(invalid="ignore"):
            dbz = rain_to_dbz(rate, *zr)
    if metadata.get("yorigin", "upper") == "lower":
        dbz, no_data, no_echo = dbz[::-1], no_data[::-1], no_echo[::-1]
    return dbz, no_data, no_echo


def check(folder: Path, output: Path) -> None:
    # pysteps prints where it found its configuration file when first imported.
    with contextlib.redirect_stdout(io.StringIO()):
        import pysteps
        from pysteps.io import archive, get_method

    fmt = _format_of(folder)
    ending, source_name, pattern = SOURCES[fmt]
    source = pysteps.rcparams.data_sources[source_name]
    importer = get_method(source["importer"], "importer")
    kwargs = dict(source["importer_kwargs"])
    started = time.perf_counter()
    cfg = OmegaConf.structured(
        ConvertCommandConfig(format=fmt, input=str(folder), output=str(output), overwrite=True)
    )
    result = convert(cfg)
    seconds = time.perf_counter() - started
    store = Store(result.path)
    zr = store.zr
    floor = REFLECTIVITY.offset
    counts = dict.fromkeys(
        ("files", "no data", "no data differ", "no echo", "no echo differ", "echo", "over"), 0
    )
    worst = 0.0
    for index, moment in enumerate(store.times):
        date = datetime.fromtimestamp(int(moment), tz=timezone.utc).replace(tzinfo=None)
        with contextlib.redirect_stdout(io.StringIO()):
            found, _ = archive.find_by_date(
                date,
                str(folder),
                "",
                pattern or source["fn_pattern"],
                ending.lstrip(".") if pattern else source["fn_ext"],
                source["timestep"],
            )
        if found[0] is None:
            sys.exit(f"{folder}: no file named for the store's frame at {date:%Y-%m-%d %H:%M}")
        counts["files"] += 1
        dbz, no_data, no_echo = _pysteps_dbz(found[0], importer, kwargs, zr)
        stored = store.read(index, index + 1)[0]
        stored_no_data = np.isnan(stored)
        counts["no data"] += int(no_data.sum())
        counts["no data differ"] += int(np.count_nonzero(no_data != stored_no_data))
        # No echo in the store reads as its floor: pysteps' no echo, and echo rounded to it.
        with np.errstate(invalid="ignore"):
            expect_floor = ~no_data & (no_echo | (dbz < floor + HALF_STEP))
        stored_floor = stored == floor
        counts["no echo"] += int(no_echo.sum())
        counts["no echo differ"] += int(np.count_nonzero(expect_floor != stored_floor))
        echo = ~no_data & ~expect_floor & ~stored_floor & ~stored_no_data
        difference = np.abs(stored[echo] - dbz[echo])
        counts["echo"] += int(echo.sum())
        counts["over"] += int(np.count_nonzero(difference > HALF_STEP + 1e-4))
        worst = max(worst, float(difference.max(initial=0.0)))
    grid = store.grid
    print(
        f"{folder.name}: format={fmt} (pysteps' import_{source['importer']} with "
        f"{kwargs}), {result.frames} frames of {result.height} x {result.width}, every "
        f"{result.minutes_per_frame:g} min, converted in {seconds:.1f} s\n"
        f"  grid: xscale={grid.get('xscale')!r} yscale={grid.get('yscale')!r} "
        f"projdef={grid.get('projdef')!r}\n"
        f"  times: {counts['files']} of {result.frames} frames' times name a file by "
        f"pysteps' archive pattern\n"
        f"  no data: {counts['no data']} pixels in pysteps, {counts['no data differ']} differ\n"
        f"  no echo: {counts['no echo']} pixels at or below pysteps' zerovalue; "
        f"{counts['no echo differ']} pixels differ from the store's floor ({floor:g} dBZ)\n"
        f"  echo: {counts['echo']} pixels, max |store - pysteps| = {worst:.4f} dBZ, "
        f"{counts['over']} over half the {REFLECTIVITY.gain:g} dB step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of one event each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for folder in args.folders:
            check(folder, Path(scratch) / f"{folder.name}.h5")


if __name__ == "__main__":
    main()
