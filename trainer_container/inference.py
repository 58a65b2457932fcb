"""Confidential batch inference's data plane: a requester's encrypted batch in, its encrypted
predictions out, nothing in plaintext on disk.

The batch is a version-2 package (`shared/package.py`) of a prepared CSV: a row id column
(opaque to us, returned as written) and exactly the model's feature columns (the contract's
join order, `JoinSpec.feature_columns`; any column order, numbers only: the preparation
configs code categories as numbers). It is decrypted as a stream straight into the CSV reader
(`_BatchReader` is the decryption's destination), so the plaintext exists only in memory, at
most `max_rows` rows of it. Every check - header, types, row ids, row count, then the package's
digest - happens while reading, and the model runs only once the whole batch passed: a bad
batch gets a clear error naming the column (never a value) and no prediction, no output.

Predictions run through onnxruntime in chunks. The probability is what the training config's
loss makes of the model's output: sigmoid of the logit (`bce_with_logits`), the output itself
(`bce`), the second class's softmax (`cross_entropy` with two outputs); the label is
probability >= the contract's threshold. The output is a CSV `row_id,probability,label`, one line
per input row in input order, encrypted under the requester's output key and moved into place
only when complete. Release rule (docs/TRUST_CHAIN.md): these per-row predictions go to the
party whose rows they are, and no one else.
"""
from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnxruntime
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from shared import package
from shared.pipeline import JoinSpec, TrainingConfig, check_compatible

CONTENT_TYPE = "text/csv"
ROW_ID = "row_id"
OUTPUT_COLUMNS = (ROW_ID, "probability", "label")
OUTPUT_SCHEMA = {"format": "csv", "columns": list(OUTPUT_COLUMNS)}
PARSE_BYTES = 4 << 20        # plaintext parsed per pandas call: its fixed cost vanishes; 1-8 MiB measured alike
PREDICT_ROWS = 1 << 16       # rows per onnxruntime call
MAX_HEADER_BYTES = 64 << 10
OUTPUTS = {"bce_with_logits": "logit", "bce": "probability", "cross_entropy": "two_class_logits"}


class InferenceError(ValueError):
    """A batch, model or term the inference refuses. Messages name columns, never values."""


@dataclass(frozen=True)
class InferenceSpec:
    """What the signed contract and the TDC's training config fix about an inference."""
    feature_columns: tuple[str, ...]
    model_output: str  # "logit", "probability" or "two_class_logits" (OUTPUTS)
    threshold: float
    max_rows: int

    @classmethod
    def from_terms(cls, join: JoinSpec, training: TrainingConfig, inference_terms: dict) -> InferenceSpec:
        """From the contract's join and inference slot (`shared.contract.inference`) and the
        model package's training config, which says what the model outputs."""
        check_compatible(join, training)
        if training.loss not in OUTPUTS:
            raise InferenceError(f"a model trained with loss {training.loss} gives no probability to infer")
        return cls(join.feature_columns, OUTPUTS[training.loss], float(inference_terms["threshold"]),
                   int(inference_terms["max_rows"]))


@dataclass(frozen=True)
class InferenceResult:
    rows: int  # the requester's own row count: it goes back to the requester only
    manifest: package.Manifest


