"""The benchmark suite's work: train, compress, export, run the peers, measure side by side.

Everything for one model happens in one process and every latency figure of a model is taken in
one interleaved loop (run k of every row before run k+1 of any; the row order rotates each round),
so a load change on the machine hits all rows alike. `benchmarks/run.py` is the entry point.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import statistics
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS = {   # name -> (model source, input channels); input size: SuiteConfig.size (bn_cnn: 28)
    "bn_cnn": ("bn_cnn", 1),
    "resnet18": ("torchvision:resnet18", 3),
    "mobilenet_v2": ("torchvision:mobilenet_v2", 3),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", 3),
    "efficientnet_b0": ("torchvision:efficientnet_b0", 3),
}
LATENCY_224 = ("resnet18", "mobilenet_v2")

# ONNX Runtime quantize_static configurations tried (all per-channel weights, MinMax calibration
# on the same images edgecnn calibrates with): format, activation type, weight type, reduce_range.
ORT_CONFIGS = [("QDQ", "u8", "s8", False), ("QDQ", "u8", "u8", False), ("QDQ", "s8", "s8", False),
               ("QDQ", "u8", "s8", True), ("QOperator", "u8", "s8", False), ("QOperator", "u8", "u8", False),
               ("QOperator", "s8", "s8", False), ("QOperator", "u8", "s8", True)]
ORT_CONFIGS_QUICK = [("QDQ", "u8", "s8", False), ("QDQ", "s8", "s8", False)]
NNCF_PRESETS = ("performance", "mixed")


@dataclass
class SuiteConfig:
    size: int = 32                 # input side (px) of the torchvision models in the main table; bn_cnn: 28
    train_epochs: int = 5          # epochs on mnist5k's 3,500 training images (batch 64: 55 steps each)
    train_max_steps: int | None = None   # cap on optimizer steps (quick mode)
    prune_ratio: float = 0.5       # share of channels removed, edgecnn and Torch-Pruning alike
    finetune_epochs: int = 1       # fine-tune budget after pruning, the same for both pruners
    finetune_max_steps: int | None = None
    calibration: int = 256         # calibration images, the same for edgecnn, ORT and NNCF
    calibration_224: int = 128     # the same at 224 px
    eval_limit: int = 1000         # test images for accuracy/agreement (mnist5k has 1,000)
    eval_limit_224: int = 1000     # all of mnist5k's test split: 300 images resolve top-1 differences of ~3 pp only
    runs: int = 60                 # timed batch-1 runs per row and thread count (median, p10, p90 reported)
    runs_224: int = 40
    warmup: int = 10
    ort_screen_images: int = 200   # ORT quantize_static screen: top-1 on this many test images ...
    ort_screen_runs: int = 15      # ... and the median of this many 1-thread runs, for all configurations
    ort_keep: int = 3              # configurations measured fully: the fastest within 1 pp of the screen's best
    adapt_224: bool = True         # 224 mode: a short fine-tune at 224 px of the main-size weights
    adapt_bn_images: int = 256     # training images for each batch-norm re-estimate at 224 px
    adapt_steps: int = 20          # fine-tune steps (batch 32) at 224 px, every model of the 224 mode
    adapt_lr: float = 1e-3
    ort_configs: list = field(default_factory=lambda: list(ORT_CONFIGS))
    nncf_presets: tuple = NNCF_PRESETS
    tflite: bool = True
    quantize_test_limit: int | None = 300    # test images edgecnn's quantize() scores its fake-quant model on
                                             # (informational: the rows are scored by the suite; 224: 100)
    seed: int = 0


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- rows

@dataclass
class Row:
    key: str                      # unique within a model: 'ort/edgecnn-integer'
    method: str                   # what a reader sees
    who: str                      # edgecnn | peer | baseline
    runtime: str                  # torch | onnxruntime | openvino | litert
    precision: str                # fp32 | int8
    opener: Callable[[int], Callable[[np.ndarray], np.ndarray]] = field(repr=False, default=None)
    files: list = field(default_factory=list)
    group: str = ""               # rows compared with each other: int8-ort, int8-ov, prune-ort, ...
    config: dict = field(default_factory=dict)
    top1: float | None = None
    agreement: float | None = None
    p50_1t: float | None = None
    p50_all: float | None = None
    status: str = "ok"            # ok | failed | screened (an ORT configuration not measured fully)
    error: str | None = None
    notes: list = field(default_factory=list)
    spread: dict = field(default_factory=dict)     # '1t'/'all' -> {runs, p10, p90} of the timed runs
    screen: dict = field(default_factory=dict)     # ORT screen figures (all configurations)
    seconds: dict = field(default_factory=dict)    # what measuring this row cost: accuracy, open
    correct: Any = field(default=None, repr=False)  # per test image: top-1 right (bool array; paired comparisons)
    samples: dict = field(default_factory=dict, repr=False)   # '1t'/'all' -> seconds of each interleaved round

    @property
    def size_bytes(self) -> int | None:
        return sum(Path(f).stat().st_size for f in self.files if Path(f).is_file()) or None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("key", "method", "who", "runtime", "precision", "group", "config",
                                           "top1", "agreement", "p50_1t", "p50_all", "status", "error", "notes",
                                           "spread", "screen", "seconds")}
        d["size_bytes"] = self.size_bytes
        d["files"] = [Path(f).name for f in self.files]
        return d


def torch_opener(model: torch.nn.Module) -> Callable[[int], Callable]:
    model = model.eval()

    def open_(threads: int):
        torch.set_num_threads(threads)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()
        return run
    return open_


def session_opener(path: Path, runtime: str, **options) -> Callable[[int], Callable]:
    def open_(threads: int):
        from edgecnn.runtimes import open_session
        return open_session(str(path), runtime, threads=threads, **options).run
    return open_


def accuracy(rows: list[Row], x: np.ndarray, y: np.ndarray, ref: np.ndarray, threads: int,
             log: Callable[[str], None], ref_key: str | None = "torch/fp32") -> None:
    """Top-1 and agreement with `ref` (the eager fp32 logits) of every ok row, in batches of 64
    (artifacts with a fixed batch run in chunks of it). The row `ref_key` is the model `ref` came
    from: its logits are `ref`, not a second pass."""
    for r in rows:
        if r.status != "ok":
            continue
        t = time.perf_counter()
        try:
            if r.key == ref_key and len(ref) == len(x):
                logits = ref
            else:
                run = r.opener(threads)
                logits = np.concatenate([run(x[i:i + 64]) for i in range(0, len(x), 64)])
                del run
            r.correct = logits.argmax(1) == y
            r.top1 = round(100.0 * float(r.correct.mean()), 2)
            r.agreement = round(100.0 * float((logits.argmax(1) == ref.argmax(1)).mean()), 2)
        except Exception as e:   # noqa: BLE001  (one row failing is a result, not the end of the suite)
            fail(r, e, log)
        r.seconds["accuracy"] = round(time.perf_counter() - t, 2)


def fail(r: Row, e: BaseException, log: Callable[[str], None]) -> None:
    r.status, r.error = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    log(f"    [failed] {r.key}: {r.error}")


def latency(rows: list[Row], x1: np.ndarray, threads: int, runs: int, warmup: int,
            log: Callable[[str], None], spread: dict[str, dict] | None = None,
            samples: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median batch-1 ms of each row, interleaved: every round runs each row once, order rotating.
    `spread`, when given, receives key -> {runs, p10, p90} (ms); `samples` key -> the seconds of each
    round (round i of two rows ran back to back: the pairs `paired_latency` compares)."""
    live: dict[str, Callable] = {}
    for r in rows:
        if r.status != "ok":
            continue
        t = time.perf_counter()
        try:
            run = r.opener(threads)
            for _ in range(warmup):
                run(x1)
            live[r.key] = run
        except Exception as e:   # noqa: BLE001
            fail(r, e, log)
        r.seconds[f"open_warmup_{threads}t"] = round(time.perf_counter() - t, 2)
    times: dict[str, list[float]] = {k: [] for k in live}
    keys = list(live)
    clock = time.perf_counter
    for i in range(runs):
        k0 = i % max(1, len(keys))
        for k in keys[k0:] + keys[:k0]:
            if k.startswith("torch"):
                torch.set_num_threads(threads)
            t = clock()
            live[k](x1)
            times[k].append(clock() - t)
    live.clear()
    if samples is not None:
        samples.update(times)
    if spread is not None:
        for k, v in times.items():
            q = np.percentile(v, [10, 90]) if v else (None, None)
            spread[k] = {"runs": len(v), "p10": round(1e3 * float(q[0]), 4) if v else None,
                         "p90": round(1e3 * float(q[1]), 4) if v else None}
    return {k: round(1e3 * statistics.median(v), 4) for k, v in times.items() if v}


