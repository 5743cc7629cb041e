"""Radar-echo data: the HDF5 sequence store, the synthetic data set, window slicing, tf.data.

Modules: `store` (read/write the HDF5 store), `synthetic` (the embedded default data set),
`windows` (pure NumPy window indices and time-block splits), `pipeline` (tf.data batches; the
only module here that imports TensorFlow).
"""
