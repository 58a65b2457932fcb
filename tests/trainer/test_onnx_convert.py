import io

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from local_emulator.covid_reference import N_FEATURES, covid_mlp, covid_onnx
from trainer_container.onnx_convert import ModelConversionError, load_model, onnx_to_torch


def _export(module: nn.Module, n_in: int) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), torch.zeros(1, n_in), buffer, dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return buffer.getvalue()


def test_covid_mlp_converts_to_an_equivalent_fully_trainable_model():
    converted = onnx_to_torch(load_model(covid_onnx(seed=3)))
    reference = covid_mlp(seed=3).eval()
    x = torch.randn(17, N_FEATURES)
    assert torch.allclose(converted(x), reference(x), atol=1e-6)
    assert sum(p.numel() for p in converted.parameters() if p.requires_grad) == \
        sum(p.numel() for p in reference.parameters())


def test_activations_and_inference_dropout_are_converted():
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 6), nn.LeakyReLU(0.2),
                           nn.Linear(6, 3), nn.Sigmoid(), nn.Linear(3, 2), nn.Softmax(dim=1))
    converted = onnx_to_torch(load_model(_export(module, 4)))
    x = torch.randn(5, 4)
    assert torch.allclose(converted(x), module.eval()(x), atol=1e-6)


def _graph(nodes, initializers, n_in=3, n_out=2):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n_out])],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k)
                                           for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_matmul_plus_add_becomes_a_trainable_linear_layer():
    w, b = np.arange(6).reshape(3, 2) / 10, np.array([0.5, -0.5])
    model = _graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
                   {"W": w, "B": b})
    converted = onnx_to_torch(load_model(model))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    assert np.allclose(converted(torch.from_numpy(x)).detach().numpy(), x @ w + b, atol=1e-6)
    assert all(p.requires_grad for p in converted.parameters())


def test_unsupported_op_is_refused_by_name():
    model = _graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Exp", ["h"], ["y"])],
                   {"W": np.ones((3, 2))})
    with pytest.raises(ModelConversionError, match="unsupported ONNX op 'Exp'"):
        onnx_to_torch(load_model(model))


def test_standalone_add_of_a_constant_is_refused():
    model = _graph([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Add", ["h", "B"], ["y"])],
                   {"B": np.ones(3)}, n_out=3)
    with pytest.raises(ModelConversionError, match="Add is supported only as the bias"):
        onnx_to_torch(load_model(model))


def test_unconsumed_weights_are_refused_as_frozen():
    model = _graph([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": np.ones((3, 2)), "Hidden": np.ones(50)})
    with pytest.raises(ModelConversionError, match="not consumed as weights"):
        onnx_to_torch(load_model(model))


def test_a_weight_shared_by_two_layers_is_refused_as_parameter_mismatch():
    model = _graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "W"], ["y"])],
                   {"W": np.ones((3, 3))}, n_out=3)
    with pytest.raises(ModelConversionError, match="weights would be frozen"):
        onnx_to_torch(load_model(model))


def test_branching_graph_is_refused():
    model = _graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["y"])], {}, n_out=3)
    with pytest.raises(ModelConversionError, match="single layer chain"):
        onnx_to_torch(load_model(model))


def test_garbage_bytes_are_refused():
    with pytest.raises(ModelConversionError, match="not a valid ONNX model"):
        load_model(b"definitely not onnx")


def test_graph_without_a_trainable_layer_is_refused():
    model = _graph([helper.make_node("Relu", ["x"], ["y"])], {}, n_out=3)
    with pytest.raises(ModelConversionError, match="no trainable layer"):
        onnx_to_torch(load_model(model))
