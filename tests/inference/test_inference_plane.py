"""The inference data plane (trainer_container/inference.py) on small loan batches: predictions
equal plain onnxruntime's on the same rows, go back only under the requester's key, in input
order, and a bad batch is refused by name before any prediction, leaving no output and no
plaintext anywhere on disk."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from local_emulator import loan_data
from local_emulator.loan_reference import (
    FEATURE_BOUNDS,
    FEATURE_COLUMNS,
    TARGET,
    loan_join_spec,
    loan_training_config,
)
from shared import package
from shared.pipeline import JoinSpec, TrainingConfig
from trainer_container import inference
from trainer_container.inference import InferenceError, InferenceSpec

CUSTOMERS = 300  # the bank's customers drawn; those with a bureau file (about 85%) are the rows
REQUESTER_KEY, OTHER_KEY = bytes(range(32)), bytes(range(1, 33))


def linear_model(width: int = len(FEATURE_COLUMNS), outputs: int = 1, seed: int = 0) -> bytes:
    """A real ONNX graph (features @ W + b) giving spread logits on loan rows: each feature
    centred and scaled by its public bounds."""
    low, high = (np.array([FEATURE_BOUNDS[c][i] for c in FEATURE_COLUMNS[:width]]) for i in (0, 1))
    scaled = np.random.default_rng(seed).normal(size=(width, outputs)) * 4 / (high - low).reshape(-1, 1)
    weights, bias = scaled.astype(np.float32), (-(low + high) / 2 @ scaled).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["z"]), helper.make_node("Add", ["z", "b"], ["logit"])],
        "linear", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch", outputs])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def spec(loss: str = "bce_with_logits", threshold: float = 0.5, max_rows: int = 10_000) -> InferenceSpec:
    return InferenceSpec.from_terms(JoinSpec.from_dict(loan_join_spec()),
                                    TrainingConfig.from_dict(loan_training_config(loss=loss)),
                                    {"threshold": threshold, "max_rows": max_rows})


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """The bank's prepared rows: its own loan ids and every feature, categories coded."""
    x, _ = loan_data.joined_sample(CUSTOMERS, seed=3, features=FEATURE_COLUMNS, target=TARGET)
    table = pd.DataFrame(x, columns=list(FEATURE_COLUMNS))
    table.insert(0, "row_id", [f"LN{i:010d}" for i in range(len(table))])
    return table


def encrypted_batch(folder: Path, text: bytes, key: bytes = REQUESTER_KEY) -> Path:
    path = folder / "batch.ccr"
    with open(path, "wb") as out:
        package.encrypt_stream(io.BytesIO(text), out, key, "bank-batch-1", "text/csv", None)
    return path


def csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, lineterminator="\n").encode()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """An empty folder as the process's temporary directory, to prove nothing is spooled there."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def run(tmp_path: Path, batch: Path, inference_spec: InferenceSpec, model: bytes | None = None):
    with open(batch, "rb") as src:
        return inference.run_inference(model or linear_model(), inference_spec, src, REQUESTER_KEY,
                                       tmp_path / "predictions.ccr", REQUESTER_KEY, "bank-output-1")


def decrypted(path: Path, key: bytes = REQUESTER_KEY) -> pd.DataFrame:
    plain = io.BytesIO()
    package.decrypt_stream(io.BytesIO(path.read_bytes()), plain, key)
    return pd.read_csv(io.BytesIO(plain.getvalue()), dtype={"row_id": str})


def plain_probabilities(model: bytes, table: pd.DataFrame) -> np.ndarray:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"features": table[list(FEATURE_COLUMNS)].to_numpy(np.float32)})
    return (1 / (1 + np.exp(-logits[:, 0]))).astype(np.float32)


def files_holding(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("parse_bytes", [inference.PARSE_BYTES, 257])  # 257: rows split across parses
def test_predictions_equal_plain_onnxruntimes_in_input_order(tmp_path, private_tmp, rows, monkeypatch, parse_bytes):
    monkeypatch.setattr(inference, "PARSE_BYTES", parse_bytes)
    monkeypatch.setattr(inference, "PREDICT_ROWS", 64)  # several onnxruntime calls
    shuffled = rows[["row_id", *reversed(FEATURE_COLUMNS)]]  # the batch's column order is free
    result = run(tmp_path, encrypted_batch(tmp_path, csv_bytes(shuffled)), spec(threshold=0.4))
    out = decrypted(tmp_path / "predictions.ccr")
    expected = plain_probabilities(linear_model(), rows)
    assert result.rows == len(rows) and list(out.columns) == ["row_id", "probability", "label"]
    assert out["row_id"].tolist() == rows["row_id"].tolist()  # the requester's rows, each once, in order
    np.testing.assert_allclose(out["probability"].to_numpy(), expected, rtol=0, atol=5.01e-10)  # 9 decimals
    np.testing.assert_array_equal(out["label"].to_numpy(), (expected >= 0.4).astype(int))
    assert 0 < out["label"].sum() < len(rows)  # the threshold splits this batch: the comparison means something
    assert result.manifest.content_type == "text/csv" and result.manifest.blake3
    assert not list(private_tmp.iterdir())
    assert files_holding(tmp_path, b"LN0000000007") == []  # no plaintext row anywhere on disk


def test_the_predictions_text():
    ids = np.array(["LN1", "b-2", "c"], dtype=object)
    text = inference.predictions_csv(ids, np.array([0.0, 1.0, 0.25], np.float32), 0.25)
    assert text == b"row_id,probability,label\nLN1,0.000000000,0\nb-2,1.000000000,1\nc,0.250000000,1\n"
    assert inference.predictions_csv(ids[:0], np.array([], np.float32), 0.5) == b"row_id,probability,label\n"


def test_predictions_decrypt_only_with_the_requesters_key(tmp_path, private_tmp, rows):
    run(tmp_path, encrypted_batch(tmp_path, csv_bytes(rows)), spec())
    output = tmp_path / "predictions.ccr"
    assert package.read_header(output.read_bytes()).key_id == "bank-output-1"
    with pytest.raises(package.WrongKey):
        decrypted(output, OTHER_KEY)  # the model owner's or the bureau's key opens nothing
    assert len(decrypted(output)) == len(rows)


def test_two_class_and_probability_models(rows):
    table = rows.head(20)[list(FEATURE_COLUMNS)].to_numpy(np.float32)
    session = onnxruntime.InferenceSession(linear_model(outputs=2), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"features": table})
    predictor = inference.Predictor(linear_model(outputs=2), spec(loss="cross_entropy"))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predictor.probabilities(table), softmax[:, 1], rtol=1e-6)
    assert inference.probability(np.array([[0.25]], np.float32), "probability")[0] == np.float32(0.25)


def without(table: pd.DataFrame, column: str) -> pd.DataFrame:
    return table.drop(columns=[column])


def with_value(table: pd.DataFrame, column: str, value) -> pd.DataFrame:
    changed = table.astype({column: object}).copy()
    changed.loc[5, column] = value
    return changed


BAD_BATCHES = {
    "a missing feature column": (lambda t: csv_bytes(without(t, "loan_grade")), r"batch has no column loan_grade"),
    "another party's column (the target)": (lambda t: csv_bytes(t.assign(loan_status=0)),
                                            r"column\(s\) the model does not take: loan_status"),
    "a column twice": (lambda t: csv_bytes(t).replace(b"row_id,", b"row_id,loan_amnt,", 1),
                       r"names column\(s\) loan_amnt more than once"),
    "no row id column": (lambda t: csv_bytes(without(t, "row_id")), r"batch has no column row_id \(the row id column\)"),
    "a missing row id": (lambda t: csv_bytes(with_value(t, "row_id", None)), r"batch column row_id has rows without"),
    "text in a feature": (lambda t: csv_bytes(with_value(t, "loan_int_rate", "RENT")),
                          r"batch column loan_int_rate must hold numbers only"),
    "a boolean feature": (lambda t: csv_bytes(t.assign(person_age=t.index % 2 == 0)),
                          r"batch column person_age must hold numbers only"),
    "a missing value": (lambda t: csv_bytes(with_value(t, "person_income", None)),
                        r"batch column person_income has missing or non-finite values"),
    "an infinite value": (lambda t: csv_bytes(with_value(t, "loan_amnt", "inf")),
                          r"batch column loan_amnt has missing or non-finite values"),
    "a surplus field": (lambda t: csv_bytes(t).replace(b"\nLN0000000003,", b"\nLN0000000003,1,", 1),
                        r"a row with more fields than its header"),
    "a quoted field": (lambda t: csv_bytes(t).replace(b"LN0000000004", b'"LN,0000000004"'), r"without quoted fields"),
    "not UTF-8": (lambda t: b"\xff\xfe" + csv_bytes(t), r"batch header is not UTF-8 CSV"),
}


@pytest.mark.parametrize("bad", BAD_BATCHES, ids=list(BAD_BATCHES))
def test_a_bad_batch_is_refused_by_name_before_any_prediction(tmp_path, private_tmp, rows, monkeypatch, bad):
    monkeypatch.setattr(inference, "PARSE_BYTES", 1024)  # the fault is found mid-stream, not in the first parse
    build, reason = BAD_BATCHES[bad]
    batch = encrypted_batch(tmp_path, build(rows))
    before = batch.read_bytes()
    predicted = []
    monkeypatch.setattr(inference.Predictor, "probabilities", lambda self, x: predicted.append(x))
    with pytest.raises(InferenceError, match=reason) as refusal:
        run(tmp_path, batch, spec())
    assert predicted == []
    assert "LN00000000" not in str(refusal.value) and "RENT" not in str(refusal.value)  # names, never values
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.ccr", "tmp"]  # no output, not even partial
    assert not list(private_tmp.iterdir())
    assert batch.read_bytes() == before  # the requester's batch is untouched


def test_a_batch_over_max_rows_is_refused_before_any_prediction(tmp_path, private_tmp, rows, monkeypatch):
    monkeypatch.setattr(inference, "PARSE_BYTES", 1024)
    monkeypatch.setattr(inference.Predictor, "probabilities", lambda self, x: pytest.fail("predicted"))
    with pytest.raises(InferenceError, match=rf"more rows than the contract's max_rows \({len(rows) - 1}\)"):
        run(tmp_path, encrypted_batch(tmp_path, csv_bytes(rows)), spec(max_rows=len(rows) - 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.ccr", "tmp"]
    assert not list(private_tmp.iterdir())


def test_a_batch_under_another_key_or_tampered_gives_no_output(tmp_path, private_tmp, rows):
    batch = encrypted_batch(tmp_path, csv_bytes(rows), key=OTHER_KEY)
    with pytest.raises(package.WrongKey):
        run(tmp_path, batch, spec())
    batch = encrypted_batch(tmp_path, csv_bytes(rows))
    data = bytearray(batch.read_bytes())
    data[-40] ^= 1
    batch.write_bytes(bytes(data))
    with pytest.raises(package.TamperedPackage):
        run(tmp_path, batch, spec())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch.ccr", "tmp"]
    assert files_holding(tmp_path, b"LN0000000007") == []


def test_a_model_that_does_not_fit_the_contract_stops_before_the_batch_is_read(tmp_path, rows):
    batch = encrypted_batch(tmp_path, csv_bytes(rows))
    with open(batch, "rb") as src:
        with pytest.raises(InferenceError, match="the model takes 10 features, the contract's join has 11"):
            inference.run_inference(linear_model(width=10), spec(), src, REQUESTER_KEY, tmp_path / "out.ccr",
                                    REQUESTER_KEY, "bank-output-1")
        assert src.tell() == 0
    with pytest.raises(InferenceError, match="gives 1 outputs per row, a two_class_logits needs 2"):
        inference.Predictor(linear_model(), spec(loss="cross_entropy"))
    with pytest.raises(InferenceError, match="loss mse gives no probability"):
        spec(loss="mse")
    assert not (tmp_path / "out.ccr").exists()
