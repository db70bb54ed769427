"""int8 quantization on one PT2E graph: PTQ, QAT, and an accuracy-aware float fallback.

The flow is PyTorch's graph-mode quantization:
`torch.export.export(model).module()` -> `prepare_pt2e` / `prepare_qat_pt2e` (observers or fake
quantizers inserted where the quantizer annotated the graph, conv+BN folded) -> calibrate or
fine-tune -> `convert_pt2e` (a graph of float ops between quantize/dequantize pairs). That one
graph is what every exporter reads: ONNX (QDQ), OpenVINO (via ONNX) and TFLite (litert-torch).

Which quantizer, and why: litert-torch's `PT2EQuantizer` (with its
`get_symmetric_quantization_config`). What it annotates is exactly what the three exporters lower
to int8 kernels: int8 activations per tensor (asymmetric, -128..127), int8 weights symmetric
(-127..127, zero point 0) per output channel or per tensor, float32 bias, and only ops every
runtime has int8 kernels for (conv, conv+ReLU, linear, add, mul, cat, max/avg pool), with
shape-only ops sharing their producer's scale. This is the TFLite int8 scheme, which ONNX QDQ and
OpenVINO FakeQuantize both represent exactly, and on this machine its graphs ran in ONNX Runtime,
OpenVINO and LiteRT with results identical to the fake-quant model (docs/ARCHITECTURE sketch:
99.9% agreement on mnist5k). torchao's own `X86InductorQuantizer` targets Inductor codegen (uint8
activations, patterns Inductor fuses) and gives graphs the litert converter does not take; the
XNNPACK quantizer left torchao for ExecuTorch. Asymmetric int8 activations can still run on
ONNX Runtime's fast u8s8 kernels: zero point z in int8 is z + 128 in uint8, same numbers.

Four gaps in that quantizer are filled here, in `EdgeQuantizer`: its `set_module_name` refuses a
`None` config (so a layer cannot be kept float), and its module-name filter parses
`nn_module_stack` keys in a format torch 2.14's export no longer writes. We keep layers float by
filtering nodes on the module path that export records (`nn_module_stack` values). And it fuses
conv+ReLU but not conv+ReLU6 (`hardtanh(0, 6)`, torchvision's MobileNetV2): there it observes the
conv's own output and lets the clamp share that range, so the int8 grid spans the pre-activation
range (median 2.2x wider than the [0, 6] the clamp leaves on a 224-px mobilenet_v2 built as the
benchmark suite builds it; the global pool, i.e. the classifier input, shares the last one).
`QuantizeConfig.clamped_outputs` (default true) annotates conv/linear -> ReLU6 as one op observed
after the clamp; the clamp then folds into the int8 conv (ONNX: Conv -> Clip -> QuantizeLinear,
the Clip dropped by the 'onnxruntime' lowering). On that model, top-1 on 300 test images before ->
after: fake-quant 68.33 -> 69.67, ONNX Runtime 62.00 -> 69.33, OpenVINO IR 63.00 -> 69.00, float
70.33 (benchmarks/results/quantize_224.md; docs/architecture.md). QAT graphs hold BN between conv
and clamp when they are annotated; they keep litert's annotation. Last, its add and add+ReLU
annotators find adds through `source_fn_stack` node metadata, which torch 2.14's export no longer
writes, so no tensor add was annotated: every residual add stayed float, and where an add read
another add's output (MobileNetV2) or a ResNet block's ReLU output, that read had no quantizer at
all. OpenVINO ran those adds in bf16 and the ONNX lowering had to requantize them inexactly.
`QuantizeConfig.int8_adds` (default true) annotates them (`_annotate_adds`).

Activation observers (`QuantizeConfig.observer`; weights are always min/max, symmetric, which is
what every runtime's own int8 weight quantizer does):

| name | PTQ | QAT | how the range is chosen |
|---|---|---|---|
| minmax | MinMaxObserver | FakeQuantize(MinMaxObserver) | full observed range |
| moving_average | MovingAverageMinMaxObserver | FusedMovingAvgObsFakeQuantize | EMA of per-batch min/max |
| histogram | HistogramObserver (litert's default) | refused | torch's approximate L2 search over a histogram |
| percentile | PercentileObserver (here) | refused | clip at the p-th / (100-p)-th percentile |
| mse | MSEObserver (here) | refused | grid search for the range with least expected squared error |
| auto (PTQ default) | each of `observer_candidates` | refused | the candidate whose int8 model agrees with float on most val images |

'auto' (the PTQ default; `observer_candidates` default histogram, minmax) calibrates once per
candidate on the same images and keeps the one whose int8 model's top-1 agrees with the float
model's on most of `sensitivity_samples` val images (ties: val top-1, then candidate order). Neither
observer wins everywhere: over three 224-px instances per model, the histogram observer was 3.4
points better than min/max on one mobilenet_v2 and 1.9 worse on another, and min/max was as good
or better on resnet18. 'auto' kept the better one wherever they differ by more than one image:
mean top-1 73.10 on mobilenet_v2 (histogram 72.50, min/max 71.97) and 87.37 on resnet18 (87.10,
87.37); benchmarks/results/quantize_seeds_auto_*.md, docs/architecture.md. Its cost is one more
calibration pass and one val pass per candidate.

Bias correction (`bias_correction`, null by default) is chosen the same way: each observer's
calibration is converted with and without it, and the four models (histogram / min/max x on / off)
are judged together; on first in ties. Correction helps most models a little and costs a few a lot
(a pruned 224-px mobilenet_v2: val agreement with float 49.6% with it, 68.8% without).

Accuracy-aware fallback (`max_accuracy_drop`): when all-int8 PTQ loses more val top-1 than the
budget, every conv/linear layer is ranked by leave-one-out sensitivity (PTQ of everything except
that layer; val top-1, KL to the float logits as tie-break), then layers are kept float greedily in
that order, each kept only if it raises val top-1, until the budget is met or `fallback_candidates`
layers were tried; then each kept layer is tried in int8 again (least helpful first) and goes back
to int8 if the budget holds without it, so no layer stays float that the budget does not need.
A float layer keeps float weights and output; its input and its consumers' inputs stay int8 where
their producers are int8 (DQ -> float op -> Q in ONNX terms). In QAT mode the
search still uses PTQ as a cheap proxy, and QAT then trains with the chosen layers float.

QAT refuses the histogram-based observers: a fake quantizer would redo the range search on every
training step, and training adapts the weights to the range anyway.
"""
from __future__ import annotations

import copy
import dataclasses
import time
import zipfile
from collections.abc import Callable, Iterable
import io
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from edgecnn.config import check, to_dict
from edgecnn.errors import CheckpointError, EdgecnnError
from edgecnn.progress import progress, status
from edgecnn.registry import Registry
from edgecnn.train import TrainConfig

__all__ = ["QuantizeConfig", "QuantizeResult", "quantize", "quantize_stage", "save_quantized",
           "load_quantized", "quantizable_layers", "ACTIVATION_OBSERVERS"]

Observer = Literal["minmax", "moving_average", "histogram", "percentile", "mse", "auto"]
_CONV_LINEAR = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.linear")
_BN_TARGETS = ("aten.batch_norm.default", "aten._native_batch_norm_legit.default",
               "aten.cudnn_batch_norm.default")


