"""Distribution matching: a forecast keeps its pattern and takes the amounts of a reference.

A forecast regressed toward the mean where the future is uncertain falls between rain and no
echo, and on a dB scale that mean lands below the rain thresholds: the rain area shrinks with
lead time and the frequency bias falls (docs/skill.md). S-PROG (Seed 2003) keeps the area by
matching its smoothed forecast's distribution to the observed one (pysteps'
`probmatching_method="cdf"`). `match_distribution` is that step for the network: it decides
where rain goes (the ranks of its pixels), and the extrapolation of the newest frame decides
how much of each intensity there is, so the bias stays that of the extrapolation. Ranks pass
no gradient, so the model matches only outside training.
"""

from __future__ import annotations

from keras import ops


def match_distribution(field, reference):
    """`reference`'s values, placed in the rank order of `field`, per sample and lead time.

    Args:
        field: (B, T, H, W, C) values whose spatial order is kept.
        reference: the same shape; each (b, t) frame's values are redistributed.

    Returns:
        (B, T, H, W, C): at each pixel, the reference's value of the same rank within its
        frame.
    """
    shape = ops.shape(field)
    frames = (-1, shape[2] * shape[3] * shape[4])
    flat = ops.reshape(field, frames)
    ranks = ops.argsort(ops.argsort(flat, axis=-1), axis=-1)
    values = ops.sort(ops.reshape(ops.cast(reference, field.dtype), frames), axis=-1)
    return ops.reshape(ops.take_along_axis(values, ranks, axis=-1), shape)
