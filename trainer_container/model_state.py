"""A run's trained model as the clean room keeps it for a continued run: the trainable layers
as ONNX and the DP scaling constants, nothing executable.

Claim: a continued run starts from exactly the model the previous run trained inside the clean
room, and says which. The state is a zip of `model.onnx` (the trainable layers, before the
standardization the TDC's export folds in) and `standardizer.json` (clip bounds, mean, scale);
its digest (`digest`) covers every weight and scaling constant, in order, with the layer
structure, so the continued run's attested outcome can name the model it started from.

Why the scaling constants travel with the weights: the model was trained on features scaled by
the previous run's DP statistics. Scaling the new rows with the same constants keeps its
function (its loss at step 0 equals the previous model's on the same rows) and spends nothing
(they were released by a run already charged: post-processing). Fresh statistics would move the
model before its first step.

Attacks stopped: a state whose layers differ from the contract's model, or whose clip bounds
differ from the training config's public bounds (refused before any data is read); a crafted
archive (size caps, ONNX through the allow-listed converter, finite constants only). The state
itself is kept encrypted under a per-contract key that only the clean room can release, and is
never uploaded by the TDC: that is the orchestration's part, not this module's."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np
from torch import nn

from trainer_container.export import export_onnx
from trainer_container.features import Standardizer
from trainer_container.onnx_convert import ModelConversionError, load_model, onnx_to_torch

CONTENT_TYPE = "application/vnd.ccr.model-state+zip"
MAX_MEMBER_BYTES = 512 * 1024 * 1024
_MEMBERS = ("model.onnx", "standardizer.json")
_LOSS_MEMBER = "loss.json"  # optional: the training config's loss, which says what the model outputs (inference)
LOSSES = ("bce_with_logits", "bce", "cross_entropy", "mse")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # equal states, equal bytes
_CONSTANTS = ("low", "high", "mean", "scale")


class ModelStateError(ValueError):
    """A model state that is malformed or does not fit the contract's model (names no values)."""


@dataclass(frozen=True)
class ModelState:
    model: nn.Sequential   # trainable, as onnx_to_torch makes it
    standardizer: Standardizer
    digest: str            # `digest(model, standardizer)`: which model a continued run starts from
    loss: str | None = None  # the loss it was trained with (what its output means), if the state says


def layers(model: nn.Module) -> list[str]:
    """The layer structure (type and shape of each layer, Identity layers left out: an inference
    Dropout converts to one and exports to nothing)."""
    return [repr(module) for module in model if not isinstance(module, nn.Identity)]


def digest(model: nn.Module, standardizer: Standardizer) -> str:
    """sha256 over the layer structure, every parameter (float32) in order, then the scaling
    constants (float64), each with its shape: equal weights and constants, equal digest."""
    hashed = hashlib.sha256(json.dumps(layers(model)).encode())
    tensors = [("<f4", p.detach().cpu().numpy()) for p in model.parameters()] + \
              [("<f8", np.asarray(getattr(standardizer, name))) for name in _CONSTANTS]
    for dtype, array in tensors:
        hashed.update(f"{dtype}{list(array.shape)}".encode())
        hashed.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return hashed.hexdigest()


def save(model: nn.Sequential, standardizer: Standardizer, loss: str | None = None) -> bytes:
    """The state as bytes (deterministic): the trainable layers' ONNX and the scaling constants,
    and the training loss when given (an inference reads what the output means from it, not
    from the TDC's package)."""
    constants = {name: np.asarray(getattr(standardizer, name), dtype=np.float64).tolist() for name in _CONSTANTS}
    members = {"model.onnx": export_onnx(model, len(constants["mean"])),
               "standardizer.json": json.dumps(constants).encode()}
    if loss is not None:
        members[_LOSS_MEMBER] = json.dumps({"loss": loss}).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in (*_MEMBERS, _LOSS_MEMBER):
            if name in members:
                archive.writestr(zipfile.ZipInfo(name, _FIXED_TIME), members[name])
    return buffer.getvalue()


def load(data: bytes) -> ModelState:
    """The state from `save`'s bytes; ModelStateError if it is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
            if sorted(set(sizes) - {_LOSS_MEMBER}) != sorted(_MEMBERS):
                raise ModelStateError(f"a model state holds exactly {' and '.join(_MEMBERS)} (and {_LOSS_MEMBER})")
            if any(size > MAX_MEMBER_BYTES for size in sizes.values()):
                raise ModelStateError("a model state member is too large")
            onnx_bytes, constants_text = (archive.read(name) for name in _MEMBERS)
            loss = _loss(archive.read(_LOSS_MEMBER)) if _LOSS_MEMBER in sizes else None
    except zipfile.BadZipFile:
        raise ModelStateError("a model state is a zip archive") from None
    try:
        model = onnx_to_torch(load_model(onnx_bytes))
    except ModelConversionError as error:
        raise ModelStateError(f"the model state's model.onnx: {error}") from None
    standardizer = _standardizer(constants_text, model.in_features)
    return ModelState(model, standardizer, digest(model, standardizer), loss)


def _loss(text: bytes) -> str:
    try:
        loss = json.loads(text).get("loss")
    except (ValueError, AttributeError):
        loss = None
    if loss not in LOSSES:
        raise ModelStateError(f"{_LOSS_MEMBER} names one loss of {', '.join(LOSSES)}")
    return loss


def _standardizer(text: bytes, n_features: int) -> Standardizer:
    shape = f"standardizer.json holds exactly {', '.join(_CONSTANTS)}, each a list of one number per feature"
    try:
        constants = json.loads(text)
    except ValueError:
        raise ModelStateError(shape) from None
    if not isinstance(constants, dict) or set(constants) != set(_CONSTANTS):
        raise ModelStateError(shape)
    try:
        arrays = {name: np.asarray(constants[name], dtype=np.float64) for name in _CONSTANTS}
    except (ValueError, TypeError):  # values that are not numbers
        raise ModelStateError(shape) from None
    if any(a.shape != (n_features,) for a in arrays.values()):
        raise ModelStateError(shape)
    if not all(np.isfinite(a).all() for a in arrays.values()) or not (arrays["scale"] > 0).all() \
            or not (arrays["low"] < arrays["high"]).all():
        raise ModelStateError("standardizer.json's constants must be finite, with low < high and scale > 0")
    return Standardizer(**arrays)


def check_fits(state: ModelState, contract_model: nn.Module, low: np.ndarray, high: np.ndarray) -> None:
    """Before any data is read: the state has the contract model's layers, and its clip bounds are
    the training config's public bounds (a continued run trains the same model on the same terms)."""
    if layers(state.model) != layers(contract_model):
        raise ModelStateError("the previous model's layers differ from the contract's model")
    if not (np.array_equal(state.standardizer.low, low) and np.array_equal(state.standardizer.high, high)):
        raise ModelStateError("the previous model was trained under other feature bounds than the training config's")


def starting_point(state: ModelState) -> dict:
    """What a continued run's attested outcome carries about where it started."""
    return {"previous_model_sha256": state.digest}