class _BatchReader:
    """Destination of the batch's decryption: takes plaintext as it is decrypted, checks it and
    keeps the rows as arrays (row ids, float32 features). Runs on the decryption's writer
    thread, so a failure here stops the decryption."""

    def __init__(self, spec: InferenceSpec):
        self.spec = spec
        self.pending = bytearray()
        self.columns: list[str] | None = None
        self.ids: list[np.ndarray] = []
        self.features: list[np.ndarray] = []
        self.rows = 0
        self.failed = False

    def write(self, view) -> int:
        if self.failed:  # segments already queued after a refusal are dropped
            return len(view)
        try:
            self.pending += view
            if self.columns is None:
                self._read_header()
            if self.columns is not None and len(self.pending) >= PARSE_BYTES:
                cut = self.pending.rfind(b"\n") + 1
                if cut:
                    self._parse(bytes(self.pending[:cut]))
                    del self.pending[:cut]
        except BaseException:
            self.failed = True
            self.pending = bytearray()
            raise
        return len(view)

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, features) once the whole batch is decrypted and verified."""
        if self.columns is None:
            self._read_header(at_end=True)
        if self.pending.strip():
            self._parse(bytes(self.pending))
        self.pending = bytearray()
        ids = np.concatenate(self.ids) if self.ids else np.array([], dtype=object)
        features = (np.concatenate(self.features) if self.features
                    else np.empty((0, len(self.spec.feature_columns)), np.float32))
        self.ids, self.features = [], []
        return ids, features

    def _read_header(self, at_end: bool = False) -> None:
        end = self.pending.find(b"\n")
        if end < 0 and not at_end:
            if len(self.pending) > MAX_HEADER_BYTES:
                raise InferenceError(f"batch header line is longer than {MAX_HEADER_BYTES} bytes")
            return
        line = bytes(self.pending if end < 0 else self.pending[:end])
        try:
            names = line.decode("utf-8").rstrip("\r").split(",")
        except UnicodeDecodeError:
            raise InferenceError("batch header is not UTF-8 CSV") from None
        expected = (ROW_ID, *self.spec.feature_columns)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InferenceError(f"batch names column(s) {', '.join(twice)} more than once")
        missing = [c for c in expected if c not in names]
        if missing:
            raise InferenceError(f"batch has no column {', '.join(missing)}"
                                 + (" (the row id column)" if ROW_ID in missing else ""))
        extra = [n for n in names if n not in expected]
        if extra:
            raise InferenceError(f"batch has column(s) the model does not take: {', '.join(extra)} "
                                 f"(expected {ROW_ID} and the contract's feature columns only)")
        self.columns = names
        del self.pending[:len(self.pending) if end < 0 else end + 1]

    def _parse(self, data: bytes) -> None:
        if b'"' in data:
            raise InferenceError("batch rows must be plain CSV without quoted fields")
        try:
            # row ids as object, not str: pandas 3's string dtype parsed 1.7x slower here
            frame = pd.read_csv(io.BytesIO(data), header=None, names=self.columns, dtype={ROW_ID: object},
                                engine="c", skip_blank_lines=True)
        except (pd.errors.ParserError, ValueError):
            frame = None
        if frame is None or not isinstance(frame.index, pd.RangeIndex):  # pandas indexes by surplus leading fields
            raise InferenceError("batch has a row with more fields than its header")
        if self.rows + len(frame) > self.spec.max_rows:
            raise InferenceError(f"batch has more rows than the contract's max_rows ({self.spec.max_rows})")
        ids = frame[ROW_ID]
        if ids.isna().any():
            raise InferenceError(f"batch column {ROW_ID} has rows without a row id")
        block = np.empty((len(frame), len(self.spec.feature_columns)), dtype=np.float32)
        for j, column in enumerate(self.spec.feature_columns):
            values = frame[column]
            if not is_numeric_dtype(values) or is_bool_dtype(values):
                raise InferenceError(f"batch column {column} must hold numbers only")
            block[:, j] = values.to_numpy()
        finite = np.isfinite(block).all(axis=0)
        if not finite.all():
            column = self.spec.feature_columns[int(np.argmin(finite))]
            raise InferenceError(f"batch column {column} has missing or non-finite values")
        self.ids.append(ids.to_numpy(dtype=object))
        self.features.append(block)
        self.rows += len(frame)


def read_batch(spec: InferenceSpec, batch: BinaryIO, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, features) of an encrypted batch, decrypted and checked in memory."""
    start = batch.tell()
    header = package.read_header(batch)
    if header.manifest.content_type != CONTENT_TYPE:
        raise InferenceError(f"batch package holds {header.manifest.content_type}, not {CONTENT_TYPE}")
    batch.seek(start)
    reader = _BatchReader(spec)
    package.decrypt_stream(batch, reader, key)  # authenticates every segment, then the digest
    return reader.finish()


