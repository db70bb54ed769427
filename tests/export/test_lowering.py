"""Runtime-aware lowering of QDQ ONNX: exact passes change no result, and ORT fuses what they leave."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgecnn.export.lowering import (LoweringConfig, compare, lower_qdq, ort_fused_ops,  # noqa: E402
                                     preset)


def _qdq(nodes, inits, src, name, scale, zp):
    inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
              numpy_helper.from_array(np.array(zp, np.int8), f"{name}_z")]
    nodes += [helper.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def _conv(nodes, inits, src, name, cin, cout, rng):
    w = rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)
    inits += [numpy_helper.from_array(w, f"{name}_w"),
              numpy_helper.from_array((rng.random(cout) * 0.01 + 1e-3).astype(np.float32), f"{name}_ws"),
              numpy_helper.from_array(np.zeros(cout, np.int8), f"{name}_wz")]
    nodes += [helper.make_node("DequantizeLinear", [f"{name}_w", f"{name}_ws", f"{name}_wz"], [f"{name}_wdq"], axis=0),
              helper.make_node("Conv", [src, f"{name}_wdq"], [f"{name}_y"], pads=[1, 1, 1, 1])]
    return f"{name}_y"


def make_model(float_residual: bool = True, clip6: bool = False):
    """x -> QDQ -> conv -> relu -> QDQ -> conv -> QDQ -> add(residual) -> relu -> QDQ -> mean(H, W).

    With float_residual the add reads the block input in float while it is also quantized, as the
    PT2E graphs of torchvision ResNets do."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    nodes.append(helper.make_node("Relu", ["x"], ["r0"]))
    a = _qdq(nodes, inits, "r0", "in", 0.02, -128)
    c1 = _conv(nodes, inits, a, "c1", 8, 8, rng)
    act = "Clip" if clip6 else "Relu"
    if clip6:
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
    nodes.append(helper.make_node(act, [c1, "lo", "hi"] if clip6 else [c1], ["r1"]))
    b = _qdq(nodes, inits, "r1", "a1", 0.05 if not clip6 else 6 / 255, -128)
    c2 = _conv(nodes, inits, b, "c2", 8, 8, rng)
    d = _qdq(nodes, inits, c2, "a2", 0.08, 5)
    nodes.append(helper.make_node("Add", [d, "r0" if float_residual else a], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum"], ["r2"]))
    e = _qdq(nodes, inits, "r2", "a3", 0.06, -128)
    nodes.append(helper.make_node("Relu", [e], ["r3"]))   # float-only reader of a DQ: left alone
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes.append(helper.make_node("ReduceMean", ["r3", "axes"], ["y"], keepdims=1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def x():
    return np.random.default_rng(1).standard_normal((4, 1, 8, 12, 12)).astype(np.float32).reshape(4, 8, 12, 12)


def test_exact_passes_change_no_result(x):
    model = make_model()
    res = lower_qdq(model, LoweringConfig())
    assert res.exact
    assert res.changes["uint8_activations"] > 0 and res.changes["fold_activation"] == 2   # conv relu, add relu
    d = compare(model.SerializeToString(), res.proto.SerializeToString(), x)
    assert d["max_abs_diff"] == 0.0
    # every activation zero point is uint8 now, weights stay int8
    zps = {t.name: numpy_helper.to_array(t) for t in res.proto.graph.initializer if t.name.endswith("_z_u8")}
    assert zps and all(v.dtype == np.uint8 for v in zps.values())
    assert zps["in_z_u8"] == 0
    assert all(numpy_helper.to_array(t).dtype == np.int8 for t in res.proto.graph.initializer
               if t.name.endswith("_wz"))
    assert model.graph.node[0].op_type == "Relu"   # input model untouched


def test_ort_fuses_the_lowered_graph(x):
    model = make_model()
    before = ort_fused_ops(model.SerializeToString())
    lowered = lower_qdq(model, preset("onnxruntime")).proto.SerializeToString()
    after = ort_fused_ops(lowered)
    assert after.get("QLinearConv", 0) == 2
    assert after.get("QLinearConv", 0) >= before.get("QLinearConv", 0)


def test_requantize_float_inputs_is_flagged_and_bounded(x):
    model = make_model()
    res = lower_qdq(model, LoweringConfig(requantize_float_inputs=True))
    assert not res.exact and res.changes["requantize_float_inputs"] == 1
    assert res.changes["fold_activation"] == 3   # the block input's relu now has one reader left
    assert [n.op_type for n in res.proto.graph.node].count("Relu") == 1   # the float-only reader stays
    d = compare(model.SerializeToString(), res.proto.SerializeToString(), x)
    assert d["max_abs_diff"] < 0.5   # residual moved by <= 0.01 before an add quantized at 0.08 steps
    fused = ort_fused_ops(res.proto.SerializeToString())
    assert fused.get("QLinearAdd", 0) == 1


def test_clip_folds_only_when_quantize_clamps_inside(x):
    model = make_model(clip6=True)
    res = lower_qdq(model, LoweringConfig(uint8_activations=False))
    assert res.changes.get("fold_activation") == 2   # clip(0, 6) with range [0, 6]; relu after the add
    assert compare(model.SerializeToString(), res.proto.SerializeToString(), x)["max_abs_diff"] == 0.0
    # a wider quantization range than the clip: the clip must stay
    wide = make_model(clip6=True)
    for t in wide.graph.initializer:
        if t.name == "a1_s":
            t.CopyFrom(numpy_helper.from_array(np.array(0.05, np.float32), "a1_s"))
    res = lower_qdq(wide, LoweringConfig(uint8_activations=False))
    assert res.changes.get("fold_activation") == 1
    assert "Clip" in [n.op_type for n in res.proto.graph.node]


def test_global_pool(x):
    model = make_model()
    res = lower_qdq(model, LoweringConfig(uint8_activations=False, fold_activation=False, global_pool=True))
    assert res.changes["global_pool"] == 1
    assert "GlobalAveragePool" in [n.op_type for n in res.proto.graph.node]
    assert compare(model.SerializeToString(), res.proto.SerializeToString(), x)["max_abs_diff"] < 1e-6


def test_global_pool_on_unnamed_nodes(x):
    """Written artifacts have no node names; two pools (as in squeeze-excitation nets) must stay valid."""
    model = make_model()
    mean = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    twin = helper.make_node("ReduceMean", ["r3", "axes"], ["y2"], keepdims=1)
    model.graph.node.append(twin)
    model.graph.node.append(helper.make_node("Add", ["y", "y2"], ["y_sum"]))
    model.graph.output[0].name = "y_sum"
    for n in model.graph.node:
        n.name = ""
    res = lower_qdq(model, LoweringConfig(uint8_activations=False, fold_activation=False, global_pool=True))
    assert res.changes["global_pool"] == 2 and mean.op_type == "ReduceMean"
    names = [n.name for n in res.proto.graph.node if n.op_type == "GlobalAveragePool"]
    assert len(set(names)) == 2
    assert compare(model.SerializeToString(), res.proto.SerializeToString(), x)["max_abs_diff"] < 1e-6


def test_unknown_preset_names_choices():
    with pytest.raises(Exception, match="onnxruntime"):
        preset("onnxrutime")


def _saturating_model():
    """x -> Q (int8, scale 1, zero point -128) -> DQ -> 1x1 conv (8 input channels, int8 weights 127, scale
    0.01) -> Q (scale 20). At x = 255 (uint8 255 after lowering) the exact output is 8 x 255 x 127 x 0.01 =
    2590.8; kernels that add u8 x s8 pairs in int16 saturate each pair at 32,767 and give 1310.7."""
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"), numpy_helper.from_array(np.array(-128, np.int8), "xz"),
             numpy_helper.from_array(np.full((2, 8, 1, 1), 127, np.int8), "w"),
             numpy_helper.from_array(np.array([0.01, 0.01], np.float32), "ws"),
             numpy_helper.from_array(np.zeros(2, np.int8), "wz"),
             numpy_helper.from_array(np.array(20.0, np.float32), "ys"), numpy_helper.from_array(np.array(-128, np.int8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xdq"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wdq"], axis=0),
             helper.make_node("Conv", ["xdq", "wdq"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_uint8_weights_is_exact_where_u8s8_kernels_saturate():
    from edgecnn.export.lowering import ort_session, ort_u8s8_saturates

    model = _saturating_model()
    x = np.full((1, 8, 4, 4), 255.0, np.float32)
    literal = ort_session(model.SerializeToString(), optimize=False).run(None, {"x": x})[0]
    assert literal.max() == pytest.approx(2600.0)          # 2590.8 on the grid of 20
    exact = lower_qdq(model, preset("onnxruntime-exact"))
    assert exact.exact and exact.changes["uint8_weights"] == 1
    w = {t.name: numpy_helper.to_array(t) for t in exact.proto.graph.initializer}
    assert w["w_u8"].dtype == np.uint8 and int(w["w_u8"].max()) == 255 and int(w["wz_u8"][0]) == 128
    exact_bytes = exact.proto.SerializeToString()
    assert ort_fused_ops(exact_bytes).get("QLinearConv") == 1
    assert compare(model.SerializeToString(), exact_bytes, x)["max_abs_diff"] == 0.0          # literal
    assert np.array_equal(ort_session(exact_bytes).run(None, {"x": x})[0], literal)           # fused u8 x u8
    # the u8s8 form ('onnxruntime'): literal still exact; fused, wrong by half exactly where the probe says so
    assert preset("auto") == preset("onnxruntime-exact" if ort_u8s8_saturates() else "onnxruntime")
    u8s8 = lower_qdq(model, preset("onnxruntime")).proto.SerializeToString()
    assert "uint8_weights" not in lower_qdq(model, preset("onnxruntime")).changes
    assert compare(model.SerializeToString(), u8s8, x)["max_abs_diff"] == 0.0
    fused = ort_session(u8s8).run(None, {"x": x})[0]
    assert ort_u8s8_saturates() == (not np.array_equal(fused, literal))
    if ort_u8s8_saturates():
        assert fused.max() == pytest.approx(1320.0)        # 4 pairs x 32,767 x 0.01 on the grid of 20


def test_failed_onnx_int8_verification_names_saturation_and_the_fix():
    from edgecnn.export.config import ExportConfig
    from edgecnn.export.lowering import ort_u8s8_saturates
    from edgecnn.export.verify import _saturation_hint

    hint = _saturation_hint("onnx", "int8", ExportConfig(lowering="onnxruntime"))
    assert bool(hint) == ort_u8s8_saturates()
    if hint:
        assert "onnxruntime-exact" in hint and "saturating int16" in hint
    assert _saturation_hint("onnx", "int8", ExportConfig(lowering="onnxruntime-exact")) == ""
    assert _saturation_hint("onnx", "int8", ExportConfig()) == ""          # 'auto' is exact on this machine
    assert _saturation_hint("openvino", "int8", ExportConfig()) == ""
    assert _saturation_hint("onnx", "fp32", ExportConfig()) == ""