def _qat_train_defaults() -> TrainConfig:
    # QAT starts from a trained model: a few epochs at a tenth of the training lr, short warmup.
    return TrainConfig(epochs=3, lr=3e-4, warmup_epochs=0.0)


@dataclass
class QuantizeConfig:
    mode: Literal["ptq", "qat"] = "ptq"     # post-training calibration, or quantization-aware training
    per_channel: bool = True                # weights: symmetric int8 per output channel; false: per tensor
    weight_bits: Literal[8, 7] = 8          # 7: weights in [-64, 64] (ONNX Runtime's reduce_range), which its x64
    # u8s8 kernels without VNNI add in int16 without saturating (export/lowering.py, uint8_weights)
    observer: Observer | None = None        # activation range observer; null: auto (PTQ), moving_average (QAT).
    # auto: calibrate with each of observer_candidates, keep the one whose int8 top-1 agrees with float on most val images
    observer_candidates: list[str] = field(default_factory=lambda: ["histogram", "minmax"])   # observer auto's choice
    percentile: float = 99.99               # observer 'percentile' only: clip range, percent of values kept
    calibration_samples: int = 256          # images that set activation ranges (PTQ; QAT initial ranges)
    calibration: str | None = None          # manifest under calibration/ (or a path); null: data's calibration split
    calibration_batch_size: int = 32        # images per calibration forward pass
    bias_correction: bool | None = None     # PTQ: subtract each conv/linear's mean output shift due to int8
    # weights; null: PTQ tries on and off with each observer and keeps what agrees with float on most val
    # images (as observer 'auto' does); QAT off (it trains the bias)
    train: TrainConfig = field(default_factory=_qat_train_defaults)   # QAT fine-tuning (epochs, lr, ...)
    distill_from_float: bool = True         # QAT: add a KL loss towards the float model's logits
    distill_weight: float = 0.5             # QAT: share of the KL term in the loss, 0..1
    distill_temperature: float = 2.0        # QAT: softmax temperature of the KL term
    freeze_bn_after: int | None = 2         # QAT: epochs after which BN running stats stop updating; null: never
    freeze_observers_after: int | None = 2  # QAT: epochs after which activation/weight ranges stop updating
    max_accuracy_drop: float | None = None  # percentage points of val top-1 int8 may lose; null: no fallback
    fallback_candidates: int = 8            # most layers tried (in sensitivity order) for keeping in float
    sensitivity_samples: int = 1000         # val images used to rank layers and test each fallback step
    float_layers: list[str] = field(default_factory=list)   # module names always kept float (e.g. 'classifier.2')
    clamped_outputs: bool = True            # conv/linear + ReLU6: observe after the clamp (false: litert's
    # annotation, which observes the conv output before it)
    int8_adds: bool = True                  # tensor adds (residuals, + ReLU) as int8 ops; false: left float,
    # as litert's annotator leaves them under torch >= 2.9's export (see _annotate_adds)

    def __post_init__(self):
        check(self.weight_bits in (7, 8), "weight_bits", f"{self.weight_bits} is not 8 or 7")
        check(self.calibration_samples >= 1, "calibration_samples", f"{self.calibration_samples} must be >= 1")
        check(self.calibration_batch_size >= 1, "calibration_batch_size", "must be >= 1")
        check(50.0 < self.percentile <= 100.0, "percentile", f"{self.percentile} is outside (50, 100]")
        check(0.0 <= self.distill_weight <= 1.0, "distill_weight", f"{self.distill_weight} is outside [0, 1]")
        check(self.distill_temperature > 0, "distill_temperature", "must be > 0")
        for k in ("freeze_bn_after", "freeze_observers_after"):
            v = getattr(self, k)
            check(v is None or v >= 0, k, f"{v} must be >= 0 epochs (or null: never)")
        check(self.max_accuracy_drop is None or self.max_accuracy_drop >= 0, "max_accuracy_drop",
              f"{self.max_accuracy_drop} must be >= 0 percentage points")
        check(self.fallback_candidates >= 1, "fallback_candidates", "must be >= 1")
        check(self.sensitivity_samples >= 1, "sensitivity_samples", "must be >= 1")
        bad = [c for c in self.observer_candidates if c == "auto" or c not in ACTIVATION_OBSERVERS.names()]
        check(not bad and len(self.observer_candidates) >= 1, "observer_candidates",
              f"{bad or '[]'}: list one or more of {', '.join(ACTIVATION_OBSERVERS.names())}")
        if self.mode == "qat":
            check(self.observer in (None, "minmax", "moving_average"), "observer",
                  f"'{self.observer}' is a PTQ calibration observer; QAT needs one its fake quantizers can "
                  "update every step: use moving_average (the default) or minmax, or mode: ptq")
            check(not self.bias_correction, "bias_correction",
                  "applies to PTQ only (QAT trains the bias with the weights): set it to false")

    @property
    def resolved_bias_correction(self) -> bool:
        return self.mode == "ptq" if self.bias_correction is None else self.bias_correction

    @property
    def resolved_observer(self) -> str:
        return self.observer or ("moving_average" if self.mode == "qat" else "auto")


# ---------------------------------------------------------------------------------------------
# Observers
# ---------------------------------------------------------------------------------------------

