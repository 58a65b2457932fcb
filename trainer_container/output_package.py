"""The only things that leave the clean room: the trained ONNX model, aggregate metrics and
the privacy report, zipped (then encrypted for the TDC by the caller)."""
from __future__ import annotations

import io
import json
import zipfile

CONTENT_TYPE = "application/vnd.ccr.output+zip"
MEMBERS = ("model.onnx", "metrics.json", "privacy.json")


def build_output_zip(onnx_model: bytes, metrics: dict, privacy: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", onnx_model)
        archive.writestr("metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        archive.writestr("privacy.json", json.dumps(privacy, indent=2, sort_keys=True))
    return buffer.getvalue()
