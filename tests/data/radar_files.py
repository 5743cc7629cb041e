"""Tiny radar files in the layouts of the real products, written with h5py for the tests.

ODIM_H5 follows an OPERA composite (Conventions ODIM_H5/V2_2, fixed-length ASCII string
attributes, 64-bit numbers, a gzip-compressed image with CLASS/IMAGE_VERSION and a QIND quality
field). KNMI follows RAD_NL25_PCP_NA (reflectivity, uint8) and RAD_NL25_RAC_* (accumulation,
uint16): numbers as 1-element arrays, strings as fixed-length bytes. SEVIR follows
SEVIR_VIL_STORMEVENTS_*.h5 (id, vil (N, H, W, 49) uint8) plus a CATALOG.csv with SEVIR's
columns. Only the grids are tiny.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

KNMI_PROJ4 = "+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378.14 +b=6356.75 +x_0=0 y_0=0"
ODIM_PROJDEF = "+proj=laea +lat_0=55.0 +lon_0=10.0 +x_0=1950000.0 +y_0=-2100000.0 +units=m"
SEVIR_PROJ = "+proj=laea +lat_0=38 +lon_0=-98 +units=m +a=6370997.0 +ellps=sphere "


def _ascii(value: str) -> np.bytes_:
    return np.bytes_(value)


def write_odim(
    path: Path,
    raw: np.ndarray,
    when: datetime,
    *,
    quantity: str = "DBZH",
    gain: float | None = 0.5,
    offset: float | None = -32.0,
    nodata: float | None = 255.0,
    undetect: float | None = 0.0,
    scaling_in: str = "data",
    where_in: str = "root",
    accumulation_minutes: int = 5,
    extra_data: dict[str, np.ndarray] | None = None,
) -> Path:
    """An ODIM_H5 composite holding `raw` (rows, columns) as /dataset1/data1/data.

    Args:
        scaling_in: where quantity/gain/offset/nodata/undetect sit: "data" (data1/what),
            "dataset" (dataset1/what) or "root" (/what).
        where_in: the grid in "root" (/where) or "dataset" (/dataset1/where).
        extra_data: more quantities as data2, data3, ... (same scaling).
    """
    rows, cols = raw.shape
    start = when - timedelta(minutes=accumulation_minutes)
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = _ascii("ODIM_H5/V2_2")
        what = f.create_group("what")
        what.attrs["object"] = _ascii("COMP")
        what.attrs["version"] = _ascii("H5rad 2.2")
        what.attrs["date"] = _ascii(when.strftime("%Y%m%d"))
        what.attrs["time"] = _ascii(when.strftime("%H%M%S"))
        what.attrs["source"] = _ascii("ORG:247,CMT:nowcast test composite")
        where = f.create_group("where") if where_in == "root" else None
        dataset = f.create_group("dataset1")
        dataset_what = dataset.create_group("what")
        dataset_what.attrs["product"] = _ascii("COMP")
        dataset_what.attrs["startdate"] = _ascii(start.strftime("%Y%m%d"))
        dataset_what.attrs["starttime"] = _ascii(start.strftime("%H%M%S"))
        dataset_what.attrs["enddate"] = _ascii(when.strftime("%Y%m%d"))
        dataset_what.attrs["endtime"] = _ascii(when.strftime("%H%M%S"))
        if where is None:
            where = dataset.create_group("where")
        where.attrs["projdef"] = _ascii(ODIM_PROJDEF)
        where.attrs["xsize"] = np.int64(cols)
        where.attrs["ysize"] = np.int64(rows)
        where.attrs["xscale"] = np.float64(2000.0)
        where.attrs["yscale"] = np.float64(2000.0)
        for corner, (lon, lat) in {
            "LL": (-10.434, 31.746),
            "UL": (-39.535, 67.023),
            "UR": (57.812, 67.620),
            "LR": (29.422, 31.800),
        }.items():
            where.attrs[f"{corner}_lon"] = np.float64(lon)
            where.attrs[f"{corner}_lat"] = np.float64(lat)
        f.create_group("how").attrs["nodes"] = _ascii("'bewid','dkbor','fivan'")
        scaling = {"gain": gain, "offset": offset, "nodata": nodata, "undetect": undetect}
        for index, (name, values) in enumerate({quantity: raw, **(extra_data or {})}.items()):
            data = dataset.create_group(f"data{index + 1}")
            data_what = data.create_group("what")
            holder = {"data": data_what, "dataset": dataset_what, "root": what}[scaling_in]
            holder.attrs["quantity"] = _ascii(name)
            for key, value in scaling.items():
                if value is not None:
                    holder.attrs[key] = np.float64(value)
            image = data.create_dataset(
                "data", data=values, compression="gzip", compression_opts=6
            )
            image.attrs["CLASS"] = _ascii("IMAGE")
            image.attrs["IMAGE_VERSION"] = _ascii("1.2")
            quality = data.create_group("quality1")
            quality_what = quality.create_group("what")
            quality_what.attrs["quantity"] = _ascii("QIND")
            quality_what.attrs["gain"] = np.float64(1 / 255)
            quality_what.attrs["offset"] = np.float64(0.0)
            quality.create_dataset("data", data=np.full((rows, cols), 200, np.uint8))
    return path


def knmi_time(moment: datetime) -> np.bytes_:
    """KNMI's time format, e.g. 26-AUG-2010;02:55:00.000."""
    return _ascii(moment.strftime("%d-%b-%Y;%H:%M:%S.000").upper())