def _observer_classes():
    """The two histogram-based observers this module adds; built lazily (torchao is heavy)."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        """Range = [(100-p)th, p-th] percentile of everything observed (read off the histogram)."""

        def __init__(self, percentile: float = 99.99, **kwargs):
            super().__init__(**kwargs)
            self.percentile = percentile

        def _non_linear_param_search(self):
            hist = self.histogram
            total = hist.sum()
            edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
            cdf = torch.cumsum(hist, 0) / total
            tail = (100.0 - self.percentile) / 100.0
            lo = int(torch.searchsorted(cdf, torch.tensor(tail)))
            hi = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail)))
            return edges[lo].to(self.min_val), edges[min(hi + 1, self.bins)].to(self.max_val)

    class MSEObserver(HistogramObserver):
        """Range with the least expected squared quantization error over the observed histogram.

        Grid search over shrinking each end of the observed range (40 x 40 candidates); the error
        of a candidate is sum over bins of count * (center - fakequant(center))^2, clipping included.
        """

        grid = 40

        def _non_linear_param_search(self):
            lo0, hi0 = float(self.min_val), float(self.max_val)
            edges = torch.linspace(lo0, hi0, self.bins + 1, dtype=torch.float64)
            centers = (edges[1:] + edges[:-1]) / 2
            hist = self.histogram.double()
            fracs = torch.linspace(1.0 / self.grid, 1.0, self.grid, dtype=torch.float64)
            lows = torch.unique(torch.minimum(torch.tensor(0.0, dtype=torch.float64), lo0 * fracs)) \
                if lo0 < 0 else torch.tensor([lo0], dtype=torch.float64)
            highs = torch.unique(torch.maximum(torch.tensor(0.0, dtype=torch.float64), hi0 * fracs)) \
                if hi0 > 0 else torch.tensor([hi0], dtype=torch.float64)
            qmin, qmax = self.quant_min, self.quant_max
            lo = torch.minimum(lows[:, None], torch.zeros(1, dtype=torch.float64))    # (L, 1)
            hi = torch.maximum(highs[None, :], torch.zeros(1, dtype=torch.float64))   # (1, H)
            scale = torch.clamp((hi - lo) / (qmax - qmin), min=float(self.eps))        # (L, H)
            zp = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax)
            q = torch.clamp(torch.round(centers[None, None] / scale[..., None]) + zp[..., None], qmin, qmax)
            err = (((q - zp[..., None]) * scale[..., None] - centers[None, None]) ** 2 * hist).sum(-1)
            i, j = divmod(int(torch.argmin(err)), err.shape[1])
            return (torch.tensor(float(lows[i])).to(self.min_val),
                    torch.tensor(float(highs[j])).to(self.max_val))

    return PercentileObserver, MSEObserver


# name -> factory(cfg) -> observer-or-fake-quantize constructor for activations
ACTIVATION_OBSERVERS: Registry[Callable[[QuantizeConfig], Any]] = Registry("activation observer")
_EPS = 2 ** -12   # smallest scale; litert's configs use the same


@ACTIVATION_OBSERVERS.register("minmax")
def _minmax(cfg: QuantizeConfig):
    from torchao.quantization.pt2e import FakeQuantize, MinMaxObserver

    if cfg.mode == "qat":
        return FakeQuantize.with_args(observer=MinMaxObserver, eps=_EPS)
    return MinMaxObserver.with_args(eps=_EPS)


@ACTIVATION_OBSERVERS.register("moving_average")
def _moving_average(cfg: QuantizeConfig):
    from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize, MovingAverageMinMaxObserver

    if cfg.mode == "qat":
        return FusedMovingAvgObsFakeQuantize.with_args(eps=_EPS)
    return MovingAverageMinMaxObserver.with_args(eps=_EPS)


@ACTIVATION_OBSERVERS.register("histogram")
def _histogram(cfg: QuantizeConfig):
    from torchao.quantization.pt2e import HistogramObserver

    return HistogramObserver.with_args(eps=_EPS)


@ACTIVATION_OBSERVERS.register("percentile")
def _percentile(cfg: QuantizeConfig):
    return _observer_classes()[0].with_args(percentile=cfg.percentile, eps=_EPS)


@ACTIVATION_OBSERVERS.register("mse")
def _mse(cfg: QuantizeConfig):
    return _observer_classes()[1].with_args(eps=_EPS)


def quantization_config(cfg: QuantizeConfig):
    """litert's symmetric config with our activation observer swapped in."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    base = get_symmetric_quantization_config(is_per_channel=cfg.per_channel, is_qat=cfg.mode == "qat")
    if cfg.resolved_observer == "auto":   # a choice among candidates, made by quantize() on val images
        raise EdgecnnError("quantize.observer 'auto' is resolved by quantize(), which calibrates each of "
                           "observer_candidates; name one observer to build a single quantizer")
    ctor = ACTIVATION_OBSERVERS.get(cfg.resolved_observer, key="quantize.observer")(cfg)
    act = dataclasses.replace(base.input_activation, observer_or_fake_quant_ctr=ctor)
    weight = base.weight
    if cfg.weight_bits == 7:
        weight = dataclasses.replace(weight, quant_min=-64, quant_max=64)
    return dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)


