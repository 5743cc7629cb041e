"""Extrapolation of the newest frame along the motion of the input frames, in `keras.ops`.

The encoder-forecaster's forecast passes through coarse maps and comes out smooth; moving the
observed field itself keeps its detail, which is what makes optical-flow nowcasts hard to beat
in the first half hour. These functions give the network that field, estimated and moved
inside the model (no weights, no gradient) so that it trains, saves and runs on any backend
like the rest of it.

Motion is found by block matching, coarse to fine. On 4 x 4 pixel means, for every shift that
with the fine level's reach makes up to `max_speed` pixels per frame, the squared difference
between consecutive frames (the newest three pairs), summed over a 9 x 9 window, gives a cost;
the least-cost shift, refined to a fraction of a pixel by a parabola through its neighbours'
costs (a softmin over the shifts where no shift stands out), gives a motion vector per place,
which is then averaged over about 30 km, weighted by echo, so that dry places take the motion
of the rain around them. On 2 x 2 means, the previous frames moved along that motion are
matched again within one coarse pixel, and the correction is averaged the same way. Searching
fast motion on the coarse grid costs a sixteenth of searching it at full resolution, so the
reach can cover the 100-140 km/h that real echo moves at on windy days, and the fine level
restores the detail.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

# The fastest motion found by default, in pixels per frame: 144 km/h on a 1-km, 5-minute grid
# (the KNMI day of docs/skill.md moved at 75-110 km/h, and 72 km/h lost it to optical flow).
DEFAULT_MAX_SPEED = 12
# Coarse to fine: the frames are matched on means over 4 x 4 pixels, searching up to the
# maximum speed, then on 2 x 2 means within one pixel of that level's motion.
LEVELS = (4, 2)
FINE_REACH = 1
MATCH_WINDOW = 9  # pixels of a level over which a shift's squared differences are summed
SMOOTHING_PIXELS = 30  # full-resolution pixels over which the motion vectors are averaged
PAIRS = 3  # the newest consecutive frame pairs matched
# Softmin temperature, relative to each place's mean cost over the shifts.
TEMPERATURE = 0.02


def _box_mean(x, size: int):
    return ops.average_pool(x, size, strides=1, padding="same")


def _parabola_vertex(costs, reach: int):
    """Per place, the least-cost shift moved to the vertex of the parabola through its cost
    and its two neighbours' along each axis (shifts as in `_shifts`).

    Returns:
        (B, h, w, 2) shifts, and (B, h, w, 1) 1.0 where the least-cost shift has neighbours
        on every side (not on the edge of the searched square), else 0.0.
    """
    side = 2 * reach + 1
    best = ops.argmin(costs, axis=-1)[..., None]
    row, col = best // side, best % side
    inside = (row > 0) & (row < side - 1) & (col > 0) & (col < side - 1)
    row, col = ops.clip(row, 1, side - 2), ops.clip(col, 1, side - 2)
    centre_index = row * side + col

    def cost(offset):
        return ops.take_along_axis(costs, centre_index + offset, axis=-1)

    centre = cost(0)

    def vertex(before, after):
        curvature = before - 2 * centre + after
        offset = (before - after) / (2 * ops.maximum(curvature, 1e-12))
        return ops.where(curvature > 1e-12, ops.clip(offset, -0.5, 0.5), 0.0)

    shift = ops.concatenate(
        [
            ops.cast(row - reach, "float32") + vertex(cost(-side), cost(side)),
            ops.cast(col - reach, "float32") + vertex(cost(-1), cost(1)),
        ],
        axis=-1,
    )
    return shift, ops.cast(inside, "float32")


def _shifts(reach: int) -> np.ndarray:
    """(S, 2) every (down, right) shift of up to `reach` pixels, row by row."""
    return np.array(
        [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)],
        np.float32,
    )


def _matched_shift(current, previous, reach: int, pairs: int):
    """Per place, the shift of up to `reach` pixels that best carries `previous` onto
    `current` (both (B * pairs, h, w, 1), the pairs of a sample next to each other).

    Returns:
        (B, h, w, 2) shifts in pixels, (down, right).
    """
    shifts = _shifts(reach)
    side = 2 * reach + 1
    # One convolution moves the previous frames by every shift at once: output channel s has
    # a single 1 in its kernel, so it holds the frame moved by shifts[s] (0 from outside).
    one_hot = np.zeros((side, side, 1, len(shifts)), np.float32)
    for s, (dy, dx) in enumerate(shifts.astype(int)):
        one_hot[reach - dy, reach - dx, 0, s] = 1.0
    squared = (current - ops.conv(previous, ops.convert_to_tensor(one_hot), padding="same")) ** 2
    squared = ops.sum(ops.reshape(squared, (-1, pairs, *squared.shape[1:])), axis=1)
    costs = _box_mean(squared, MATCH_WINDOW)  # (B, h, w, shifts)
    least = ops.min(costs, axis=-1, keepdims=True)
    mean = ops.mean(costs, axis=-1, keepdims=True)
    # Softmin over the shifts: smooth, and 0 where the costs are flat (no echo to match).
    weights = ops.softmax(-(costs - least) / (TEMPERATURE * (mean + 1e-6)), axis=-1)
    softmin = ops.einsum("bhws,sc->bhwc", weights, ops.convert_to_tensor(shifts))
    # It is pulled towards whole shifts; where the best shift stands out (least cost below
    # a quarter of the mean: full trust), its parabola is a sub-pixel estimate.
    refined, inside = _parabola_vertex(costs, reach)
    trust = inside * ops.clip(1.5 - 2 * least / (mean + 1e-6), 0.0, 1.0)
    return trust * refined + (1 - trust) * softmin


def _upsample(x, factor: int):
    return ops.repeat(ops.repeat(x, factor, axis=1), factor, axis=2)


def estimate_motion(frames, max_speed: int):
    """Motion of the echo in `frames` (B, T, H, W, 1), T >= 2, any H and W.

    Returns:
        (B, H, W, 2) float32: displacement per frame in pixels, (down, right).
    """
    steps, height, width = frames.shape[1:4]
    frames = ops.cast(ops.stop_gradient(frames), "float32")
    # Sides padded with no echo to a multiple of the coarsest level.
    coarsest = LEVELS[0]
    padded = (-height % coarsest, -width % coarsest)
    frames = ops.pad(frames, ((0, 0), (0, 0), (0, padded[0]), (0, padded[1]), (0, 0)))
    frames = ops.reshape(frames, (-1, height + padded[0], width + padded[1], 1))
    # The newest pairs of consecutive frames, folded into the batch axis.
    first = max(steps - PAIRS, 1)
    pairs = steps - first
    motion = None  # per frame, in pixels of the level last matched
    for level, factor in enumerate(LEVELS):
        coarse = ops.average_pool(frames, factor, strides=factor)
        size = coarse.shape[1:]
        coarse = ops.reshape(coarse, (-1, steps, *size))
        current = ops.reshape(coarse[:, first:], (-1, *size))
        previous = ops.reshape(coarse[:, first - 1 : -1], (-1, *size))
        # The coarsest level searches up to max_speed with what the finer levels add.
        reach = FINE_REACH
        if level == 0:
            reach = math.ceil(max(max_speed - FINE_REACH * LEVELS[-1], 0) / factor)
            if reach == 0:
                continue
        guide = 0.0
        if motion is not None:
            # The previous frames moved along the coarser level's motion: what is left to
            # find is within one pixel of this level.
            guide = _upsample(motion, LEVELS[level - 1] // factor) * (LEVELS[level - 1] / factor)
            along = ops.reshape(ops.repeat(guide[:, None], pairs, axis=1), (-1, *size[:2], 2))
            rows, cols = _pixel_grid(*size[:2])
            previous = _bilinear(
                previous, rows - along[..., 0], cols - along[..., 1], beyond_is_zero=True
            )
        vectors = guide + _matched_shift(current, previous, reach, pairs)
        window = max(round(SMOOTHING_PIXELS / factor), 1)
        echo = _box_mean(coarse[:, -1], MATCH_WINDOW) + 1e-4
        motion = _box_mean(vectors * echo, window) / _box_mean(echo, window)
    fine = _upsample(motion, LEVELS[-1]) * LEVELS[-1]
    return fine[:, :height, :width]


def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) float32 row and column of each pixel."""
    return np.meshgrid(
        np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij"
    )