def write_knmi(
    path: Path,
    pixels: np.ndarray,
    end: datetime,
    *,
    geo_parameter: str | None = "REFLECTIVITY_[DBZ]",
    formula: str = "GEO = 0.500000 * PV + -32.000000",
    missing_data: int = 0,
    out_of_image: int = 255,
    interval_minutes: int = 5,
) -> Path:
    """A KNMI HDF5 composite holding `pixels` (rows, columns) as /image1/image_data."""
    rows, cols = pixels.shape
    start = end - timedelta(minutes=interval_minutes)
    with h5py.File(path, "w") as f:
        overview = f.create_group("overview")
        overview.attrs["hdftag_version_number"] = _ascii("3.6")
        overview.attrs["number_image_groups"] = np.array([1], np.int32)
        overview.attrs["number_radar_groups"] = np.array([2], np.int32)
        overview.attrs["product_datetime_start"] = knmi_time(start)
        overview.attrs["product_datetime_end"] = knmi_time(end)
        overview.attrs["product_group_name"] = _ascii(f"RAD_NL25_PCP_NA_{end:%Y%m%d%H%M}")
        overview.attrs["products_missing"] = _ascii("NA")
        geographic = f.create_group("geographic")
        geographic.attrs["geo_column_offset"] = np.array([0.0], np.float32)
        geographic.attrs["geo_dim_pixel"] = _ascii("KM,KM")
        geographic.attrs["geo_number_columns"] = np.array([cols], np.int32)
        geographic.attrs["geo_number_rows"] = np.array([rows], np.int32)
        geographic.attrs["geo_par_pixel"] = _ascii("X,Y")
        geographic.attrs["geo_pixel_def"] = _ascii("LU")
        geographic.attrs["geo_pixel_size_x"] = np.array([1.0000035], np.float32)
        geographic.attrs["geo_pixel_size_y"] = np.array([-1.0000048], np.float32)
        geographic.attrs["geo_product_corners"] = np.array(
            [0.0, 49.362, 0.0, 55.974, 10.856, 55.389, 9.009, 48.895], np.float32
        )
        geographic.attrs["geo_row_offset"] = np.array([3650.0], np.float32)
        projection = geographic.create_group("map_projection")
        projection.attrs["projection_indication"] = _ascii("Y")
        projection.attrs["projection_name"] = _ascii("STEREOGRAPHIC")
        projection.attrs["projection_proj4_params"] = _ascii(KNMI_PROJ4)
        image = f.create_group("image1")
        image.attrs["image_bytes_per_pixel"] = np.array([pixels.dtype.itemsize], np.int32)
        if geo_parameter is not None:
            image.attrs["image_geo_parameter"] = _ascii(geo_parameter)
        image.attrs["image_product_name"] = _ascii("RAD_NL25_PCP_NA")
        image.attrs["image_size"] = np.array([pixels.size], np.int32)
        data = image.create_dataset("image_data", data=pixels, compression="gzip")
        data.attrs["CLASS"] = _ascii("IMAGE")
        data.attrs["VERSION"] = _ascii("1.2")
        calibration = image.create_group("calibration")
        calibration.attrs["calibration_flag"] = _ascii("Y")
        calibration.attrs["calibration_formulas"] = _ascii(formula)
        calibration.attrs["calibration_missing_data"] = np.array([missing_data], np.int32)
        calibration.attrs["calibration_out_of_image"] = np.array([out_of_image], np.int32)
        for k, name in enumerate(("DeBilt", "DenHelder"), start=1):
            radar = f.create_group(f"radar{k}")
            radar.attrs["radar_name"] = _ascii(name)
            radar.attrs["radar_location"] = np.array([5.18, 52.1], np.float32)
    return path


SEVIR_COLUMNS = (
    "id", "file_name", "file_index", "img_type", "time_utc", "minute_offsets", "episode_id",
    "event_id", "event_type", "llcrnrlat", "llcrnrlon", "urcrnrlat", "urcrnrlon", "proj",
    "size_x", "size_y", "height_m", "width_m", "data_min", "data_max", "pct_missing",
)  # fmt: skip
SEVIR_OFFSETS = ":".join(str(m) for m in range(-120, 125, 5))  # 49 frames


def write_sevir(
    root: Path, vil: np.ndarray, ids: list[str], times_utc: list[str], *, year: int = 2019
) -> Path:
    """A SEVIR VIL file under root/data/vil/<year>/ and root/CATALOG.csv listing its events.

    The catalog also lists an ir069 row per event (other image types share the catalog).
    """
    folder = root / "data" / "vil" / str(year)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"SEVIR_VIL_STORMEVENTS_{year}_0101_0630.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("id", data=np.array(ids, dtype="S"))
        f.create_dataset("vil", data=vil, chunks=(1, *vil.shape[1:]), compression="gzip")
    catalog = root / "CATALOG.csv"
    new = not catalog.exists()
    with catalog.open("a", newline="") as stream:
        writer = csv.writer(stream)
        if new:
            writer.writerow(SEVIR_COLUMNS)
        _, height, width, _ = vil.shape
        for index, (event, time_utc) in enumerate(zip(ids, times_utc, strict=True)):
            for img_type, name in (("vil", path.name), ("ir069", f"SEVIR_IR069_{year}.h5")):
                writer.writerow(
                    [
                        event, f"{img_type}/{year}/{name}", index, img_type, time_utc,
                        SEVIR_OFFSETS, 130000 + index, 780000 + index, "Thunderstorm Wind",
                        33.1, -101.2, 36.4, -97.1, SEVIR_PROJ, width, height,
                        1000.0 * height, 1000.0 * width, 0, 254, 0.0,
                    ]
                )  # fmt: skip
    return path