def _module_path(node: torch.fx.Node) -> str | None:
    """The module path export recorded for a node ('features.3.0'), or None (inputs, constants)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return list(stack.values())[-1][0]


def _in_modules(path: str | None, names: Iterable[str]) -> bool:
    return path is not None and any(path == n or path.startswith(n + ".") for n in names)


@contextmanager
def _litert_pattern_fix():
    """litert 0.10's QAT conv+BN annotator hands a plain function to torchao's pattern exporter,
    which since torchao 0.1x only takes an nn.Module ("Expected `mod` to be an instance of
    torch.nn.Module"). Wrap it, as torchao's own annotators do, for the duration of annotation."""
    import litert_torch.quantize.pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    def wrapped(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, nn.Module):
            pattern = WrapperModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    utils._get_aten_graph_module_for_pattern = wrapped
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def make_quantizer(cfg: QuantizeConfig, float_layers: Iterable[str] = ()):
    """An `EdgeQuantizer` (litert's PT2EQuantizer keeping `float_layers` unannotated, i.e. float)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    class EdgeQuantizer(PT2EQuantizer):
        def __init__(self, config, keep_float: tuple[str, ...], clamped_outputs: bool, int8_adds: bool):
            super().__init__()
            self.set_global(config)
            self.keep_float = keep_float
            self.clamped_outputs = clamped_outputs
            self.int8_adds = int8_adds

        def _annotate_for_static_quantization_config(self, model):
            keep = self.keep_float

            def filter_fn(n):
                return not _in_modules(_module_path(n), keep)

            if self.clamped_outputs:
                _annotate_clamped_outputs(model, self.global_config, filter_fn)
            if self.int8_adds:
                _annotate_adds(model, self.global_config, filter_fn)
            # redirect: litert's add_relu annotator prints "Relu partition has more than one output
            # node" for every ReLU read twice (each ResNet block), a condition it only skips
            with _litert_pattern_fix(), redirect_stdout(io.StringIO()):
                self._annotate_all_static_patterns(model, self.global_config, filter_fn)
            return model

        def annotate(self, model):
            super().annotate(model)
            _own_pool_output_qparams(model, self.global_config)
            return model

    return EdgeQuantizer(quantization_config(cfg), tuple(float_layers), cfg.clamped_outputs, cfg.int8_adds)


_HARDTANH = ("aten.hardtanh.default", "aten.hardtanh_.default")
_CONV_TARGETS = ("aten.conv1d.default", "aten.conv2d.default", "aten.convolution.default", "aten.linear.default")


def _annotate_clamped_outputs(model: torch.fx.GraphModule, qconfig, filter_fn) -> int:
    """Annotate conv/linear -> hardtanh(min >= 0) (ReLU6, torchvision's MobileNetV2) as one fused op:
    inputs and weight quantized at the conv, the output observed after the clamp.

    litert's annotator fuses conv+ReLU only; for ReLU6 it observes the conv's own output and the
    clamp shares that range, so the int8 grid spans the pre-activation range (negative values the
    clamp zeroes, values above 6 it cuts) instead of [0, 6]. Every runtime fuses the clamp into
    the int8 conv (TFLite RELU6, ONNX Conv -> Clip -> QuantizeLinear, OpenVINO Clamp ->
    FakeQuantize). Returns the number of patterns annotated.
    """
    from litert_torch.quantize.pt2e_quantizer_utils import (
        _is_annotated, _mark_nodes_as_annotated, get_bias_qspec, get_input_act_qspec, get_output_act_qspec,
        get_weight_qspec)
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    done = 0
    for n in model.graph.nodes:
        if n.op != "call_function" or str(n.target) not in _HARDTANH:
            continue
        low = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
        conv = n.args[0]
        if not (isinstance(low, (int, float)) and low >= 0 and isinstance(conv, torch.fx.Node)
                and conv.op == "call_function" and str(conv.target) in _CONV_TARGETS and len(conv.users) == 1):
            continue
        act, weight = conv.args[0], conv.args[1]
        bias = conv.args[2] if len(conv.args) > 2 else None
        if not (isinstance(act, torch.fx.Node) and isinstance(weight, torch.fx.Node)):
            continue
        partition = [n, conv, weight] + ([bias] if isinstance(bias, torch.fx.Node) else [])
        if _is_annotated(partition) or not all(filter_fn(p) for p in partition):
            continue
        qmap = {act: get_input_act_qspec(qconfig), weight: get_weight_qspec(qconfig)}
        if isinstance(bias, torch.fx.Node):
            qmap[bias] = get_bias_qspec(qconfig)
        conv.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
        n.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=get_output_act_qspec(qconfig),
                                                                  _annotated=True)
        _mark_nodes_as_annotated(partition)
        done += 1
    return done


_ADDS = ("aten.add.Tensor", "aten.add_.Tensor")
_RELUS = ("aten.relu.default", "aten.relu_.default")


def _is_float_tensor(x: Any) -> bool:
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def _annotate_adds(model: torch.fx.GraphModule, qconfig, filter_fn) -> int:
    """Annotate tensor + tensor adds (residual connections) as int8 ops, a ReLU that alone follows
    one fused in (its output observed after the ReLU), as litert's add / add_relu annotators mean to.

    Those annotators find adds through the `source_fn_stack` node metadata, which torch.export no
    longer records (torch 2.14 records `torch_fn`), so they annotate nothing. An unannotated add is
    float in the fake-quant graph, and where its input is another add's output (chained residual
    blocks in MobileNetV2/V3, a block's ReLU output in ResNet's identity path) that edge had no
    quantizer at all: OpenVINO ran those adds in bf16 and the ONNX Runtime lowering had to insert an
    inexact requantization. Returns the adds annotated.
    """
    from litert_torch.quantize.pt2e_quantizer_utils import (
        _is_annotated, _mark_nodes_as_annotated, get_input_act_qspec, get_output_act_qspec)
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    done = 0
    for n in model.graph.nodes:
        if n.op != "call_function" or str(n.target) not in _ADDS:
            continue
        inputs = n.args[:2]
        if not (len(inputs) == 2 and all(_is_float_tensor(a) for a in inputs) and _is_float_tensor(n)):
            continue
        users = list(n.users)
        relu = users[0] if (len(users) == 1 and users[0].op == "call_function"
                            and str(users[0].target) in _RELUS) else None
        partition = [n] + ([relu] if relu is not None else [])
        if _is_annotated(partition) or not all(filter_fn(p) for p in partition):
            continue
        qmap = {a: get_input_act_qspec(qconfig) for a in inputs}
        output = QuantizationAnnotation(output_qspec=get_output_act_qspec(qconfig), _annotated=True)
        if relu is None:
            output.input_qspec_map = qmap
            n.meta["quantization_annotation"] = output
        else:
            n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
            relu.meta["quantization_annotation"] = output
        _mark_nodes_as_annotated(partition)
        done += 1
    return done


_AVG_POOLS = ("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default", "aten.mean.dim")


def _own_pool_output_qparams(model: torch.fx.GraphModule, config) -> int:
    """Average pools get an output observer of their own instead of their input's qparams.

    litert's annotator makes a pool's output share its input's scale and zero point (TFLite's
    MEAN can run that way). Then the exact mean of n int8 values lies on a rounding tie (k + 1/2
    steps) for about one output in n/2..n, and which way a tie goes is decided by float error, which
    differs between PyTorch, ONNX Runtime, OpenVINO and LiteRT: measured on the test's
    mobilenet_v3_small, 4.5% of images changed top-1 in ONNX Runtime even running the QDQ graph
    literally. With an output scale of its own, exact ties are rare; every runtime's mean kernel
    takes different input and output qparams. Returns the pools changed.
    """
    if config is None or config.output_activation is None:
        return 0
    count = 0
    for n in model.graph.nodes:
        a = n.meta.get("quantization_annotation")
        if n.op == "call_function" and str(n.target) in _AVG_POOLS and a is not None \
                and a.output_qspec is not None:
            a.output_qspec = config.output_activation
            count += 1
    return count


@torch.no_grad()
def snap_bias_to_int32(qgraph: torch.fx.GraphModule) -> list[str]:
    """Round the float bias of each int8 conv/linear to the int32 grid (scale: input scale x weight scale).

    The converted graph keeps a float32 bias, but the runtimes' integer convolutions (ONNX Runtime's
    QLinearConv, LiteRT's int8 CONV_2D / FULLY_CONNECTED) add it as int32 at that scale, i.e.
    rounded by up to half an accumulator step, which moves outputs across rounding boundaries the
    fake-quant graph does not cross. On the grid, the fake-quant graph adds the same bias the
    kernels add, and the runtimes' own bias quantization is lossless. Returns the layers changed.
    """
    qd = "quantized_decomposed.dequantize_per_"
    names = []
    for n in qgraph.graph.nodes:
        if not (n.op == "call_function" and str(n.target).startswith(_CONV_LINEAR) and len(n.args) > 2):
            continue
        x, w, b = n.args[0], n.args[1], n.args[2]
        if not (isinstance(x, torch.fx.Node) and str(x.target).startswith(qd + "tensor")
                and isinstance(w, torch.fx.Node) and str(w.target).startswith(qd)
                and isinstance(b, torch.fx.Node) and b.op == "get_attr" and len(b.users) == 1):
            continue
        s_in = x.args[1]
        s_w = w.args[1]
        s_w = _get_attr(qgraph, s_w.target) if isinstance(s_w, torch.fx.Node) else torch.tensor(s_w)
        if isinstance(s_in, torch.fx.Node) or not isinstance(s_w, torch.Tensor):
            continue
        bias = _get_attr(qgraph, b.target)
        step = (torch.tensor(float(s_in), dtype=torch.float32) * s_w.float()).double()   # float32, as kernels do
        if step.numel() not in (1, bias.numel()) or (step <= 0).any():
            continue
        bias.copy_((torch.round(bias.double() / step) * step).to(bias.dtype))
        names.append(_module_path(n))
    return names


# ---------------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------------

def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1, max=65536)


def export_graph(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """`torch.export` with a dynamic batch dimension, unlifted to a GraphModule."""
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    except Exception as e:  # noqa: BLE001 - export errors are many types; all mean the same to a user
        raise EdgecnnError(f"quantize: torch.export could not capture {type(model).__name__} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). PT2E quantization needs "
                           "an exportable model: remove data-dependent Python control flow from forward().") from e
    return ep.module()


def quantizable_layers(graph: torch.fx.GraphModule) -> list[str]:
    """Module paths of the conv and linear layers in an exported graph, in graph order."""
    out: list[str] = []
    for n in graph.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith(_CONV_LINEAR):
            p = _module_path(n)
            if p and p not in out:
                out.append(p)
    return out


def _count_ops(graph: torch.fx.GraphModule, prefixes: tuple[str, ...]) -> int:
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and str(n.target).startswith(prefixes))


def _quantized_layers(qgraph: torch.fx.GraphModule) -> list[str]:
    """conv/linear layers whose weight input is a dequantize node (i.e. ran in int8)."""
    out = []
    for n in qgraph.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith(_CONV_LINEAR):
            w = n.args[1]
            if isinstance(w, torch.fx.Node) and "dequantize" in str(w.target):
                out.append(_module_path(n))
    return out


def _is_observer(m: nn.Module) -> bool:
    from torchao.quantization.pt2e import FakeQuantizeBase, ObserverBase

    return isinstance(m, (ObserverBase, FakeQuantizeBase))


@torch.no_grad()
def _bias_correct(prepared: torch.fx.GraphModule, batches: list[torch.Tensor]) -> list[str]:
    """Empirical bias correction (Nagel et al. 2019, sec. 4.2) on a calibrated, not yet converted graph.

    For each conv/linear with an observed weight and a bias: E[layer(x; W_int8 - W)] per output
    channel over the calibration images is the output shift that int8 weights add; subtract it from
    the bias. Matters most for depthwise convs (9 weights per channel, coarse per-tensor scales).
    """
    import torch.nn.functional as F

    targets: dict[torch.fx.Node, tuple[torch.Tensor, str]] = {}
    for n in prepared.graph.nodes:
        if not (n.op == "call_function" and str(n.target).startswith(_CONV_LINEAR)):
            continue
        w_obs, bias = n.args[1], n.args[2] if len(n.args) > 2 else None
        if not (isinstance(w_obs, torch.fx.Node) and w_obs.op == "call_module" and isinstance(bias, torch.fx.Node)
                and bias.op == "get_attr" and w_obs.args[0].op == "get_attr"):
            continue
        obs = prepared.get_submodule(w_obs.target)
        w = _get_attr(prepared, w_obs.args[0].target)
        scale, zp = obs.calculate_qparams()
        if obs.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
            wq = torch.fake_quantize_per_channel_affine(w, scale.float(), zp.int(), obs.ch_axis,
                                                        obs.quant_min, obs.quant_max)
        else:
            wq = torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), obs.quant_min, obs.quant_max)
        targets[n] = (wq - w, bias.target)
    if not targets:
        return []
    sums: dict[torch.fx.Node, torch.Tensor] = {}
    count = [0]

    class Recorder(torch.fx.Interpreter):
        def call_module(self, target, args, kwargs):
            mod = self.module.get_submodule(target)
            return args[0] if _is_observer(mod) else super().call_module(target, args, kwargs)

        def run_node(self, n):
            out = super().run_node(n)
            if n in targets:
                x = self.env[n.args[0]] if isinstance(n.args[0], torch.fx.Node) else n.args[0]
                dw = targets[n][0]
                if "linear" in str(n.target):
                    shift = F.linear(x, dw).flatten(0, -2).mean(0)
                else:
                    a = list(n.args) + [None] * (7 - len(n.args))
                    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[dw.dim()]
                    kw = {k: v for k, v in zip(("stride", "padding", "dilation", "groups"), a[3:7]) if v is not None}
                    shift = conv(x, dw, None, **kw).transpose(0, 1).flatten(1).mean(1)
                sums[n] = sums.get(n, 0) + shift * len(x)
            return out

    rec = Recorder(prepared)
    for x in batches:
        rec.run(x)
        count[0] += len(x)
    names = []
    for n, (_, bias_target) in targets.items():
        b = _get_attr(prepared, bias_target)
        b.sub_(sums[n] / count[0])
        names.append(_module_path(n))
    return names


def _get_attr(gm: nn.Module, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# PTQ / QAT
# ---------------------------------------------------------------------------------------------

def _ptq(graph: torch.fx.GraphModule, cfg: QuantizeConfig, batches: list[torch.Tensor],
         float_layers: Iterable[str] = (), timings: dict[str, float] | None = None,
         bias_corrected: list[str] | None = None) -> torch.fx.GraphModule:
    """prepare_pt2e -> calibrate -> (bias correction) -> convert_pt2e on a copy of `graph`."""
    timings = timings if timings is not None else {}
    prepared = _calibrated(graph, cfg, batches, float_layers, timings)
    return _converted(prepared, cfg.resolved_bias_correction, batches, timings, bias_corrected)


def _calibrated(graph: torch.fx.GraphModule, cfg: QuantizeConfig, batches: list[torch.Tensor],
                float_layers: Iterable[str], timings: dict[str, float]) -> torch.fx.GraphModule:
    """prepare_pt2e on a copy of `graph`, then the calibration passes: observers hold their ranges."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    t = time.perf_counter()
    prepared = prepare_pt2e(copy.deepcopy(graph), make_quantizer(cfg, float_layers))
    timings["prepare"] = timings.get("prepare", 0) + time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            prepared(x)
    timings["calibrate"] = timings.get("calibrate", 0) + time.perf_counter() - t
    return prepared


