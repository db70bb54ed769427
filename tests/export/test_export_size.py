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


def _tiny_int8_tflite() -> bytes:
    """QUANTIZE -> ADD (int8 constant) -> DEQUANTIZE, packed as the converter leaves it: one empty buffer
    per activation, every quantization vector written on its own."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    def q(scale):
        p = fb.QuantizationParametersT()
        p.scale, p.zeroPoint = [scale], [0]
        return p

    def tensor(name, ttype, buffer, quant=None):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name.encode(), [1, 4], ttype, buffer, quant
        return t

    m = fb.ModelT()
    m.version, m.description = 3, "test"
    codes = []
    for op in (fb.BuiltinOperator.QUANTIZE, fb.BuiltinOperator.ADD, fb.BuiltinOperator.DEQUANTIZE):
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = op, min(op, 127), 1
        codes.append(c)
    m.operatorCodes = codes
    m.buffers = [fb.BufferT() for _ in range(6)]
    m.buffers[3].data = list(np.array([1, -2, 3, 40], np.int8).view(np.uint8))
    sg = fb.SubGraphT()
    sg.tensors = [tensor("x", fb.TensorType.FLOAT32, 1), tensor("xq", fb.TensorType.INT8, 2, q(0.05)),
                  tensor("c", fb.TensorType.INT8, 3, q(0.05)), tensor("yq", fb.TensorType.INT8, 4, q(0.1)),
                  tensor("y", fb.TensorType.FLOAT32, 5)]
    ops = []
    for code, ins, outs in ((0, [0], [1]), (1, [1, 2], [3]), (2, [3], [4])):
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, ins, outs
        if code == 1:
            op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
        ops.append(op)
    sg.operators, sg.inputs, sg.outputs = ops, [0], [4]
    m.subgraphs = [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _tflite_run(buf: bytes, x: np.ndarray, xnnpack: bool) -> np.ndarray:
    from ai_edge_litert import interpreter as lite

    it = lite.Interpreter(model_content=buf, experimental_op_resolver_type=(
        lite.OpResolverType.AUTO if xnnpack else lite.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def test_tflite_written_compactly_computes_the_same(tmp_path):
    """embed_metadata: data-less tensors share buffer 0, equal quantization vectors are stored once,
    the contract is readable back, and the interpreter computes the same values."""
    from ai_edge_litert import schema_py_generated as fb

    from edgecnn.export.base import contract_json
    from edgecnn.export.tflite import embed_metadata, read_metadata

    before = _tiny_int8_tflite()
    contract = {"class_names": ["a", "b"], "precision": "int8"}
    after = embed_metadata(before, "edgecnn_contract", contract_json(contract).encode())
    path = tmp_path / "m.tflite"
    path.write_bytes(after)
    assert read_metadata(path) == contract

    m = fb.Model.GetRootAs(after, 0)
    sg = m.Subgraphs(0)
    assert m.BuffersLength() == 3                     # the empty one, the constant, the contract
    assert [sg.Tensors(i).Buffer() for i in range(5)] == [0, 0, 1, 0, 0]
    assert m.Buffers(1).DataAsNumpy().view(np.int8).tolist() == [1, -2, 3, 40]

    def where(i: int, field: int) -> int:            # file position of a quantization vector
        tab = sg.Tensors(i).Quantization()._tab
        return tab.Vector(tab.Offset(field))

    scale, zero_point = 8, 10                         # vtable offsets of QuantizationParameters.scale / zero_point
    assert where(1, zero_point) == where(2, zero_point) == where(3, zero_point)
    assert where(1, scale) == where(2, scale) != where(3, scale)
    assert sg.Tensors(3).Quantization().ScaleAsNumpy().tolist() == [np.float32(0.1)]

    x = np.array([[0.3, -1.0, 2.0, 0.01]], np.float32)
    for xnnpack in (True, False):
        np.testing.assert_array_equal(_tflite_run(after, x, xnnpack), _tflite_run(before, x, xnnpack))


def test_openvino_xml_without_indentation_loads_and_computes_the_same(tmp_path):
    import openvino as ov
    import openvino.opset13 as ops

    from edgecnn.export.openvino import compact_xml

    p = ops.parameter([1, 4], np.float32, name="x")
    y = ops.relu(ops.add(p, ops.constant(np.array([[1, -2, 3, -4]], np.float32))))
    model = ov.Model([y], [p])
    tricky = json.dumps({"class_names": ["a /> <b>", 'say "hi"\n  <', "  "]}, separators=(",", ":"))
    model.set_rt_info(tricky, ["edgecnn_contract"])
    ov.save_model(model, str(tmp_path / "a.xml"))
    text = (tmp_path / "a.xml").read_text()
    small = compact_xml(text)
    assert "\n\t" in text and "\n" not in small.split("?>", 1)[1].strip() and '" />' not in small
    assert len(small) < len(text) and "\t" not in small
    (tmp_path / "b.xml").write_text(small)
    (tmp_path / "b.bin").write_bytes((tmp_path / "a.bin").read_bytes())
    core = ov.Core()
    back = core.read_model(str(tmp_path / "b.xml"))
    assert back.get_rt_info(["edgecnn_contract"]).astype(str) == tricky
    x = np.array([[0.5, 1.0, -7.0, 9.0]], np.float32)
    np.testing.assert_array_equal(core.compile_model(back, "CPU")(x)[0],
                                  core.compile_model(str(tmp_path / "a.xml"), "CPU")(x)[0])


def test_compact_xml_leaves_a_document_it_would_change_as_it_is():
    from edgecnn.export.openvino import compact_xml

    assert compact_xml('<a>\n  <b k="v" />\n</a>') == '<a><b k="v"/></a>'
    changes_text = '<a>\n  <b>say "  /> here</b>\n</a>'   # '>' and '"' may stand unescaped in text
    assert compact_xml(changes_text) == changes_text


@pytest.mark.slow   # the default recipe up to export: ~2.5 min on 2 quiet cores
def test_default_recipe_int8_files_are_at_most_30_percent_of_fp32(tmp_path):
    """Whole files, as the issue counts them (the IR as .xml + .bin, what a user ships). The recipe's
    width is what makes this hold for the IR: its .xml grows with layers, not weights
    (benchmarks/results/default_recipe.md: 46% at width 16, 29% at the default 40)."""
    from edgecnn.export import Artifact
    from edgecnn.pipeline import Pipeline
    from edgecnn.recipe import load_recipe

    Pipeline(load_recipe(None), tmp_path / "run").run(until="export")
    out = tmp_path / "run" / "export"
    arts = {(a.format, a.precision): a for a in map(Artifact.load, sorted(out.glob("*.json")))}
    assert len(arts) == 6
    ratio = {f: arts[(f, "int8")].size_bytes / arts[(f, "fp32")].size_bytes for f in ("onnx", "tflite", "openvino")}
    assert all(r <= 0.30 for r in ratio.values()), ratio
    bins = {p: (out / f"model_{p}.bin").stat().st_size for p in ("fp32", "int8")}
    assert bins["int8"] <= 0.26 * bins["fp32"], bins      # int8 weights, not float ones with int8 beside them
    xml = (out / "model_int8.xml").read_text()
    assert "\n\t" not in xml and "Runtime_version" not in xml
    for a in arts.values():   # the bar: 99.5% top-1 agreement with the reference in every runtime
        assert a.verification["passed"] and a.verification["top1_agreement"] >= 0.995, (a.files[0].name, a.verification)
    import json
    q = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["quantize"]["metrics"]
    assert q["observer"] in ("histogram", "minmax")     # 'auto' resolved, and the manifest says to what