# --------------------------------------------------------------------------- training and compression

def train(name: str, data, cfg: SuiteConfig, log) -> torch.nn.Module:
    from edgecnn.models import ModelConfig, build_model
    from edgecnn.train import TrainConfig, fit

    src, ch = MODELS[name]
    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(source=src), data.num_classes, ch)
    res = fit(model, data, TrainConfig(epochs=cfg.train_epochs, max_steps=cfg.train_max_steps, batch_size=64,
                                       lr=3e-3), seed=cfg.seed, description=f"train {name}")
    log(f"    trained {res.epochs_run} epochs in {res.seconds:.0f} s, best val top-1 {res.best_val_top1}%")
    return model.cpu().eval()


def prune_edgecnn(model, data, cfg: SuiteConfig):
    from edgecnn.compress.prune import PruneConfig, prune
    from edgecnn.train import TrainConfig

    pc = PruneConfig(ratio=cfg.prune_ratio, finetune_epochs=cfg.finetune_epochs, finetune_with="distill",
                     train=TrainConfig(lr=1e-3, warmup_epochs=0.0, max_steps=cfg.finetune_max_steps))
    res = prune(model, pc, data, seed=cfg.seed)
    return res.model.cpu().eval(), {"config": "PruneConfig(importance=l1, round_to=8, finetune_with=distill, "
                                              f"ratio={cfg.prune_ratio}, finetune_epochs={cfg.finetune_epochs})",
                                    "macs_ratio": round(res.macs_ratio, 3)}