def _converted(prepared: torch.fx.GraphModule, bias_correction: bool, batches: list[torch.Tensor],
               timings: dict[str, float], bias_corrected: list[str] | None = None) -> torch.fx.GraphModule:
    """(bias correction) -> convert_pt2e of a calibrated graph, which it consumes."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if bias_correction:
        t = time.perf_counter()
        names = _bias_correct(prepared, batches)
        if bias_corrected is not None:
            bias_corrected[:] = names
        timings["bias_correction"] = timings.get("bias_correction", 0) + time.perf_counter() - t
    t = time.perf_counter()
    q = convert_pt2e(prepared)
    snap_bias_to_int32(q)
    timings["convert"] = timings.get("convert", 0) + time.perf_counter() - t
    return q


def _freeze_bn(graph: torch.fx.GraphModule) -> None:
    """Use running statistics in BN (training=False) while the rest keeps training."""
    changed = False
    for n in graph.graph.nodes:
        if n.op == "call_function" and str(n.target) in _BN_TARGETS and n.args[5] is not False:
            args = list(n.args)
            args[5] = False
            n.args = tuple(args)
            changed = True
    if changed:
        graph.recompile()


def _qat_train_mode(graph: torch.fx.GraphModule, bn_frozen: bool, observers_frozen: bool) -> None:
    """Training mode of a QAT graph: BN on batch statistics unless frozen (then running statistics,
    not updated), fake quantizers observing unless frozen (then fixed scales, still quantizing)."""
    from torchao.quantization.pt2e import disable_observer, enable_observer, move_exported_model_to_train

    move_exported_model_to_train(graph)
    if bn_frozen:
        _freeze_bn(graph)
    graph.apply(disable_observer if observers_frozen else enable_observer)


def _qat(model: nn.Module, cfg: QuantizeConfig, data, batches: list[torch.Tensor],
         float_layers: Iterable[str], seed: int, timings: dict[str, float]
         ) -> tuple[torch.fx.GraphModule, dict[str, Any]]:
    import torch.nn.functional as F
    from torchao.quantization.pt2e import disable_observer, enable_observer, move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from edgecnn.train import FitHooks, fit

    t = time.perf_counter()
    # Exported in eval mode: Python branches on `self.training` (torchvision's StochasticDepth, for one)
    # are specialised at export, and the converted graph must behave as in eval. prepare_qat_pt2e still
    # fuses conv+BN into its training pattern, and move_exported_model_to_train turns BN and dropout on.
    student = copy.deepcopy(model).cpu().eval()
    example = batches[0][:2] if len(batches[0]) >= 2 else torch.cat([batches[0], batches[0]])[:2]
    graph = export_graph(student, example)
    prepared = prepare_qat_pt2e(graph, make_quantizer(cfg, float_layers))
    timings["export"] = timings.get("export", 0) + time.perf_counter() - t

    # Initial ranges from the calibration images, BN in eval mode, so epoch 1 starts from PTQ-like scales.
    t = time.perf_counter()
    move_exported_model_to_eval(prepared)
    prepared.apply(enable_observer)
    with torch.no_grad():
        for x in batches:
            prepared(x)
    timings["calibrate"] = timings.get("calibrate", 0) + time.perf_counter() - t

    state = {"bn_frozen": False, "obs_frozen": False}

    def on_epoch_start(m: nn.Module, epoch: int) -> None:
        if cfg.freeze_observers_after is not None and epoch >= cfg.freeze_observers_after:
            state["obs_frozen"] = True
        if cfg.freeze_bn_after is not None and epoch >= cfg.freeze_bn_after:
            state["bn_frozen"] = True

    def train_mode(m: nn.Module) -> None:
        _qat_train_mode(m, state["bn_frozen"], state["obs_frozen"])

    def eval_mode(m: nn.Module) -> None:
        move_exported_model_to_eval(m)
        m.apply(disable_observer)   # validation images must not move the ranges

    loss: Callable[..., torch.Tensor] | None = None
    if cfg.distill_from_float and cfg.distill_weight > 0:
        teacher = copy.deepcopy(model).cpu().eval()
        w, temp = cfg.distill_weight, cfg.distill_temperature
        ce = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)

        def distill_loss(m, x, y, logits):
            with torch.no_grad():
                t_logits = teacher(x)
            kd = F.kl_div(F.log_softmax(logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                          reduction="batchmean", log_target=True) * temp * temp
            return (1 - w) * ce(logits, y) + w * kd

        loss = distill_loss

    t = time.perf_counter()
    train_cfg = dataclasses.replace(cfg.train, device="cpu")   # PT2E graphs here are captured on CPU
    result = fit(prepared, data, train_cfg, FitHooks(loss=loss, on_epoch_start=on_epoch_start,
                                                      train_mode=train_mode, eval_mode=eval_mode),
                 seed=seed, description="qat")
    timings["qat"] = time.perf_counter() - t
    move_exported_model_to_eval(prepared)
    t = time.perf_counter()
    q = convert_pt2e(prepared)
    snap_bias_to_int32(q)
    timings["convert"] = timings.get("convert", 0) + time.perf_counter() - t
    return q, result.to_dict()


# ---------------------------------------------------------------------------------------------
# Accuracy-aware fallback
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def _logits(model: nn.Module, xs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model(x) for x in xs]).float()


def _score(logits: torch.Tensor, labels: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(top-1 percent, KL(float || int8) in nats per image): accuracy, and a tie-breaker with resolution."""
    import torch.nn.functional as F

    top1 = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(ref, 1), reduction="batchmean",
                  log_target=True).item()
    return top1, kl


