"""Export the trained model to ONNX (clipping to the public bounds and the DP standardization
folded in, so it takes raw features) and prove onnxruntime reproduces torch on the validation
features before anything leaves (pass or fail only)."""
from __future__ import annotations

import io

import numpy as np
import onnxruntime
import torch
from torch import nn

from trainer_container.features import Standardizer

# Absolute and relative, as torch.testing compares float32 results: DP-SGD can leave logits in the
# tens or hundreds, where float32 itself rounds at 1e-5..1e-4 and two correct runtimes that sum in
# another order differ by a few ulps. An absolute bound alone failed correct exports at random.
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported ONNX model does not reproduce the trained torch model."""


class Standardize(nn.Module):
    """Standardizer.apply as a layer: clip to the bounds, subtract the mean, divide by the scale."""

    def __init__(self, standardizer: Standardizer):
        super().__init__()
        for name in ("low", "high", "mean", "scale"):
            self.register_buffer(name, torch.tensor(getattr(standardizer, name), dtype=torch.float32))

    def forward(self, x):
        return (torch.clamp(x, self.low, self.high) - self.mean) / self.scale


def with_standardization(model: nn.Module, standardizer: Standardizer) -> nn.Module:
    return nn.Sequential(Standardize(standardizer), model).eval()


def export_onnx(model: nn.Module, n_features: int) -> bytes:
    """Legacy exporter (single file, no onnxscript) with a dynamic batch axis."""
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.zeros(1, n_features), buffer, dynamo=False,
                      input_names=["features"], output_names=["output"],
                      dynamic_axes={"features": {0: "batch"}, "output": {0: "batch"}})
    return buffer.getvalue()


def verify_onnx(onnx_bytes: bytes, model: nn.Module, raw_features: np.ndarray) -> None:
    """onnxruntime must reproduce torch within TOLERANCE (absolute, plus relative to the output)
    on `raw_features` (the validation rows).
    Pass or fail is all that leaves: the difference itself is a value computed from private
    rows, so neither the output nor the error message carries it."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: raw_features.astype(np.float32)})
    with torch.no_grad():
        torch_out = model.eval()(torch.from_numpy(raw_features.astype(np.float32))).numpy()
    if onnx_out.shape != torch_out.shape or not np.allclose(onnx_out, torch_out, rtol=TOLERANCE, atol=TOLERANCE):
        raise ExportError(f"exported ONNX does not reproduce the torch model within {TOLERANCE} on the validation rows")
