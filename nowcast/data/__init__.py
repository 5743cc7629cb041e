"""Radar-echo data: the HDF5 sequence store, converters into it, window slicing, tf.data.

Modules: `store` (read/write the HDF5 store), `convert` (`nowcast-data convert`: other formats
into a store, with crop and downsampling), `sources` (what the format readers share), `odim`,
`knmi`, `sevir` (the readers), `importers` (every product pysteps' importers read), `info`
(`nowcast-data info`), `climate` (rain statistics to set stores side by side:
scripts/compare_climate.py), `synthetic` (the embedded default data set), `store_set` (several
stores read as one sequence, for runs on several events, and `resolve_store`: the store a data
config names, the synthetic set written there when it is missing), `frames` (source files'
frames in time order, cropped and regridded: what `convert` and `nowcast-predict` share),
`windows` (pure
NumPy window indices and time-block splits), `pipeline` (which windows a run uses, and tf.data
batches; the only module here that imports TensorFlow).
"""
