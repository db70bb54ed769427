"""What the exporters strip or share so an int8 file is its weights, not its exporter's leftovers."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper


def _tiny_onnx():
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="node_matmul_with_a_long_name"),
             helper.make_node("Relu", ["h"], ["y"], name="node_relu_with_a_long_name")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w],
                              value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 4])])
    graph.metadata_props.add(key="pkg.torch.export.ExportedProgram.graph_signature", value="x" * 500)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="stale", value="y" * 100)
    return model


def test_finalize_proto_keeps_only_what_a_runtime_or_app_reads():
    import onnxruntime as ort

    from edgecnn.export.onnx import METADATA_KEY, finalize_proto

    model = _tiny_onnx()
    x = np.ones((2, 3), np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    contract = {"precision": "int8", "class_names": ["a", "b"]}
    out = finalize_proto(model, contract)
    onnx.checker.check_model(out, full_check=True)
    assert not out.graph.value_info and not out.graph.metadata_props
    assert all(n.name == "" for n in out.graph.node)
    assert [p.key for p in out.metadata_props] == [METADATA_KEY]
    assert json.loads(out.metadata_props[0].value) == contract
    assert out.ByteSize() < _tiny_onnx().ByteSize() - 600
    after = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_lowering_a_written_file_infers_the_ranks_it_needs():
    from edgecnn.export.lowering import LoweringConfig, lower_qdq

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    g = helper.make_graph([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)], "g", [x], [y], [axes])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    assert not model.graph.value_info
    lowered = lower_qdq(model, LoweringConfig(uint8_activations=False, fold_activation=False, global_pool=True))
    assert [n.op_type for n in lowered.proto.graph.node] == ["GlobalAveragePool"]


@pytest.mark.parametrize("name,short", [
    ("pkg.BNCNN/torch.nn.modules.container.Sequential_features/torch.nn.modules.container.Sequential_7/"
     "torch.nn.modules.conv.Conv2d_0;", "features.7.0"),
    ("pkg.BNCNN/torch.nn.modules.container.Sequential_features/torch.nn.modules.activation.ReLU_2;;"
     "pkg.BNCNN/torch.nn.modules.container.Sequential_features/torch.nn.modules.conv.Conv2d_1;1", "features.1;1"),
    ("_aot_export_non_strict.<locals>.Wrapper;3", "Wrapper;3"),
    ("arith.constant1", "constant1"),
    ("serving_default_args_0", "serving_default_args_0"),
])
def test_tflite_tensor_names_become_module_paths(name, short):
    from edgecnn.export.tflite import short_name

    assert short_name(name) == short


def test_openvino_equal_constants_become_one():
    import openvino as ov
    import openvino.opset13 as ops

    from edgecnn.export.openvino import share_constants

    p = ops.parameter([1, 4], np.float32, name="x")
    c = np.array([[1, 2, 3, 4]], np.float32)
    y = ops.multiply(ops.add(p, ops.constant(c)), ops.constant(c.copy()))
    y = ops.add(y, ops.constant(c + 1))
    model = ov.Model([y], [p])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    before = ov.Core().compile_model(model, "CPU")(x)[0]
    assert share_constants(model) == 1
    consts = [op for op in model.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert len(consts) == 2
    np.testing.assert_array_equal(ov.Core().compile_model(model, "CPU")(x)[0], before)


def test_onnx_and_openvino_share_one_torch_export(monkeypatch):
    import edgecnn.export.onnx as onnx_exporter
    from edgecnn.export import check_model

    calls = []
    real = onnx_exporter.to_onnx_proto

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_exporter, "to_onnx_proto", counting)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net(torch.zeros(1, 1, 8, 8))
    report = check_model(net, (1, 8, 8), ["onnx", "openvino"])
    assert report.ok, report.summary()
    assert len(calls) == 1
