"""ONNX graph -> trainable torch model, for an allow-list of ops only.

Why our own converter: onnx2torch/onnx2pytorch import torchvision (which cannot load beside
torch's CPU build here) and silently freeze weights. This one accepts a single chain of
dense layers and activations, maps it onto nn.Linear and activation modules, refuses anything
else by name, and proves every ONNX weight became a trainable parameter.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Flatten",
                 "Identity", "Dropout", "Softmax")


class ModelConversionError(ValueError):
    """The ONNX graph uses an op or shape the clean room does not train."""


def load_model(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for bad bytes
        raise ModelConversionError(f"not a valid ONNX model ({type(exc).__name__})") from None
    return model


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _linear(weight_out_in: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    out_features, in_features = weight_out_in.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(np.asarray(weight_out_in, dtype=np.float32)))
        if bias is not None:
            layer.bias.copy_(torch.tensor(np.asarray(bias, dtype=np.float32).reshape(out_features)))
    return layer


class _Converter:
    def __init__(self, graph):
        self.graph = graph
        self.weights = {}
        for init in graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelConversionError(f"initializer {init.name!r} uses external data")
            self.weights[init.name] = numpy_helper.to_array(init)
        self.used: set[str] = set()
        self.ignored: set[str] = set()  # non-weight initializers, e.g. Dropout's ratio

    def weight(self, name: str, node) -> np.ndarray:
        if name not in self.weights:
            raise ModelConversionError(f"{node.op_type} node {node.name!r} needs a constant weight input")
        self.used.add(name)
        return self.weights[name]

    def convert(self) -> nn.Sequential:
        inputs = [i for i in self.graph.input if i.name not in self.weights]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise ModelConversionError("the graph must have exactly one data input and one output")
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 2 or not dims[1].HasField("dim_value"):
            raise ModelConversionError("the graph input must be [batch, features] with a fixed feature count")
        self.in_features = dims[1].dim_value
        current = inputs[0].name
        layers: list[nn.Module] = []
        nodes = list(self.graph.node)
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if node.op_type not in SUPPORTED_OPS:
                raise ModelConversionError(
                    f"unsupported ONNX op {node.op_type!r} (allowed: {', '.join(SUPPORTED_OPS)})")
            data_inputs = [n for n in node.input if n and n not in self.weights]
            if data_inputs != [current]:
                raise ModelConversionError(f"node {node.name or node.op_type!r} is not part of a single layer chain")
            consumed_next = False
            if node.op_type == "MatMul":
                layer, consumed_next = self._matmul(node, nodes[i + 1] if i + 1 < len(nodes) else None)
            else:
                layer = self._layer(node)
            layers.append(layer)
            last = nodes[i + 1] if consumed_next else node
            extra_outputs = [o for o in last.output[1:] if o]
            if extra_outputs and any(o in n.input for n in nodes for o in extra_outputs):
                raise ModelConversionError(f"node {last.name or last.op_type!r} has a second output in use")
            current = last.output[0]
            i += 2 if consumed_next else 1
        if current != self.graph.output[0].name:
            raise ModelConversionError("the graph output is not the end of the layer chain")
        unused = set(self.weights) - self.used - self.ignored
        if unused:
            raise ModelConversionError(f"{len(unused)} initializer(s) are not consumed as weights")
        return nn.Sequential(*layers)

    def _layer(self, node) -> nn.Module:
        op, attrs = node.op_type, _attrs(node)
        if op == "Gemm":
            if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
                raise ModelConversionError("Gemm is supported only with alpha=1, beta=1, transA=0")
            w = self.weight(node.input[1], node)
            w = w if attrs.get("transB", 0) else w.T
            bias = self.weight(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
            return _linear(w, bias)
        if op == "Add":
            raise ModelConversionError("Add is supported only as the bias right after a MatMul")
        if op == "Relu":
            return nn.ReLU()
        if op == "Sigmoid":
            return nn.Sigmoid()
        if op == "Tanh":
            return nn.Tanh()
        if op == "LeakyRelu":
            return nn.LeakyReLU(float(attrs.get("alpha", 0.01)))
        if op == "Flatten":
            if attrs.get("axis", 1) != 1:
                raise ModelConversionError("Flatten is supported only with axis=1")
            return nn.Flatten()
        if op == "Identity":
            return nn.Identity()
        if op == "Dropout":
            for extra in node.input[1:]:
                if extra:
                    self.ignored.add(extra)
            if len(node.input) > 2 and node.input[2]:
                mode = self.weights.get(node.input[2])
                if mode is None or bool(np.asarray(mode).item()):
                    raise ModelConversionError("Dropout in training mode is not supported")
            return nn.Identity()  # inference-mode Dropout is the identity
        if op == "Softmax":
            axis = attrs.get("axis", -1)
            if axis not in (-1, 1):
                raise ModelConversionError("Softmax is supported only over the feature axis")
            return nn.Softmax(dim=-1)
        raise ModelConversionError(f"unsupported ONNX op {op!r}")

    def _matmul(self, node, following) -> tuple[nn.Module, bool]:
        w = self.weight(node.input[1], node)
        if w.ndim != 2:
            raise ModelConversionError("MatMul is supported only with a 2-D weight")
        bias = None
        fused = (following is not None and following.op_type == "Add"
                 and node.output[0] in following.input)
        if fused:
            other = [n for n in following.input if n != node.output[0]]
            if len(other) != 1 or other[0] not in self.weights:
                raise ModelConversionError("the Add after a MatMul must add a constant bias")
            bias = self.weight(other[0], following)
            if bias.size != w.shape[1]:
                raise ModelConversionError("the bias after a MatMul has the wrong size")
        return _linear(w.T, bias), fused


def onnx_to_torch(model: onnx.ModelProto) -> nn.Sequential:
    """The trainable torch equivalent of `model`; refuses graphs it cannot convert exactly."""
    converter = _Converter(model.graph)
    torch_model = converter.convert()
    if not any(isinstance(layer, nn.Linear) for layer in torch_model):
        raise ModelConversionError("the graph has no trainable layer")
    weight_elements = sum(int(converter.weights[name].size) for name in converter.used)
    trainable = sum(p.numel() for p in torch_model.parameters() if p.requires_grad)
    if trainable != weight_elements:
        raise ModelConversionError(
            f"{trainable} trainable parameters for {weight_elements} ONNX weight elements: weights would be frozen")
    torch_model.in_features = converter.in_features
    return torch_model