def _calibration_choices(cfg: QuantizeConfig) -> tuple[list[str], list[bool]]:
    """What PTQ tries on the val images: activation observers x bias correction on/off. A named
    observer, or a bias_correction set true or false, is one choice; 'auto' and null are searched."""
    observers = list(cfg.observer_candidates) if cfg.resolved_observer == "auto" else [cfg.resolved_observer]
    corrections = [True, False] if cfg.mode == "ptq" and cfg.bias_correction is None else [cfg.resolved_bias_correction]
    return observers, corrections


def _choose_calibration(graph: torch.fx.GraphModule, cfg: QuantizeConfig, batches: list[torch.Tensor],
                        float_layers: list[str], val_x: list[torch.Tensor], val_y: torch.Tensor, ref: torch.Tensor,
                        timings: dict[str, float]
                        ) -> tuple[QuantizeConfig, torch.fx.GraphModule, list[str], dict[str, Any]]:
    """PTQ with each observer x bias-correction choice, judged on the val images by how often the
    int8 model's top-1 agrees with the float model's (val top-1, then the order of the choices,
    break ties; bias correction on comes before off). One calibration per observer serves both of
    its bias-correction choices. Returns the config with the choice filled in, its quantized graph,
    the layers it bias-corrected, and the record."""
    t0 = time.perf_counter()
    ref_top1 = ref.argmax(1)
    observers, corrections = _calibration_choices(cfg)
    scores, built = [], []
    for name in observers:
        prepared = _calibrated(graph, dataclasses.replace(cfg, observer=name), batches, float_layers, timings)
        for j, bc in enumerate(corrections):
            corrected: list[str] = []
            last = j == len(corrections) - 1
            q = _mark_eval(_converted(prepared if last else copy.deepcopy(prepared), bc, batches, timings, corrected))
            logits = _logits(q, val_x)
            top1, kl = _score(logits, val_y, ref)
            agree = 100.0 * (logits.argmax(1) == ref_top1).float().mean().item()
            scores.append({"observer": name, "bias_correction": bc, "val_agreement": round(agree, 2),
                           "val_top1": round(top1, 2), "val_kl": round(kl, 6)})
            built.append((q, corrected, (agree, top1, -len(built))))
    best = max(range(len(built)), key=lambda i: built[i][2])
    timings["calibration_search"] = time.perf_counter() - t0
    chosen = scores[best]
    record = {"chosen": chosen["observer"], "bias_correction": chosen["bias_correction"], "val_images": len(val_y),
              "candidates": scores,
              "rule": "most val images whose int8 top-1 agrees with the float model's; then val top-1; then the "
                      "order of the candidates"}
    run_cfg = dataclasses.replace(cfg, observer=chosen["observer"], bias_correction=chosen["bias_correction"])
    return run_cfg, built[best][0], built[best][1], record


def _layer_weights(graph: torch.fx.GraphModule) -> dict[str, int]:
    """Weight element count of each conv/linear layer (module path -> numel), from the exported graph."""
    out: dict[str, int] = {}
    for n in graph.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith(_CONV_LINEAR):
            w, path = n.args[1], _module_path(n)
            if path and isinstance(w, torch.fx.Node) and w.op == "get_attr":
                out[path] = out.get(path, 0) + _get_attr(graph, w.target).numel()
    return out


def _search_float_layers(graph: torch.fx.GraphModule, cfg: QuantizeConfig, batches: list[torch.Tensor],
                         val_x: list[torch.Tensor], val_y: torch.Tensor, ref: torch.Tensor, float_top1: float,
                         timings: dict[str, float]) -> dict[str, Any]:
    """The accuracy-aware search on a real graph: each trial is a PTQ judged on the val images."""
    t0 = time.perf_counter()

    def measure(float_layers: list[str]) -> tuple[float, float]:
        return _score(_logits(_ptq(graph, cfg, batches, float_layers), val_x), val_y, ref)

    out = _fallback_search(quantizable_layers(graph), measure, float_top1, cfg.max_accuracy_drop,
                           cfg.fallback_candidates, list(cfg.float_layers), _layer_weights(graph))
    out["val_images"] = len(val_y)
    timings["search"] = time.perf_counter() - t0
    return out