def prune_torch_pruning(model, data, cfg: SuiteConfig):
    """Torch-Pruning's plain magnitude pruner, then plain fine-tuning with the same budget."""
    import torch_pruning as tp

    from edgecnn.compress.distill import finetune_
    from edgecnn.models import classifier_name
    from edgecnn.train import TrainConfig

    m = copy.deepcopy(model).cpu().eval()
    head = classifier_name(m)
    ignored = [m.get_submodule(head)] if head else []
    pruner = tp.pruner.MagnitudePruner(m, data.example_input(1), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=cfg.prune_ratio, ignored_layers=ignored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    if cfg.finetune_epochs > 0:
        finetune_(m, data, TrainConfig(epochs=cfg.finetune_epochs, lr=1e-3, warmup_epochs=0.0,
                                       max_steps=cfg.finetune_max_steps), seed=cfg.seed)
    return m.cpu().eval(), {"config": f"MagnitudePruner(MagnitudeImportance(p=1), pruning_ratio={cfg.prune_ratio}, "
                                      "classifier ignored) + cross-entropy fine-tune, same epochs and lr"}


def quantize_edgecnn(model, data, n: int, test_limit: int | None = None, **fields):
    """edgecnn PTQ with its defaults (or QuantizeConfig `fields`), `n` calibration images.

    `quantize` reports fp32 and fake-quant top-1 on the whole test split; at 224 px that is 2,000
    forward passes (the fake-quant ones slow), so `test_limit` gives it a view with fewer test images.
    """
    from edgecnn.compress.quantize import QuantizeConfig, quantize
    from edgecnn.data import Split

    if test_limit is not None and len(data.splits["test"]) > test_limit:
        t = data.splits["test"]
        data = dataclasses.replace(data, splits={**data.splits, "test": Split(t.images[:test_limit],
                                                                             t.labels[:test_limit],
                                                                             t.indices[:test_limit])})
    return quantize(model, QuantizeConfig(calibration_samples=n, calibration_batch_size=32, **fields), data)


def _top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)])
    return round(100.0 * float((logits.argmax(1) == y).float().mean()), 2)


def adapt_224(model, data, cfg: SuiteConfig, log, label: str, measure: bool = False):
    """Adapt weights trained at the main size to the data's size (224 px) with a short fine-tune:
    re-estimate every batch norm's statistics on `cfg.adapt_bn_images` training images at that size,
    fine-tune all weights for `cfg.adapt_steps` steps (AdamW, lr `cfg.adapt_lr`, batch 32, training
    images), re-estimate the batch norms again (the running statistics trail the weights after so few
    steps). Returns (adapted copy, info) with the seconds of every step and what one epoch would cost;
    `measure`: also top-1 on 200 validation images before and after."""
    from edgecnn.train import recalibrate_batch_norm

    m = copy.deepcopy(model).cpu().eval()
    torch.set_num_threads(all_threads())
    # Dropout in the fine-tune draws from torch's global RNG: seed it here, or the adapted weights
    # depend on everything the process ran before (the models before this one, --models, --quick).
    torch.manual_seed(cfg.seed + 3)
    bn_batches = max(1, cfg.adapt_bn_images // 32)
    info: dict[str, Any] = {"bn_images": bn_batches * 32, "steps": cfg.adapt_steps, "batch": 32, "lr": cfg.adapt_lr}
    t0 = time.perf_counter()
    if measure:
        xv, yv = data.tensors("val", 200)
        info["val_images"] = len(xv)
        info["val_top1_before"] = _top1(m, xv, yv)
    recalibrate_batch_norm(m, data, batches=bn_batches, batch_size=32, seed=cfg.seed)
    times: list[float] = []
    if cfg.adapt_steps > 0:
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.adapt_lr, weight_decay=1e-4)
        m.train()
        with torch.enable_grad():
            for i, (xb, yb) in enumerate(data.batches("train", 32, shuffle=True, seed=cfg.seed + 1)):
                if i >= cfg.adapt_steps:
                    break
                t = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(m(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
        recalibrate_batch_norm(m, data, batches=bn_batches, batch_size=32, seed=cfg.seed + 2)
    m.eval()
    info["step_seconds_median"] = round(statistics.median(times), 3) if times else None
    info["steps_per_epoch"] = data.num_batches("train", 32)
    info["epoch_seconds_estimate"] = round(statistics.median(times) * info["steps_per_epoch"]) if times else None
    if measure:
        info["val_top1_after"] = _top1(m, xv, yv)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"    adapt {label} to {data.input_shape[1]} px ({len(times)} fine-tune steps of 32, "
        f"{info['step_seconds_median']} s each): {info['seconds']:.0f} s"
        + (f", val top-1 {info['val_top1_before']}% -> {info['val_top1_after']}%" if measure else ""))
    return m, info


# --------------------------------------------------------------------------- exports

def _export_config():
    """The exporters' verification runs (8 images: the suite scores every row on the test images itself), but does not gate int8 here: the suite measures
    every row's agreement itself, and at 224 px the 32-px weights give near-tied logits on some
    images, where int8 rounding flips a few top-1s and the default 98% gate would drop the row."""
    from edgecnn.export import ExportConfig

    # lowering off: the suite writes the unlowered QDQ once and lowers it per runtime itself, so the
    # rows show each step (ExportConfig.lowering defaults to the exact 'onnxruntime' preset).
    return ExportConfig(verify_samples=8, int8_tolerance=1e6, int8_min_agreement=0.0, lowering=None,
                        openvino_lowering=None)


def export_onnx(model, example, path: Path, precision: str) -> Path:
    return export_format("onnx", model, example, path, precision)


def export_format(fmt: str, model, example, path: Path, precision: str) -> Path:
    from edgecnn.export import export_model

    return Path(export_model(fmt, model, example, path, _export_config(), precision=precision).path)


def lowered_onnx(src: Path, dst: Path, preset_name: str) -> tuple[Path, dict]:
    from edgecnn.export.lowering import lower_file, preset

    res = lower_file(src, dst, preset(preset_name))
    return dst, res.to_dict()


def onnx_to_ir(onnx_path: Path, xml: Path) -> Path:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml))
    return xml


