"""Tiny radar files in the layouts of the real products, written with h5py for the tests.

ODIM_H5 follows an OPERA composite (Conventions ODIM_H5/V2_2, fixed-length ASCII string
attributes, 64-bit numbers, a gzip-compressed image with CLASS/IMAGE_VERSION and a QIND quality
field). KNMI follows RAD_NL25_RAP_5min_*.h5 (accumulation, uint16) attribute for attribute:
numbers as 1-element arrays, strings as null-terminated fixed-length ASCII. SEVIR follows
SEVIR_VIL_STORMEVENTS_*.h5 (id, vil (N, H, W, 49) uint8) plus a CATALOG.csv with SEVIR's
columns. Only the grids are tiny.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np

KNMI_PROJ4 = "+proj=stere +lat_0=90 +lon_0=0.0 +lat_ts=60.0 +a=6378.137 +b=6356.752 +x_0=0 +y_0=0"
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
    quality: np.ndarray | None = None,
    quality_in: str | None = "data",
    object_type: str = "COMP",
) -> Path:
    """An ODIM_H5 composite holding `raw` (rows, columns) as /dataset1/data1/data.

    Args:
        scaling_in: where quantity/gain/offset/nodata/undetect sit: "data" (data1/what),
            "dataset" (dataset1/what) or "root" (/what).
        where_in: the grid in "root" (/where) or "dataset" (/dataset1/where).
        extra_data: more quantities as data2, data3, ... (same scaling).
        quality: the raw QIND field (uint8, gain 1/255); default 200 everywhere.
        quality_in: the QIND field as quality1 of each "data" group, of the "dataset", or None.
        object_type: /what object (COMP; PVOL or SCAN for a radar's own volume or scan).
    """
    rows, cols = raw.shape
    start = when - timedelta(minutes=accumulation_minutes)
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = _ascii("ODIM_H5/V2_2")
        what = f.create_group("what")
        what.attrs["object"] = _ascii(object_type)
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
        if quality_in is not None:
            quality_raw = np.full((rows, cols), 200, np.uint8) if quality is None else quality
            data_groups = [dataset[name] for name in dataset if name.startswith("data")]
            holders = [dataset] if quality_in == "dataset" else data_groups
            for holder in holders:
                group = holder.create_group("quality1")
                group_what = group.create_group("what")
                group_what.attrs["quantity"] = _ascii("QIND")
                group_what.attrs["gain"] = np.float64(1 / 255)
                group_what.attrs["offset"] = np.float64(0.0)
                group.create_dataset("data", data=quality_raw)
    return path


def knmi_time(moment: datetime) -> str:
    """KNMI's time format, e.g. 26-AUG-2010;02:55:00.000."""
    return moment.strftime("%d-%b-%Y;%H:%M:%S.000").upper()


def _knmi_texts(holder: h5py.HLObject, *, array: bool = False, **values: str) -> None:
    """String attributes as KNMI writes them: fixed-length, null-terminated ASCII, scalars or
    (`array`) 1-element arrays."""
    for name, value in values.items():
        string_type = h5py.h5t.C_S1.copy()
        string_type.set_size(len(value) + 1)
        string_type.set_strpad(h5py.h5t.STR_NULLTERM)
        data = np.array([value] if array else value, dtype=f"S{len(value) + 1}")
        holder.attrs.create(name, data, dtype=h5py.Datatype(string_type))


def _knmi_numbers(holder: h5py.HLObject, dtype: type, **values: list[float]) -> None:
    for name, value in values.items():
        holder.attrs[name] = np.array(value, dtype)


def write_knmi(
    path: Path,
    pixels: np.ndarray,
    end: datetime,
    *,
    geo_parameter: str | None = "ACCUMULATED_PRECIPITATION_[MM]",
    formula: str = "GEO=0.01*PV+0.0",
    missing_data: int = 65535,
    out_of_image: int = 65535,
    interval_minutes: int = 5,
    image_groups: int = 1,
) -> Path:
    """A KNMI HDF5 composite holding `pixels` (rows, columns) as /image1/image_data.

    By default every group, dataset and attribute of RAD_NL25_RAP_5min_*.h5 (the 5-minute
    accumulation, uint16 PV in 0.01 mm), with the real names, types and shapes. Other products
    by the keywords: RAD_NL25_PCP_NA is uint8 `pixels` with geo_parameter="REFLECTIVITY_[DBZ]",
    formula="GEO = 0.500000 * PV + -32.000000", missing_data=0, out_of_image=255;
    `image_groups` > 1 writes image1, image2, ... as KNMI's forecasts do (one per lead time).
    """
    rows, cols = pixels.shape
    start = end - timedelta(minutes=interval_minutes)
    with h5py.File(path, "w") as f:
        geographic = f.create_group("geographic")
        _knmi_numbers(
            geographic,
            np.float32,
            geo_column_offset=[0.0],
            geo_pixel_size_x=[1.0],
            geo_pixel_size_y=[-1.0],
            geo_product_corners=[0.0, 49.362, 0.0, 55.974, 10.856, 55.389, 9.009, 48.895],
            geo_row_offset=[3650.0],
        )
        _knmi_numbers(geographic, np.int32, geo_number_columns=[cols], geo_number_rows=[rows])
        _knmi_texts(geographic, geo_dim_pixel="KM,KM", geo_par_pixel="X,Y", geo_pixel_def="LU")
        projection = geographic.create_group("map_projection")
        _knmi_texts(
            projection,
            projection_indication="Y",
            projection_name="STEREOGRAPHIC",
            projection_proj4_params=KNMI_PROJ4,
        )
        for k in range(1, image_groups + 1):
            image = f.create_group(f"image{k}")
            _knmi_numbers(
                image, np.int32, image_bytes_per_pixel=[pixels.itemsize], image_size=[pixels.size]
            )
            if geo_parameter is not None:
                _knmi_texts(image, image_geo_parameter=geo_parameter)
            _knmi_texts(image, image_product_name="RAD_NL25_RAU_H1.5_5mi")
            calibration = image.create_group("calibration")
            _knmi_texts(calibration, calibration_flag="Y", calibration_formulas=formula)
            _knmi_numbers(
                calibration,
                np.int32,
                calibration_missing_data=[missing_data],
                calibration_out_of_image=[out_of_image],
            )
            data = image.create_dataset(
                "image_data",
                data=pixels,
                chunks=pixels.shape,
                compression="gzip",
                compression_opts=6,
            )
            _knmi_texts(data, array=True, CLASS="IMAGE", VERSION="1.2")
            statistics = image.create_group("statistics")
            _knmi_numbers(statistics, np.float32, stat_max_value=[0.0], stat_min_value=[0.0])
        overview = f.create_group("overview")
        _knmi_texts(overview, hdftag_version_number="3.5")
        _knmi_numbers(
            overview,
            np.int32,
            number_image_groups=[image_groups],
            number_radar_groups=[2],
            number_satellite_groups=[0],
            number_station_groups=[0],
        )
        _knmi_texts(
            overview,
            array=True,
            product_datetime_end=knmi_time(end),
            product_datetime_start=knmi_time(start),
        )
        _knmi_texts(overview, product_group_name="RAD_NL25_RAU_5mi", products_missing="NA")
        for k, (name, location) in enumerate(
            (("De_Bilt", [5.179, 52.103]), ("Den_Helder", [4.79, 52.955])), start=1
        ):
            radar = f.create_group(f"radar{k}")
            _knmi_numbers(radar, np.float32, radar_location=location)
            _knmi_texts(radar, radar_name=name)
        _knmi_numbers(f["radar1"], np.int32, radar_num_contrib=[1])  # only radar1 has it
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


# The header of FMI's composites (201609281445_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz),
# two of its ten radars kept; the size and maximum value lines follow it.
FMI_HEADER = """P5
# composite_area FIN
# projection_name SUOMI1
# radar KOR 1 21.6460 60.1280
# radar VAN 1 24.8730 60.2710
# obstime {obstime}
# producttype CAPPI
# productname LOWEST
# param CorrectedReflectivity
# metersperpixel_x 999.674053
# metersperpixel_y 999.62859
# projection radar {{
# type stereographic
# centrallongitude 25
# centrallatitude 90
# truelatitude 60
# bottomleft 18.600000 57.930000
# topright 34.903000 69.005000
# }}
"""


def write_fmi_pgm(path: Path, raw: np.ndarray, when: datetime | None) -> Path:
    """A gzipped FMI PGM composite of `raw` (rows, columns) uint8: dBZ = (raw - 64) / 2, 255
    (the maximum value line) = no data. `when` is the header's obstime; None leaves it out."""
    import gzip

    rows, cols = raw.shape
    header = FMI_HEADER.format(obstime=when.strftime("%Y%m%d%H%M") if when else "")
    if when is None:
        header = header.replace("# obstime \n", "")
    with gzip.open(path, "wb") as stream:
        stream.write(f"{header}{cols} {rows}\n255\n".encode("ascii"))
        stream.write(raw.astype(np.uint8).tobytes())
    return path


def write_mch_gif(path: Path, raw: np.ndarray, when: datetime | None) -> Path:
    """A MeteoSwiss AQC palette GIF of `raw` (rows, columns) uint8 (pysteps' lookup table: 0-1
    and 251-254 no rain, 255 no data) with MeteoSwiss's comment; `when` in its PRDT (None:
    no comment)."""
    from PIL import Image

    rows, cols = raw.shape
    image = Image.frombytes("P", (cols, rows), raw.astype(np.uint8).tobytes())
    image.putpalette([value for k in range(256) for value in (k, 255 - k, (7 * k) % 256)])
    comment = {}
    if when is not None:
        comment["comment"] = (
            "generated by Meteoswiss\nVERSION=ACQUIRE-V4.4.0_May2012\n"
            f"PRDT=AQC{when:%y%j%H%M} SCALE=mmh2LASSEN8bitmm_mn COLOR=reddish ACCUm=000005 "
            "DeltaT=000005 TOTn=000001 \n"
        ).encode("ascii")
    image.save(path, format="GIF", optimize=False, **comment)  # optimize would reorder indices
    return path


def write_bom_netcdf(
    path: Path, raw: np.ndarray, end: datetime, *, minutes: int = 10, valid_time: bool = True
) -> Path:
    """A BoM Rainfields3 accumulation (prcp-c10 layout) of `raw` (rows, columns) int16: mm =
    0.05 raw, -1 (_FillValue) = no data; 500-m pixels, Albers projection, rows north first.
    `valid_time` False leaves the end time out of the file."""
    import netCDF4

    rows, cols = raw.shape
    with netCDF4.Dataset(path, "w", format="NETCDF4") as dataset:
        dataset.Conventions = "CF-1.7"
        dataset.title = f"Bias Corrected Radar Accumulation ({minutes} min)"
        dataset.institution = "Commonwealth of Australia, Bureau of Meteorology"
        dataset.station_id = 66
        dataset.createDimension("y", rows)
        dataset.createDimension("n2", 2)
        dataset.createDimension("x", cols)
        times = {"start_time": end - timedelta(minutes=minutes)}
        if valid_time:
            times["valid_time"] = end
        for name, moment in times.items():
            variable = dataset.createVariable(name, "i8")
            variable.units = "seconds since 1970-01-01 00:00:00 UTC"
            variable.assignValue(int(moment.timestamp()))
        for name, centres in (
            ("y", (np.arange(rows)[::-1] - (rows - 1) / 2) * 0.5),
            ("x", (np.arange(cols) - (cols - 1) / 2) * 0.5),
        ):
            axis = dataset.createVariable(name, "f8", (name,))
            axis.standard_name = f"projection_{name}_coordinate"
            axis.units = "km"
            axis[:] = centres
        precipitation = dataset.createVariable("precipitation", "i2", ("y", "x"), fill_value=-1)
        precipitation.long_name = "Accumulated precipitation"
        precipitation.standard_name = "precipitation_amount"
        precipitation.units = "kg m-2"
        precipitation.add_offset = 0.0
        precipitation.scale_factor = 0.05
        precipitation.grid_mapping = "proj"
        precipitation.set_auto_maskandscale(False)
        precipitation[:] = raw.astype(np.int16)
        projection = dataset.createVariable("proj", "i1")
        projection.grid_mapping_name = "albers_conical_equal_area"
        projection.standard_parallel = [-26.2, -29.3]
        projection.longitude_of_central_meridian = 153.24
        projection.latitude_of_projection_origin = -27.7178
        projection.false_easting = 0.0
        projection.false_northing = 0.0
    return path