def _fallback_search(layers: list[str], measure_: Callable[[list[str]], tuple[float, float]], float_top1: float,
                     budget: float, max_candidates: int, kept: list[str],
                     weights: dict[str, int] | None = None) -> dict[str, Any]:
    """Fewest float layers that bring the val drop within `budget`; `measure_(float_layers)` gives
    (val top-1, KL to the float logits) of the model with those layers float and the rest int8.

    1. Rank: leave-one-out sensitivity (only that layer float), best recovery first.
    2. Grow: add layers in that order, each kept only if val top-1 rises (or ties with lower KL),
       until the budget is met or `max_candidates` layers were tried.
    3. Shrink: try quantizing each added layer again (least helpful first); drop it from the float
       set if the budget still holds without it. Each survivor records the val top-1 it would
       leave if quantized again (its cost) and its weight count (the size it keeps float).
    """
    weights = weights or {}
    runs = [0]

    def measure(float_layers: list[str]) -> tuple[float, float]:
        runs[0] += 1
        return measure_(float_layers)

    top1, kl = measure(kept)
    out: dict[str, Any] = {"int8_val_top1_all_layers": round(top1, 2), "float_val_top1": round(float_top1, 2),
                           "sensitivity": [], "float_layers": [],
                           "budget_met": float_top1 - top1 <= budget}
    if out["budget_met"]:
        out["message"] = f"all layers int8 lose {float_top1 - top1:.2f} points on val, within {budget}"
        out["trials"] = runs[0]
        return out

    # 1. Sensitivity: quantize everything except one layer; the more that recovers, the more sensitive.
    sens = []
    todo = [layer for layer in layers if layer not in kept]
    for layer in progress(todo, len(todo), "int8 sensitivity"):   # one PTQ per layer: minutes on big models
        status(layer)
        l_top1, l_kl = measure(kept + [layer])
        sens.append({"layer": layer, "val_top1_when_float": round(l_top1, 2),
                     "recovers_points": round(l_top1 - top1, 2), "kl_when_float": round(l_kl, 6)})
    sens.sort(key=lambda s: (-s["val_top1_when_float"], s["kl_when_float"]))
    out["sensitivity"] = sens

    # 2. Grow greedily in sensitivity order.
    added: list[dict[str, Any]] = []
    cur_top1, cur_kl = top1, kl
    for s in sens[:max_candidates]:
        trial = kept + [a["layer"] for a in added] + [s["layer"]]
        t_top1, t_kl = measure(trial)
        if t_top1 > cur_top1 or (t_top1 == cur_top1 and t_kl < cur_kl):
            added.append({"layer": s["layer"], "val_top1_before": round(cur_top1, 2),
                          "val_top1_after": round(t_top1, 2), "recovered_points": round(t_top1 - cur_top1, 2),
                          "val_top1_alone_float": s["val_top1_when_float"]})
            cur_top1, cur_kl = t_top1, t_kl
            if float_top1 - cur_top1 <= budget:
                break
    out["grown"] = [a["layer"] for a in added]

    # 3. Shrink: a layer the grow step needed early may be redundant once later ones are float.
    if float_top1 - cur_top1 <= budget and len(added) > 1:
        removed = False
        for a in sorted(added, key=lambda a: a["recovered_points"]):
            if len(added) == 1:
                break
            t_top1, t_kl = measure(kept + [b["layer"] for b in added if b is not a])
            a["val_top1_if_int8_again"] = round(t_top1, 2)
            if float_top1 - t_top1 <= budget:
                added.remove(a)
                cur_top1, cur_kl, removed = t_top1, t_kl, True
        out["removed_by_shrink"] = [s["layer"] for s in sens if s["layer"] in out["grown"]
                                    and s["layer"] not in {a["layer"] for a in added}]
        if removed and len(added) > 1:   # survivors' cost of going back to int8, against the final set
            for a in added:
                a["val_top1_if_int8_again"] = round(measure(kept + [b["layer"] for b in added if b is not a])[0], 2)
    if len(added) == 1:
        added[0]["val_top1_if_int8_again"] = round(top1, 2)
    for a in added:
        a["weights"] = weights.get(a["layer"], 0)
        a["extra_weight_bytes"] = 3 * a["weights"]    # float32 instead of int8
    out["float_layers"] = added
    kept = kept + [a["layer"] for a in added]
    out["budget_met"] = float_top1 - cur_top1 <= budget
    out["int8_val_top1"] = round(cur_top1, 2)
    out["kept_float"] = kept
    out["trials"] = runs[0]
    out["message"] = (f"kept {len(kept)} layer(s) float; val drop {float_top1 - cur_top1:.2f} points "
                      f"(budget {budget})" if out["budget_met"] else
                      f"budget of {budget} points not reached: best val drop {float_top1 - cur_top1:.2f} points "
                      f"with {len(kept)} layer(s) float after trying {min(len(sens), max_candidates)} "
                      "candidates. Raise quantize.fallback_candidates or quantize.max_accuracy_drop, or use "
                      "mode: qat.")
    return out


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

@dataclass
class QuantizeResult:
    model: torch.fx.GraphModule          # the converted (Q/DQ) graph; eval only
    config: QuantizeConfig
    float_test: dict[str, float]         # evaluate() of the input model on 'test'
    int8_test: dict[str, float]          # evaluate() of the quantized graph on 'test'
    calibration: dict[str, Any]          # source, count, indices/files, sha256
    float_layers: list[dict[str, Any]]   # layers kept float by the fallback, with what each recovered
    kept_float: list[str]                # every module left float (config.float_layers + fallback)
    quantized_layers: list[str]          # conv/linear layers that run in int8
    fallback: dict[str, Any] | None      # the accuracy-aware search record, when it ran
    observer_search: dict[str, Any] | None   # observer 'auto' / bias_correction null: each choice's val figures
    qat: dict[str, Any] | None           # FitResult.to_dict() of the QAT fine-tuning
    bias_corrected: list[str]
    bn_folded: int                       # batch-norm ops folded into convolutions
    timings: dict[str, float]            # seconds per step
    seconds: float

    @property
    def observer(self) -> str:
        """The activation observer the int8 model was calibrated with ('auto' resolved)."""
        return self.observer_search["chosen"] if self.observer_search else self.config.resolved_observer

    @property
    def bias_correction(self) -> bool:
        """Whether PTQ corrected the biases (null resolved: the choice on the val images)."""
        return self.observer_search["bias_correction"] if self.observer_search else self.config.resolved_bias_correction

    @property
    def accuracy_drop(self) -> float:
        """Top-1 points lost on 'test' (positive: int8 is worse)."""
        return round(self.float_test["top1"] - self.int8_test["top1"], 2)

    def to_dict(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "observer": self.observer, "bias_correction": self.bias_correction,
                "observer_search": self.observer_search,
                "quantizer": "litert_torch PT2EQuantizer (symmetric int8 weights, int8 activations)",
                "float_test": self.float_test, "int8_test": self.int8_test, "accuracy_drop": self.accuracy_drop,
                "calibration": self.calibration, "float_layers": self.float_layers,
                "kept_float": self.kept_float, "quantized_layers": len(self.quantized_layers),
                "fallback": self.fallback, "qat": self.qat, "bias_corrected": self.bias_corrected,
                "bn_folded": self.bn_folded, "timings": {k: round(v, 2) for k, v in self.timings.items()},
                "seconds": round(self.seconds, 2)}


