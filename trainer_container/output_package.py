"""The only things that leave the clean room: the trained ONNX model, aggregate metrics and
the privacy report, zipped (then encrypted for the TDC by the caller). Under a contract whose
inference workload says `weights_leave: false` the model stays inside (kept as the contract's
model state) and the output is the metrics and the privacy report only."""
from __future__ import annotations

import io
import json
import zipfile

CONTENT_TYPE = "application/vnd.ccr.output+zip"
MEMBERS = ("model.onnx", "metrics.json", "privacy.json")


def build_output_zip(onnx_model: bytes | None, metrics: dict, privacy: dict) -> bytes:
    """`onnx_model` None: the weights do not leave (no model.onnx member at all)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if onnx_model is not None:
            archive.writestr("model.onnx", onnx_model)
        archive.writestr("metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        archive.writestr("privacy.json", json.dumps(privacy, indent=2, sort_keys=True))
    return buffer.getvalue()