class Predictor:
    """The model in onnxruntime, checked against the spec before any batch is read."""

    def __init__(self, onnx_model: bytes, spec: InferenceSpec):
        try:
            self.session = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime's messages describe the graph, not data, but stay generic
            raise InferenceError("the model is not an ONNX graph onnxruntime can run") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise InferenceError("the model must take one input of shape [batch, features]")
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != len(spec.feature_columns):
            raise InferenceError(f"the model takes {width} features, the contract's join has "
                                 f"{len(spec.feature_columns)}")
        out_width = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None
        wanted = 2 if spec.model_output == "two_class_logits" else 1
        if isinstance(out_width, int) and out_width != wanted:
            raise InferenceError(f"the model gives {out_width} outputs per row, a {spec.model_output} needs {wanted}")
        self.input, self.spec = inputs[0].name, spec

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """float32 probability per row, PREDICT_ROWS rows per onnxruntime call."""
        result = np.empty(len(features), dtype=np.float32)
        for start in range(0, len(features), PREDICT_ROWS):
            (raw,) = self.session.run(None, {self.input: features[start:start + PREDICT_ROWS]})
            result[start:start + PREDICT_ROWS] = probability(raw, self.spec.model_output)
        return result


def probability(raw: np.ndarray, model_output: str) -> np.ndarray:
    """The positive class's probability from a model's raw output."""
    raw = np.asarray(raw, dtype=np.float32)
    if model_output == "logit":
        with np.errstate(over="ignore"):  # a logit below -88 overflows exp in float32: 1 / inf is the right 0
            return (1.0 / (1.0 + np.exp(-raw[:, 0]))).astype(np.float32)
    if model_output == "probability":
        return raw[:, 0]
    shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
    return (shifted[:, 1] / shifted.sum(axis=1)).astype(np.float32)


_DIGIT_WEIGHTS = 10 ** np.arange(8, -1, -1, dtype=np.int64)  # the 9 decimals of a probability


def predictions_csv(ids: np.ndarray, probabilities: np.ndarray, threshold: float) -> bytes:
    """`row_id,probability,label`, one line per row, in the given order; the probability with 9
    decimals (float32 carries about 7 significant digits), the label from the float32 itself.
    Each line's `,p.ddddddddd,l` is built as bytes by numpy for all rows at once: numpy's
    shortest float text alone took longer than this whole function (1.9 s per million rows)."""
    n = len(probabilities)
    scaled = np.rint(probabilities.astype(np.float64) * 1e9).astype(np.int64)  # in [0, 1e9]
    tails = np.empty((n, 14), dtype=np.uint8)
    tails[:, 0] = tails[:, 12] = ord(",")
    tails[:, 1] = ord("0") + (scaled >= 10**9)
    tails[:, 2] = ord(".")
    tails[:, 3:12] = ord("0") + (scaled[:, None] // _DIGIT_WEIGHTS) % 10
    tails[:, 13] = ord("0") + (probabilities >= threshold)
    lines = "\n".join(i + tail for i, tail in zip(ids.tolist(), tails.view("S14").ravel().astype("U14").tolist()))
    return (",".join(OUTPUT_COLUMNS) + "\n" + lines + ("\n" if n else "")).encode()


def run_inference(onnx_model: bytes, spec: InferenceSpec, batch: BinaryIO, batch_key: bytes, output_path: Path,
                  output_key: bytes, output_key_id: str) -> InferenceResult:
    """Scores the requester's encrypted batch and writes its encrypted predictions to
    `output_path`, which appears only when complete; on any refusal nothing is written."""
    predictor = Predictor(onnx_model, spec)  # a model that cannot serve the spec stops before the batch is read
    ids, features = read_batch(spec, batch, batch_key)
    text = predictions_csv(ids, predictor.probabilities(features), spec.threshold)
    del features
    manifest = _write_encrypted(text, Path(output_path), output_key, output_key_id)
    return InferenceResult(len(ids), manifest)


def _write_encrypted(text: bytes, output_path: Path, key: bytes, key_id: str) -> package.Manifest:
    """Encrypts from memory (a seekable source: no spool file) into a temporary file beside the
    destination, renamed into place only once the package is complete."""
    handle = tempfile.NamedTemporaryFile(dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".part",
                                         delete=False)
    try:
        with handle:
            manifest = package.encrypt_stream(io.BytesIO(text), handle, key, key_id, CONTENT_TYPE, OUTPUT_SCHEMA)
        os.replace(handle.name, output_path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return manifest
