"""Scale bands of a field, for a forecast that keeps each scale only while it is predictable.

Small features of radar echo lose their predictability in minutes, large ones in hours
(Germann and Zawadzki 2002); moving every scale of the newest frame to the same lead time
keeps detail that is, by then, noise. S-PROG (Seed 2003) splits the field into a cascade of
scales and lets each decay at the rate its own autocorrelation says. `scale_bands` is such a
split, in `keras.ops`: a Gaussian pyramid (Burt and Adelson 1983) of 2, 4, 8, ... pixel means,
each brought back to full size, whose differences are the bands and which add back up to the
field exactly, so that a network can weigh each band per pixel and lead time
(`EncoderForecaster(scale_bands=...)`). A pyramid costs a tenth of Gaussian blurs as wide at
full resolution (docs/experiments.md, "Scale bands").
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from keras import ops

# The binomial filter applied before each halving, so that the means do not alias.
BINOMIAL = np.array([1.0, 2.0, 1.0], np.float32) / 4.0


def _smooth_and_halve(frames):
    rows = ops.convert_to_tensor(BINOMIAL.reshape(3, 1, 1, 1), dtype=frames.dtype)
    columns = ops.convert_to_tensor(BINOMIAL.reshape(1, 3, 1, 1), dtype=frames.dtype)
    smoothed = ops.conv(ops.conv(frames, rows, padding="same"), columns, padding="same")
    return ops.average_pool(smoothed, 2, strides=2, padding="same")


def coarse_fields(frames, levels: int) -> list:
    """`frames` (N, H, W, 1) and its `levels` - 1 coarser versions (means over 2, 4, ...
    pixels), each resized bilinearly back to (H, W): a list from finest to coarsest."""
    size = tuple(ops.shape(frames)[1:3])
    fields, coarse = [frames], frames
    for _ in range(levels - 1):
        coarse = _smooth_and_halve(coarse)
        fields.append(ops.image.resize(coarse, size, interpolation="bilinear"))
    return fields


def scale_bands(frames, bands: int):
    """`frames` (N, H, W, 1) split into `bands` fields (N, H, W, bands) that add up to it:
    the detail finer than 2 pixels, 2-4, 4-8, ... pixels, and the rest (the coarsest means)."""
    fields = coarse_fields(frames, bands)
    differences = [finer - coarser for finer, coarser in pairwise(fields)]
    return ops.concatenate([*differences, fields[-1]], axis=-1)