def quantize(model: nn.Module, config: QuantizeConfig, data, seed: int = 0,
             root: str | Path | None = None) -> QuantizeResult:
    """int8 PTQ or QAT of `model` on one PT2E graph; `model` itself is left unmodified.

    `root` is where `calibration/` manifests are looked up (default: the current directory).
    """
    from edgecnn.compress.calibration import load_calibration
    from edgecnn.train import evaluate

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    calib = load_calibration(data, config.calibration_samples, config.calibration,
                             batch_size=config.calibration_batch_size, root=root)
    float_model = copy.deepcopy(model).cpu().eval()   # the caller's model keeps its weights and mode

    t = time.perf_counter()
    graph = export_graph(float_model, calib.batches[0])
    timings["export"] = time.perf_counter() - t
    layers = quantizable_layers(graph)
    unknown_layers = [n for n in config.float_layers if not any(_in_modules(l, [n]) for l in layers)]
    if unknown_layers:
        from edgecnn.errors import did_you_mean
        raise EdgecnnError(f"quantize.float_layers: {unknown_layers} name no conv or linear layer of this "
                           f"model.{did_you_mean(unknown_layers[0], layers)} Layers: {', '.join(layers)}.")

    t = time.perf_counter()
    float_test = evaluate(float_model, data, "test")
    timings["evaluate"] = time.perf_counter() - t

    fallback = observer_search = qmodel = None
    kept = list(config.float_layers)
    bias_corrected: list[str] = []
    run_config = config      # with observer 'auto' and bias_correction null resolved
    observers, corrections = _calibration_choices(config)
    search = len(observers) * len(corrections) > 1   # QAT: one choice (moving_average, no correction)
    if config.max_accuracy_drop is not None or search:
        val_x, val_y = data.tensors("val", limit=config.sensitivity_samples)
        val_x = list(val_x.split(256))
        ref = _logits(float_model, val_x)
        if search:
            run_config, qmodel, bias_corrected, observer_search = _choose_calibration(
                graph, config, calib.batches, kept, val_x, val_y, ref, timings)
        if config.max_accuracy_drop is not None:
            float_top1, _ = _score(ref, val_y, ref)
            fallback = _search_float_layers(graph, run_config, calib.batches, val_x, val_y, ref, float_top1, timings)
            if fallback.get("kept_float", kept) != kept:
                kept, qmodel = fallback["kept_float"], None

    qat_record = None
    if config.mode == "ptq":
        if qmodel is None:
            qmodel = _ptq(graph, run_config, calib.batches, kept, timings, bias_corrected)
    else:
        qmodel, qat_record = _qat(model, config, data, calib.batches, kept, seed, timings)

    _mark_eval(qmodel)
    t = time.perf_counter()
    int8_test = evaluate(qmodel, data, "test")
    timings["evaluate"] += time.perf_counter() - t
    bn_before = _count_ops(graph, ("aten.batch_norm", "aten._native_batch_norm"))
    bn_after = _count_ops(qmodel, ("aten.batch_norm", "aten._native_batch_norm"))
    return QuantizeResult(
        model=qmodel, config=config, float_test=float_test, int8_test=int8_test, calibration=calib.info,
        float_layers=(fallback or {}).get("float_layers", []), kept_float=kept,
        quantized_layers=_quantized_layers(qmodel), fallback=fallback, observer_search=observer_search, qat=qat_record,
        bias_corrected=bias_corrected, bn_folded=bn_before - bn_after, timings=timings,
        seconds=time.perf_counter() - t_start)


# ---------------------------------------------------------------------------------------------
# Checkpointing the quantized program
# ---------------------------------------------------------------------------------------------

def save_quantized(path: str | Path, qmodel: torch.fx.GraphModule, example_input: torch.Tensor) -> Path:
    """Write the quantized graph as a `torch.export` program (.pt2, dynamic batch), atomically."""
    from edgecnn.io import atomic_path

    path = Path(path)
    ep = torch.export.export(qmodel, (example_input,), dynamic_shapes=({0: _batch_dim()},))
    with atomic_path(path, suffix=".pt2") as tmp:
        torch.export.save(ep, tmp)
    return path


def _pickled_payloads(path: Path) -> list[str]:
    """Entries of a .pt2 archive that `torch.export.load` would unpickle (and so could run code)."""
    import json

    risky = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(("weights_config.json", "constants_config.json")):
                cfg = json.loads(z.read(name)).get("config", {})
                for fqn, meta in cfg.items():
                    p = meta.get("path_name", "")
                    if meta.get("use_pickle") or p.startswith(("custom_obj", "opaque")):
                        risky.append(f"{name}:{fqn}")
            elif "/data/weights/" in name and name.endswith(".pt") or "/data/constants/" in name and name.endswith(".pt"):
                risky.append(name)   # legacy payloads: torch falls back to weights_only=False on them
    return risky


def load_quantized(path: str | Path, allow_pickle: bool = False) -> torch.fx.GraphModule:
    """Load a program written by `save_quantized` as a GraphModule, ready for export or inference.

    `torch.export.load` unpickles some payloads with `weights_only=False` (custom objects, legacy or
    non-tensor weights), which can run arbitrary code. A program written by `save_quantized` has
    none: the graph is JSON and the tensors raw bytes. So those payloads are refused unless
    `allow_pickle` (only for files you trust).
    """
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers quantized_decomposed ops

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such quantized program. Run the quantize stage first.")
    try:
        risky = _pickled_payloads(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a torch.export program (.pt2 zip archive).") from None
    if risky and not allow_pickle:
        raise CheckpointError(f"{path}: {len(risky)} payload(s) would be unpickled, which can run code "
                              f"(first: {risky[0]}). save_quantized never writes these; pass allow_pickle=True "
                              "only if you trust the file.")
    return _mark_eval(torch.export.load(path).module())


def _mark_eval(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Set `training = False` on a converted graph: its ops are fixed, and exporters read the flag
    (torch.onnx warns about 'training mode'). `.eval()` itself is disabled on PT2E graphs."""
    for m in graph.modules():
        m.training = False
    return graph


# ---------------------------------------------------------------------------------------------
# Pipeline stage
# ---------------------------------------------------------------------------------------------

def quantize_stage(ctx, cfg: QuantizeConfig):
    """Pipeline stage: quantize `ctx.model`, checkpoint the program, report metrics."""
    from edgecnn.io import write_json
    from edgecnn.pipeline import StageResult

    stage_dir = Path(ctx.stage_dir)
    result = quantize(ctx.model, cfg, ctx.data, seed=ctx.seed)
    program = save_quantized(stage_dir / "quantized.pt2", result.model, ctx.data.example_input(2))
    report = write_json(stage_dir / "quantize.json", result.to_dict())
    metrics = {"float_top1": result.float_test["top1"], "int8_top1": result.int8_test["top1"],
               "accuracy_drop": result.accuracy_drop, "float_layers": len(result.kept_float),
               "quantized_layers": len(result.quantized_layers), "calibration_images": result.calibration["count"],
               "seconds": round(result.seconds, 2), "observer": result.observer,
               "bias_correction": result.bias_correction,
               "test": result.int8_test,   # the int8 graph's figures, as every stage reports its model's
               "float_layer_names": list(result.kept_float)}
    if result.fallback is not None:
        metrics["budget_met"] = result.fallback["budget_met"]
    # model=None: the float model is unchanged; the pipeline records `quantized` itself.
    return StageResult(model=None, quantized=program, metrics=metrics, files={"quantize_report": report})
