"""The TDC's decrypted model package: a zip holding `model.onnx` and `training.json`, nothing
executable. Size-capped so a crafted archive cannot exhaust memory."""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from shared.pipeline import PipelineConfigError, TrainingConfig

CONTENT_TYPE = "application/vnd.ccr.model+zip"
MAX_MEMBER_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class ModelPackage:
    onnx_bytes: bytes
    training: TrainingConfig


def read_model_package(path: Path) -> ModelPackage:
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for name in ("model.onnx", "training.json"):
                if name not in members:
                    raise PipelineConfigError(f"model package has no {name}")
                if members[name].file_size > MAX_MEMBER_BYTES:
                    raise PipelineConfigError(f"model package member {name} is too large")
            onnx_bytes = archive.read("model.onnx")
            training_text = archive.read("training.json")
    except zipfile.BadZipFile:
        raise PipelineConfigError("model package is not a zip archive") from None
    try:
        training = json.loads(training_text)
    except ValueError:
        raise PipelineConfigError("training.json is not JSON") from None
    return ModelPackage(onnx_bytes, TrainingConfig.from_dict(training))