class _Reader:
    """onnxruntime CalibrationDataReader over an array of calibration images (batches of 16)."""

    def __init__(self, x: np.ndarray, input_name: str):
        self.batches = [{input_name: x[i:i + 16]} for i in range(0, len(x), 16)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self):
        self.i = 0


def ort_quantize_static(fp32: Path, x_cal: np.ndarray, out_dir: Path, config: tuple) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fmt, act, wt, reduce_range = config
    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    name = f"ort_{fmt}_{act}{wt}{'_rr' if reduce_range else ''}.onnx"
    pre = out_dir / "ort_preprocessed.onnx"
    if not pre.exists():
        from onnxruntime.quantization.shape_inference import quant_pre_process
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    input_name = onnx.load(str(pre)).graph.input[0].name
    quantize_static(str(pre), str(out_dir / name), _Reader(x_cal, input_name),
                    quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                    per_channel=True, reduce_range=reduce_range, activation_type=types[act], weight_type=types[wt],
                    calibrate_method=CalibrationMethod.MinMax)
    return out_dir / name


def stored_weight_types(path: Path) -> dict[str, int]:
    """Element types of the quantized weights an ONNX file holds (its 8-bit initializers of 2 or more
    dimensions; scales and zero points are 0- or 1-D), e.g. {'int8': 20, 'uint8': 1}. ORT's
    `quantize_static` does not always store what `weight_type` asked: in QOperator format with
    per-channel weights it writes conv weights as int8 whatever was asked."""
    import onnx

    counts: dict[str, int] = {}
    for t in onnx.load(str(path), load_external_data=False).graph.initializer:
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) >= 2:
            name = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def nncf_quantize(fp32_onnx: Path, x_cal: np.ndarray, xml: Path, preset: str) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    ds = nncf.Dataset([x_cal[i:i + 1] for i in range(len(x_cal))])
    q = nncf.quantize(model, ds, subset_size=len(x_cal),
                      preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE)
    ov.save_model(q, str(xml))
    return xml


# --------------------------------------------------------------------------- one model at one size

