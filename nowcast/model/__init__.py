"""The fused-gate ConvLSTM cell, its sequence layer, the encoder-forecaster and the registry."""

from nowcast.model.cell import ConvLSTM, FusedConvLSTMCell
from nowcast.model.encoder_forecaster import EncoderForecaster
from nowcast.model.registry import build_model, frame_multiple

__all__ = [
    "ConvLSTM",
    "EncoderForecaster",
    "FusedConvLSTMCell",
    "build_model",
    "frame_multiple",
]