def _bilinear(field, y, x, *, beyond_is_zero: bool):
    """`field` (B, H, W, C) at positions `y`, `x` (B, H, W) in pixels, bilinearly.

    Beyond the frame it is 0 with `beyond_is_zero`, else the nearest edge value.
    """
    height, width, channels = field.shape[1:]
    if not beyond_is_zero:
        y, x = ops.clip(y, 0.0, height - 1.0), ops.clip(x, 0.0, width - 1.0)
    y0, x0 = ops.floor(y), ops.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    flat = ops.reshape(field, (-1, channels))
    batch = ops.shape(field)[0]
    offsets = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))
    value = 0.0
    for dy, dx, weight in (
        (0, 0, (1 - fy) * (1 - fx)),
        (1, 0, fy * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 1, fy * fx),
    ):
        yi, xi = y0 + dy, x0 + dx
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        index = offsets + ops.clip(yi, 0, height - 1) * width + ops.clip(xi, 0, width - 1)
        value = value + ops.where(inside, weight, 0.0)[..., None] * ops.take(flat, index, axis=0)
    return value


def advect(frame, motion, steps: int):
    """`frame` (B, H, W, C) moved along `motion` (B, H, W, 2) for k = 1..steps frames.

    Semi-Lagrangian, as pysteps' extrapolation: each output pixel follows the motion upstream
    one frame at a time, taking the motion of the place its path has reached (so echo crossing
    from slow into fast flow speeds up, where one straight step of k times the motion at the
    output pixel would lose it), and takes the bilinear value where the path ends. From
    beyond the frame comes no echo (0), as in the optical-flow baseline; paths that leave it
    go on with the motion at its edge.

    Returns:
        (B, steps, H, W, C), the dtype of `frame`.
    """
    rows, cols = _pixel_grid(*frame.shape[1:3])
    motion = ops.cast(motion, "float32")
    values = ops.cast(frame, "float32")
    batch_of_zeros = ops.zeros_like(motion[..., 0])  # (B, H, W)
    y, x = batch_of_zeros + rows, batch_of_zeros + cols  # where each path has got to
    moved = []
    for _ in range(steps):
        step = _bilinear(motion, y, x, beyond_is_zero=False)
        y, x = y - step[..., 0], x - step[..., 1]
        moved.append(_bilinear(values, y, x, beyond_is_zero=True))
    return ops.cast(ops.stack(moved, axis=1), frame.dtype)
