"""Shi et al. (2017) balanced weights, defined once: the B-MSE and B-MAE losses
(nowcast.losses, through `LossConfig`'s defaults) and scores (nowcast.metrics) weigh each pixel
by its observed rain rate with these.

Shi et al. 2017, Deep Learning for Precipitation Nowcasting: A Benchmark and a New Model.
Weights 1, 1, 2, 5, 10, 30 for observations below 0.5, 0.5-2, 2-5, 5-10, 10-30 and >= 30 mm/h
(the weight is 1 on both sides of 0.5 mm/h, so 0.5 mm/h is no threshold here). Imports nothing,
so that the config schemas and the metrics share it without importing each other.
"""

BALANCED_THRESHOLDS_MMH = (2.0, 5.0, 10.0, 30.0)
BALANCED_WEIGHTS = (1.0, 2.0, 5.0, 10.0, 30.0)