def build_rows(name: str, float_model, pruned: dict[str, tuple], data, cal_n: int, work: Path, cfg: SuiteConfig,
               log, tag: str) -> tuple[list[Row], dict[str, Any]]:
    """Every row of one model at one input size. `pruned`: key -> (model, info)."""
    from edgecnn.export.lowering import resolve

    example = data.example_input(1)
    x_cal = data.tensors("calibration", cal_n)[0].numpy()
    rows: list[Row] = []
    info: dict[str, Any] = {"steps": {}}
    t0 = time.perf_counter()

    def step(what: str, fn: Callable[[], Any], row_on_fail: Row | None = None):
        t = time.perf_counter()
        try:
            out = fn()
            info["steps"][what] = round(time.perf_counter() - t, 2)
            log(f"    {what}: {time.perf_counter() - t:.0f} s")
            return out
        except Exception as e:   # noqa: BLE001
            info["steps"][what] = round(time.perf_counter() - t, 2)
            log(f"    [failed] {what}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            if os.environ.get("EDGECNN_BENCH_DEBUG"):
                traceback.print_exc()
            if row_on_fail is not None:
                fail(row_on_fail, e, lambda _: None)
                rows.append(row_on_fail)
            return None

    rows.append(Row("torch/fp32", "PyTorch eager fp32 (baseline)", "baseline", "torch", "fp32",
                    torch_opener(float_model), group="baseline"))
    fp32_onnx = step("export fp32 ONNX", lambda: export_onnx(float_model, example, work / "fp32.onnx", "fp32"))
    if fp32_onnx:
        rows.append(Row("ort/fp32", "ONNX fp32", "baseline", "onnxruntime", "fp32",
                        session_opener(fp32_onnx, "onnxruntime"), [fp32_onnx], group="fp32"))
    # IRs are converted from the ONNX files already written: the openvino exporter's own route
    # (torch -> ONNX -> openvino.convert_model), without exporting the same graph a second time.
    fp32_ir = step("fp32 ONNX -> OpenVINO IR", lambda: onnx_to_ir(fp32_onnx, work / "fp32.xml")) if fp32_onnx else None
    if fp32_ir:
        rows.append(Row("ov/fp32", "OpenVINO IR fp32 (CPU default precision)", "baseline", "openvino", "fp32",
                        session_opener(fp32_ir, "openvino"), [fp32_ir, fp32_ir.with_suffix(".bin")], group="fp32"))

    # edgecnn int8: one PT2E graph -> QDQ ONNX -> lowered per runtime; IR; TFLite
    q = step("edgecnn PTQ (PT2E)", lambda: quantize_edgecnn(float_model, data, cal_n, cfg.quantize_test_limit))
    if q is not None:
        info["edgecnn_quantize"] = {"float_test": q.float_test, "int8_test": q.int8_test,
                                    "test_images": cfg.quantize_test_limit, "seconds": round(q.seconds, 1),
                                    "observer": q.observer, "observer_search": q.observer_search}
        raw = step("export int8 ONNX", lambda: export_onnx(q.model, example, work / "edgecnn_int8.onnx", "int8"))
        if raw:
            rows.append(Row("ort/edgecnn-qdq", "edgecnn int8 QDQ, no lowering (int8 activations)", "edgecnn",
                            "onnxruntime", "int8", session_opener(raw, "onnxruntime"), [raw], group="int8-ort"))
            for preset_name in ("onnxruntime", "onnxruntime-integer", "onnxruntime-exact"):
                out = step(f"lower for {preset_name}",
                           lambda p=preset_name: lowered_onnx(raw, work / f"edgecnn_int8_{p}.onnx", p))
                if out:
                    rows.append(Row(f"ort/edgecnn-{preset_name}", f"edgecnn int8, lowering '{preset_name}'" + (" (ExportConfig default here: 'auto')" if preset_name == resolve("auto") else ""),
                                    "edgecnn", "onnxruntime", "int8", session_opener(out[0], "onnxruntime"),
                                    [out[0]], group="int8-ort", config=out[1]))
            out = step("lower for openvino + IR", lambda: lowered_onnx(raw, work / "edgecnn_int8_openvino.onnx",
                                                                       "openvino"))
            if out:
                xml = step("convert lowered ONNX to IR", lambda: onnx_to_ir(out[0], work / "edgecnn_int8_lowered.xml"))
                if xml:
                    rows.append(Row("ov/edgecnn-openvino", "edgecnn int8 IR, lowering 'openvino'", "edgecnn",
                                    "openvino", "int8", session_opener(xml, "openvino"),
                                    [xml, xml.with_suffix(".bin")], group="int8-ov", config=out[1]))
        ir = step("int8 ONNX -> OpenVINO IR", lambda: onnx_to_ir(raw, work / "edgecnn_int8.xml")) if raw else None
        if ir:
            rows.append(Row("ov/edgecnn-ir", "edgecnn int8 IR, no lowering (ExportConfig default)", "edgecnn", "openvino", "int8",
                            session_opener(ir, "openvino"), [ir, ir.with_suffix(".bin")], group="int8-ov"))
        if cfg.tflite:
            tfl = step("export int8 TFLite", lambda: export_format("tflite", q.model, example,
                                                                   work / "edgecnn_int8.tflite", "int8"))
            if tfl:
                rows.append(Row("litert/edgecnn", "edgecnn int8 TFLite (LiteRT + XNNPACK)", "edgecnn", "litert",
                                "int8", session_opener(tfl, "litert"), [tfl], group="int8-tflite"))
                rows.append(Row("litert/edgecnn-builtin", "edgecnn int8 TFLite, builtin kernels (no XNNPACK)",
                                "edgecnn", "litert", "int8", session_opener(tfl, "litert", xnnpack=False), [tfl],
                                group="int8-tflite"))

    # peers: ORT quantize_static, NNCF, on the same fp32 model and calibration images
    if fp32_onnx:
        for c in cfg.ort_configs:
            label = f"{c[0]} {c[1]}{c[2]}{' reduce_range' if c[3] else ''}"
            r = Row(f"ort/peer-{c[0]}-{c[1]}{c[2]}{'-rr' if c[3] else ''}", f"ORT quantize_static {label}",
                    "peer", "onnxruntime", "int8", group="int8-ort",
                    config={"format": c[0], "activations": c[1], "weights": c[2], "reduce_range": c[3],
                            "per_channel": True, "calibrate": "MinMax"})
            p = step(f"ORT quantize_static {label}", lambda c=c: ort_quantize_static(fp32_onnx, x_cal, work, c), r)
            if p:
                r.opener, r.files = session_opener(p, "onnxruntime"), [p]
                r.config["weights_stored"] = stored_weight_types(p)
                rows.append(r)
        for preset_name in cfg.nncf_presets:
            r = Row(f"ov/peer-nncf-{preset_name}", f"NNCF quantize (preset {preset_name})", "peer", "openvino",
                    "int8", group="int8-ov", config={"preset": preset_name, "subset_size": len(x_cal)})
            xml = step(f"NNCF {preset_name}",
                       lambda p=preset_name: nncf_quantize(fp32_onnx, x_cal, work / f"nncf_{p}.xml", p), r)
            if xml:
                r.opener, r.files = session_opener(xml, "openvino"), [xml, xml.with_suffix(".bin")]
                rows.append(r)

    # pruned models: fp32 in ORT and OpenVINO; edgecnn's also int8 (lowered)
    from edgecnn.models import count_macs
    macs0 = count_macs(float_model, tuple(example.shape[1:]))
    info["macs"] = macs0
    for key, (pm, pinfo) in pruned.items():
        macs = count_macs(pm, tuple(example.shape[1:]))
        base = {**pinfo, "macs": macs, "macs_ratio": round(macs0 / macs, 3)}
        who = "edgecnn" if key == "edgecnn" else "peer"
        label = "edgecnn prune + distill" if key == "edgecnn" else "Torch-Pruning MagnitudePruner + fine-tune"
        rows.append(Row(f"torch/pruned-{key}", f"{label}, PyTorch eager fp32", who, "torch", "fp32",
                        torch_opener(pm), group="prune-torch", config=dict(base)))
        p = step(f"export pruned ({key}) fp32 ONNX", lambda pm=pm, key=key: export_onnx(pm, example,
                                                                                        work / f"pruned_{key}.onnx", "fp32"))
        if p:
            rows.append(Row(f"ort/pruned-{key}", f"{label}, ONNX fp32", who, "onnxruntime", "fp32",
                            session_opener(p, "onnxruntime"), [p], group="prune-ort", config=dict(base)))
            xml = step(f"pruned ({key}) IR", lambda p=p, key=key: onnx_to_ir(p, work / f"pruned_{key}.xml"))
            if xml:
                rows.append(Row(f"ov/pruned-{key}", f"{label}, OpenVINO fp32", who, "openvino", "fp32",
                                session_opener(xml, "openvino"), [xml, xml.with_suffix(".bin")], group="prune-ov",
                                config=dict(base)))
        if key == "edgecnn":
            pq = step("edgecnn PTQ of the pruned model",
                      lambda pm=pm: quantize_edgecnn(pm, data, cal_n, cfg.quantize_test_limit))
            if pq is not None:
                info["edgecnn_quantize_pruned"] = {"float_test": pq.float_test, "int8_test": pq.int8_test,
                                                   "observer": pq.observer, "observer_search": pq.observer_search}
                raw = step("export pruned int8 ONNX", lambda: export_onnx(pq.model, example,
                                                                          work / "pruned_edgecnn_int8.onnx", "int8"))
                if raw:
                    o, lo = lowered_onnx(raw, work / "pruned_edgecnn_int8_ort.onnx", "onnxruntime-integer")
                    rows.append(Row("ort/pruned-edgecnn-int8", "edgecnn prune + distill + int8, ONNX (lowered)",
                                    "edgecnn", "onnxruntime", "int8", session_opener(o, "onnxruntime"), [o],
                                    group="prune-int8", config={**base, "lowering": lo}))
                    o2, lo2 = lowered_onnx(raw, work / "pruned_edgecnn_int8_ov.onnx", "openvino")
                    xml = step("pruned int8 IR", lambda: onnx_to_ir(o2, work / "pruned_edgecnn_int8.xml"))
                    if xml:
                        rows.append(Row("ov/pruned-edgecnn-int8", "edgecnn prune + distill + int8, OpenVINO IR "
                                        "(lowered)", "edgecnn", "openvino", "int8", session_opener(xml, "openvino"),
                                        [xml, xml.with_suffix(".bin")], group="prune-int8", config={**base, "lowering": lo2}))
    info["prepare_seconds"] = round(time.perf_counter() - t0, 1)
    return rows, info


def kernels(rows: list[Row], log) -> None:
    """What each runtime made of an artifact: ORT's fused ops, OpenVINO's executed precisions, LiteRT's delegation."""
    from edgecnn.export.lowering import litert_delegation, openvino_precisions, ort_fused_ops

    for r in rows:
        if r.status != "ok" or not r.files:
            continue
        try:
            if r.runtime == "onnxruntime":
                ops = ort_fused_ops(r.files[0])
                r.config["kernels"] = {k: v for k, v in sorted(ops.items()) if k.startswith(("QLinear", "QGemm"))
                                       or k in ("Conv", "Add", "Gemm", "MatMul", "Transpose", "QuantizeLinear",
                                                "DequantizeLinear", "ConvInteger", "MatMulInteger")}
            elif r.runtime == "openvino":
                r.config["kernels"] = openvino_precisions(r.files[0])
            elif r.runtime == "litert" and "builtin" not in r.key:
                r.config["kernels"] = litert_delegation(r.files[0])
        except Exception as e:   # noqa: BLE001
            log(f"    kernels of {r.key}: {type(e).__name__}: {e}")


def screen_ort(rows: list[Row], x: np.ndarray, y: np.ndarray, ref: np.ndarray, cfg: SuiteConfig, log) -> dict:
    """Screen ORT quantize_static's configurations: top-1 on `cfg.ort_screen_images` test images and the
    median of `cfg.ort_screen_runs` interleaved 1-thread runs for every one; the `cfg.ort_keep` fastest of
    those within 1 pp of the screen's best top-1 are measured fully, the others stay as rows with status
    'screened' and their screen figures (ORT's best configuration is always among those measured)."""
    peers = [r for r in rows if r.who == "peer" and r.group == "int8-ort" and r.status == "ok"]
    if len(peers) <= cfg.ort_keep:
        return {}
    t = time.perf_counter()
    n = min(cfg.ort_screen_images, len(x))
    accuracy(peers, x[:n], y[:n], ref[:n], all_threads(), log, ref_key=None)
    spread: dict[str, dict] = {}
    med = latency(peers, x[:1], 1, cfg.ort_screen_runs, 3, log, spread)
    live = [r for r in peers if r.status == "ok" and r.key in med]
    for r in peers:
        r.screen = {"images": n, "top1": r.top1, "agreement": r.agreement, "p50_1t": med.get(r.key),
                    **{k: v for k, v in spread.get(r.key, {}).items()}}
        r.top1 = r.agreement = None
    if not live:
        return {}
    top = max(r.screen["top1"] or 0 for r in live)
    near = sorted((r for r in live if (r.screen["top1"] or 0) >= top - 1.0), key=lambda r: r.screen["p50_1t"])
    keep = {r.key for r in near[:cfg.ort_keep]}
    for r in live:
        if r.key not in keep:
            r.status = "screened"
            r.error = (f"not measured fully: screen {r.screen['top1']}% top-1 on {n} images, "
                       f"{r.screen['p50_1t']} ms at 1 thread ({cfg.ort_screen_runs} runs)")
    out = {"images": n, "runs": cfg.ort_screen_runs, "kept": sorted(keep), "seconds": round(time.perf_counter() - t, 1)}
    log(f"    ORT screen of {len(peers)} configurations: kept {', '.join(sorted(keep))} ({out['seconds']:.0f} s)")
    return out


def measure_rows(rows: list[Row], data, limit: int, runs: int, warmup: int, float_model, log,
                 cfg: SuiteConfig | None = None) -> dict[str, Any]:
    x, y = data.tensors("test", limit)
    x, y = x.numpy(), y.numpy()
    timing: dict[str, float] = {}
    t = time.perf_counter()
    with torch.no_grad():
        torch.set_num_threads(all_threads())
        ref = np.concatenate([float_model(torch.from_numpy(x[i:i + 64])).numpy() for i in range(0, len(x), 64)])
    timing["reference_logits"] = round(time.perf_counter() - t, 1)
    out: dict[str, Any] = {}
    if cfg is not None:
        out["ort_screen"] = screen_ort(rows, x, y, ref, cfg, log)
        timing["ort_screen"] = out["ort_screen"].get("seconds", 0.0)
    t = time.perf_counter()
    accuracy(rows, x, y, ref, all_threads(), log)
    timing["accuracy"] = round(time.perf_counter() - t, 1)
    log(f"    accuracy of {sum(r.status == 'ok' for r in rows)} rows on {len(x)} images: {time.perf_counter() - t:.0f} s")
    x1 = x[:1]
    for threads, attr, tag in ((1, "p50_1t", "1t"), (all_threads(), "p50_all", "all")):
        t = time.perf_counter()
        spread: dict[str, dict] = {}
        samples: dict[str, list[float]] = {}
        med = latency(rows, x1, threads, runs, warmup, log, spread, samples)
        for r in rows:
            if r.key in med:
                setattr(r, attr, med[r.key])
                r.spread[tag] = spread[r.key]
                r.samples[tag] = samples[r.key]
        timing[f"latency_{tag}"] = round(time.perf_counter() - t, 1)
        log(f"    latency at {threads} thread(s), {runs} interleaved runs: {time.perf_counter() - t:.0f} s")
    return {"n_images": len(x), "threads_all": all_threads(), "runs": runs, "measure_seconds": timing, **out}


def best_of(rows: list[Row], who: str, group: str, tolerance_pp: float = 0.5) -> Row | None:
    """Fastest (1 thread) ok row of `who` in `group` whose top-1 is within `tolerance_pp` of the group's best."""
    cand = [r for r in rows if r.who == who and r.group == group and r.status == "ok" and r.p50_1t]
    if not cand:
        return None
    top = max((r.top1 or 0) for r in cand)
    ok = [r for r in cand if (r.top1 or 0) >= top - tolerance_pp]
    return min(ok, key=lambda r: r.p50_1t)


def summarize(rows: list[Row], info: dict[str, Any]) -> dict[str, Any]:
    """Speedups vs eager fp32, the chosen best of each side, and edgecnn : peer ratios."""
    base = next((r for r in rows if r.key == "torch/fp32"), None)
    out: dict[str, Any] = {"comparisons": []}
    for r in rows:
        r.config = dict(r.config)
        if base and base.p50_1t and r.p50_1t:
            r.config["speedup_vs_eager_1t"] = round(base.p50_1t / r.p50_1t, 2)
        if base and base.p50_all and r.p50_all:
            r.config["speedup_vs_eager_all"] = round(base.p50_all / r.p50_all, 2)
    for group, peer_group in (("int8-ort", "int8-ort"), ("int8-ov", "int8-ov")):
        e, p = best_of(rows, "edgecnn", group), best_of(rows, "peer", peer_group)
        for r in (e, p):
            if r is not None:
                r.config["best"] = True
        if e and p:
            out["comparisons"].append(_compare(group, e, p))
    for rt in ("ort", "ov", "torch"):
        e = next((r for r in rows if r.key == f"{rt}/pruned-edgecnn" and r.status == "ok"), None)
        p = next((r for r in rows if r.key == f"{rt}/pruned-tp" and r.status == "ok"), None)
        if e and p:
            out["comparisons"].append(_compare(f"prune-{rt}", e, p))
    # pruned vs unpruned (fp32 in each runtime; int8 edgecnn vs its unpruned int8)
    pr = []
    for key, unpruned in (("ort/pruned-edgecnn", "ort/fp32"), ("ov/pruned-edgecnn", "ov/fp32"),
                          ("ort/pruned-tp", "ort/fp32"), ("ov/pruned-tp", "ov/fp32"),
                          ("torch/pruned-edgecnn", "torch/fp32"),
                          ("ort/pruned-edgecnn-int8", "ort/edgecnn-onnxruntime-integer"),
                          ("ov/pruned-edgecnn-int8", "ov/edgecnn-openvino")):
        a = next((r for r in rows if r.key == key and r.status == "ok" and r.p50_1t), None)
        b = next((r for r in rows if r.key == unpruned and r.status == "ok" and r.p50_1t), None)
        if a and b:
            macs_ratio = a.config.get("macs_ratio")
            sp = b.p50_1t / a.p50_1t
            pr.append({"pruned": key, "unpruned": unpruned, "macs_ratio": macs_ratio,
                       "speedup_1t": round(sp, 3),
                       "speedup_all": round(b.p50_all / a.p50_all, 3) if a.p50_all and b.p50_all else None,
                       "speedup_over_macs_ratio": round(sp / macs_ratio, 3) if macs_ratio else None})
    out["pruning_speedup"] = pr
    return out


def _compare(group: str, e: Row, p: Row) -> dict[str, Any]:
    lat = p.p50_1t / e.p50_1t if e.p50_1t and p.p50_1t else None
    lat_all = p.p50_all / e.p50_all if e.p50_all and p.p50_all else None
    acc = None if e.top1 is None or p.top1 is None else round(e.top1 - p.top1, 2)
    winner_speed = "edgecnn" if lat and lat >= 1 else "peer"
    out = {"group": group, "edgecnn": e.key, "peer": p.key,
           "peer_over_edgecnn_latency_1t": round(lat, 3) if lat else None,
           "peer_over_edgecnn_latency_all": round(lat_all, 3) if lat_all else None,
           "edgecnn_minus_peer_top1_pp": acc, "faster_at_1t": winner_speed,
           "more_accurate": None if acc is None else ("edgecnn" if acc > 0 else "peer" if acc < 0 else "tie")}
    if e.correct is not None and p.correct is not None and len(e.correct) == len(p.correct):
        out["accuracy_paired"] = paired_accuracy(e.correct, p.correct)
    if len(e.samples.get("1t", ())) == len(p.samples.get("1t", ())) > 1:
        out["latency_paired_1t"] = paired_latency(e.samples["1t"], p.samples["1t"])
    return out


def paired_accuracy(e_correct: np.ndarray, p_correct: np.ndarray) -> dict[str, Any]:
    """Two rows scored on the same images: the images only one side gets right, the exact McNemar
    test's two-sided p-value (how often a difference this large comes from two equally accurate
    models), and a 95% interval of the top-1 difference edgecnn - peer (pp, normal approximation of
    the paired difference)."""
    e, p = np.asarray(e_correct, bool), np.asarray(p_correct, bool)
    return paired_counts(len(e), int((e & ~p).sum()), int((~e & p).sum()))


def paired_counts(n: int, b: int, c: int) -> dict[str, Any]:
    """`paired_accuracy` from its counts: n images, b only edgecnn gets right, c only the peer."""
    m = b + c
    p_value = min(1.0, 2 * sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2 ** m) if m else 1.0
    d = (b - c) / n
    se = math.sqrt(max(m - (b - c) ** 2 / n, 0.0)) / n
    return {"images": n, "edgecnn_only": b, "peer_only": c, "p_value": round(p_value, 4),
            "diff_pp": round(100 * d, 2), "diff_ci95_pp": [round(100 * (d - 1.96 * se), 2), round(100 * (d + 1.96 * se), 2)],
            "significant": p_value < 0.05}


def paired_latency(e_seconds: list[float], p_seconds: list[float], resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Interleaved rounds of two rows (round i ran both back to back): the median over rounds of
    peer / edgecnn time, a 95% bootstrap interval of that median (rounds resampled), and the share
    of rounds in which the peer was slower. An interval that holds 1.0 means this run cannot tell
    which is faster."""
    r = np.asarray(p_seconds, float) / np.asarray(e_seconds, float)
    boots = np.median(np.random.default_rng(seed).choice(r, (resamples, len(r))), axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"rounds": len(r), "ratio_median": round(float(np.median(r)), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)],
            "peer_slower_share": round(float((r > 1).mean()), 3)}


def run_size(name: str, float_model, pruned: dict[str, tuple], data, cal_n: int, limit: int, runs: int,
             cfg: SuiteConfig, work: Path, log, tag: str) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    rows, info = build_rows(name, float_model, pruned, data, cal_n, work, cfg, log, tag)
    t = time.perf_counter()
    kernels(rows, log)
    info["kernels_seconds"] = round(time.perf_counter() - t, 1)
    info.update(measure_rows(rows, data, limit, runs, cfg.warmup, float_model, log, cfg))
    info.update(summarize(rows, info))
    info["input_shape"] = list(data.input_shape)
    info["rows"] = [r.to_dict() for r in rows]
    return info
