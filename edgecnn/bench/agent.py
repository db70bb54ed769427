"""The measurement core, runnable on its own: copied to a remote device and run there.

This file needs only Python >= 3.8, NumPy and the runtime that runs the artifact (onnxruntime,
openvino, ai-edge-litert or tflite_runtime): no torch, no edgecnn. `edgecnn.bench.measure`
imports the same functions, so a local and a remote measurement compute accuracy, agreement and
latency statistics with the same code and can be held against each other.

    python3 agent.py probe                   -> JSON: Python, NumPy, CPU, which runtimes import
    python3 agent.py measure --job job.json  -> JSON: accuracy, agreement, latency, memory

Exit status: 0 ok, 2 the job failed (the JSON says why), 3 the runtime is not installed.
Keep it Python 3.8 syntax: a Raspberry Pi OS or JetPack image may ship an old Python.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

import numpy as np

SCHEMA = "edgecnn.agent/1"
EXIT_FAILED = 2
EXIT_NO_RUNTIME = 3

# Runtime name -> importable modules, first found wins. tflite_runtime is the older name of
# ai-edge-litert with the same Interpreter API; a device may have only one of them.
RUNTIME_MODULES = {
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "litert": ("ai_edge_litert", "tflite_runtime"),
    "torch": ("torch",),
}
# Module -> distribution names whose version we report (importlib.metadata, no import needed).
_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "ai_edge_litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
    "tflite_runtime": ("tflite-runtime", "tflite_runtime"),
    "torch": ("torch",),
}
# CPU features that decide which int8/bf16 kernels a runtime can use (x86 flags, ARM Features).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve", "neon")


class AgentError(Exception):
    def __init__(self, message, kind="failed"):
        super().__init__(message)
        self.kind = kind      # failed | runtime_missing


# --------------------------------------------------------------------------- environment

def runtime_versions(names=None, load=False):
    """{runtime: {"module": ..., "version": ...}} for the runtimes that are installed, else None.
    load=True imports each one (slower, but a broken install then counts as missing)."""
    import importlib.util

    out = {}
    for name in names or RUNTIME_MODULES:
        out[name] = None
        for module in RUNTIME_MODULES.get(name, (name,)):
            try:
                found = importlib.util.find_spec(module) is not None
                if found and load:
                    importlib.import_module(module)
            except Exception:  # ImportError, or whatever a broken native extension raises
                found = False
            if found:
                out[name] = {"module": module, "version": _dist_version(module)}
                break
    return out


def _dist_version(module):
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8 has no importlib.metadata; we require 3.8 but fail soft
        return None
    for dist in _DISTRIBUTIONS.get(module, (module,)):
        try:
            return metadata.version(dist)
        except Exception:  # PackageNotFoundError, or a broken install's metadata
            continue
    return None


def cpu_info():
    """CPU model, logical CPU count, CPUs this process may run on, and the kernel-relevant flags."""
    names, flags = {}, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip().lower(), value.strip()
                if key in ("model name", "model", "hardware", "cpu model") and value and not value.isdigit():
                    names.setdefault(key, value)
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    # x86: "model name"; Raspberry Pi: "Model" (the board); other ARM boards: "Hardware".
    model = next((names[k] for k in ("model name", "model", "hardware", "cpu model") if k in names), None)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"model": model or platform.processor() or platform.machine(),
            "machine": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "affinity": affinity,
            "flags": sorted(f for f in CPU_FLAGS if f in flags),
            "avx512_vnni": "avx512_vnni" in flags, "amx": "amx_int8" in flags}


# One QLinearConv, u8 input 255 x s8 weights 127 over 4 channels, output scale 1000: 4 x 255 x 127 =
# 129,540 -> 130 when ONNX Runtime adds the products exactly, 2 x 32,767 -> 66 when its x64 u8s8
# kernels without VNNI add pairs in int16 and saturate. Serialized here (226 bytes) so a device needs
# no onnx package; tests/bench/test_measure.py rebuilds it with onnx.helper and checks these bytes.
_U8S8_PROBE = ("CAkSADrVAQouCgF4CgJ4cwoCeHoKAXcKAndzCgJ3egoCeXMKAnl6EgF5IgtRTGluZWFyQ29udhIFcHJvYmUqDBABQgJ4"
               "c0oEAACAPyoJEAJCAnh6SgEAKhMIAQgECAEIARADQgF3SgR/f39/Kg4IARABQgJ3c0oEAACAPyoLCAEQA0ICd3pKAQAq"
               "DBABQgJ5c0oEAAB6RCoJEAJCAnl6SgEAWhsKAXgSFgoUCAISEAoCCAEKAggECgIIAQoCCAFiGwoBeRIWChQIAhIQCgII"
               "AQoCCAEKAggBCgIIAUIECgAQEQ==")


def ort_u8s8_saturates():
    """Whether this machine's ONNX Runtime adds u8 x s8 products in saturating int16 pairs (x64
    kernels without VNNI), which makes u8s8 int8 models inexact here; see
    `edgecnn.export.lowering` ('onnxruntime-exact')."""
    import base64

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(base64.b64decode(_U8S8_PROBE), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.full((1, 4, 1, 1), 255, np.uint8)})[0]
    return int(y.reshape(-1)[0]) != 130


def environment(runtimes=None, threads=None, load=False):
    found = runtime_versions(runtimes, load)
    env = {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
           "numpy": np.__version__, "cpu": cpu_info(), "runtimes": found, "threads": threads}
    if (found.get("onnxruntime") or {}).get("module") == "onnxruntime":
        try:   # recorded with the CPU: it decides whether an 'onnxruntime' (u8s8) lowering is exact here
            env["cpu"]["ort_u8s8_saturates"] = ort_u8s8_saturates()
        except Exception as e:  # a build without the CPU provider, or a broken install
            env["cpu"]["ort_u8s8_saturates"] = "probe failed: %s" % (str(e).splitlines() or [type(e).__name__])[0]
    return env


# --------------------------------------------------------------------------- memory

def reset_peak_rss():
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0), so the next peak is ours."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb():
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024.0, 1)


def peak_rss_mb():
    """Peak resident memory of this process in MiB (since the last `reset_peak_rss`)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            kb /= 1024.0
    return round(kb / 1024.0, 1)


# --------------------------------------------------------------------------- statistics

def latency_stats(samples_ms):
    """p50/p90/p99 (linear interpolation, as numpy.percentile), mean, std (population), min, max."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"runs": int(a.size), "p50": round(float(p50), 4), "p90": round(float(p90), 4),
            "p99": round(float(p99), 4), "mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4)}


def topk_accuracy(logits, labels, ks=(1, 5)):
    """Top-k accuracy in percent, rounded to 2 decimals (as edgecnn.train.topk_accuracy)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    out = {}
    # stable sort of the negated scores: among equal scores the lower class index ranks first,
    # which is what torch.topk does on CPU.
    order = np.argsort(-logits, axis=1, kind="stable")
    for k in ks:
        k_ = min(k, logits.shape[1])
        hit = (order[:, :k_] == labels[:, None]).any(axis=1)
        out["top%d" % k] = round(100.0 * float(hit.mean()), 2)
    return out


def agreement(logits, reference):
    """How closely logits follow the reference: top-1 agreement (%), max and mean |difference|."""
    logits = np.asarray(logits, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if logits.shape != reference.shape:
        raise AgentError("logits have shape %s but the reference logits %s: they come from different "
                         "test inputs or a different number of classes" % (logits.shape, reference.shape))
    diff = np.abs(logits - reference)
    return {"top1_agreement": round(100.0 * float((logits.argmax(1) == reference.argmax(1)).mean()), 2),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


# --------------------------------------------------------------------------- timing

def time_runs(run, x, warmup=10, runs=100, time_budget_s=None, min_runs=10, clock=time.perf_counter):
    """Per-call latencies in ms: `warmup` untimed calls, then timed calls until `runs` are done or,
    with a time budget, the budget is spent (after at least `min_runs`). runs=0: budget only."""
    if not runs and not time_budget_s:
        raise ValueError("give runs > 0 or a time budget")
    for _ in range(warmup):
        run(x)
    samples = []
    start = clock()
    while True:
        t0 = clock()
        run(x)
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        if runs and len(samples) >= runs:
            break
        if time_budget_s and len(samples) >= min_runs and t1 - start >= time_budget_s:
            break
    return samples


def supports_batch(run, x, batch):
    """Whether the session takes a batch of `batch` images (a static batch-1 artifact does not)."""
    if batch <= 1:
        return True
    xb = np.repeat(x[:1], batch, axis=0) if len(x) < batch else x[:batch]
    try:
        out = run(np.ascontiguousarray(xb))
    except Exception:  # each runtime raises its own type for a shape mismatch
        return False
    return getattr(out, "shape", (None,))[0] == batch


def predict(run, x, batch):
    outs = [np.asarray(run(np.ascontiguousarray(x[i:i + batch])), dtype=np.float32)
            for i in range(0, len(x), batch)]
    return np.concatenate(outs, axis=0)


def throughput(run, x, batch, seconds=2.0, min_calls=3, clock=time.perf_counter):
    """Images per second at `batch`, over at least `min_calls` calls and about `seconds`."""
    xb = np.ascontiguousarray(np.repeat(x[:1], batch, axis=0) if len(x) < batch else x[:batch])
    run(xb)  # warm-up at this shape
    calls, start = 0, clock()
    while True:
        run(xb)
        calls += 1
        elapsed = clock() - start
        if calls >= min_calls and elapsed >= seconds:
            break
    return round(batch * calls / elapsed, 2)


DEFAULTS = {"runs": 200, "warmup": 20, "time_budget_s": None, "min_runs": 20, "eval_batch": 64,
            "throughput_batch": 32, "throughput_seconds": 2.0}


def measure_session(run, x, labels=None, reference=None, config=None, clock=time.perf_counter, fixed_batch=None):
    """Accuracy, agreement, batch-1 latency and throughput of `run(x) -> logits` on inputs `x`.
    fixed_batch: the batch the model was built for when it has one (a session may still take any
    batch by running chunks, but then batching is no faster: throughput is measured at that batch)."""
    cfg = dict(DEFAULTS)
    cfg.update(config or {})
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = {}
    eval_batch = cfg["eval_batch"] if supports_batch(run, x, cfg["eval_batch"]) else 1
    logits = predict(run, x, eval_batch)
    if logits.ndim != 2 or logits.shape[0] != len(x):
        raise AgentError("the model returned shape %s for %d images; expected (N, classes) logits"
                         % (logits.shape, len(x)))
    out["eval_batch"] = eval_batch
    out["n_images"] = int(len(x))
    if labels is not None:
        out["accuracy"] = topk_accuracy(logits, labels)
    if reference is not None:
        out["agreement"] = agreement(logits, reference)
    samples = time_runs(run, x[:1], cfg["warmup"], cfg["runs"], cfg["time_budget_s"], cfg["min_runs"], clock)
    out["latency_ms"] = latency_stats(samples)
    tb = int(cfg["throughput_batch"] or 0)
    if fixed_batch:
        tb = min(tb, int(fixed_batch))
    if tb > 1 and supports_batch(run, x, tb):
        out["throughput"] = {"batch": tb, "images_per_s": throughput(run, x, tb, cfg["throughput_seconds"],
                                                                       clock=clock)}
    else:  # batch 1 back to back: the latency runs already measured it
        out["throughput"] = {"batch": 1, "images_per_s": round(1e3 / out["latency_ms"]["mean"], 2)}
    return out, logits


# --------------------------------------------------------------------------- runtime adapters
# Each takes float32 NCHW and returns float32 logits, like edgecnn.runtimes, but reads only the
# artifact and its sidecar (JSON). Quantized inputs/outputs are (de)quantized with the scale and
# zero point the model file declares, falling back to the sidecar's.

def _import_runtime(name):
    for module in RUNTIME_MODULES.get(name, (name,)):
        try:
            return importlib.import_module(module), module
        except ImportError:
            continue
    raise AgentError("runtime '%s' is not installed on %s (python %s at %s). Install it there, e.g. "
                     "'%s -m pip install %s', or remove it from the target's runtimes."
                     % (name, platform.node(), platform.python_version(), sys.executable, sys.executable,
                        {"litert": "ai-edge-litert"}.get(name, name)), kind="runtime_missing")


def _sidecar_quant(contract, side):
    """(scale, zero_point) of the model's `side` ('input'/'output') from the sidecar, or None.
    Sidecar schema edgecnn.artifact/1: {side: {..., quantization: {scale, zero_point, dtype} | null}}."""
    entry = (contract or {}).get(side) or {}
    q = entry.get("quantization") if isinstance(entry, dict) else None
    if isinstance(q, dict) and q.get("scale") is not None:
        return float(q["scale"]), int(q.get("zero_point", 0))
    return None


def _need_quant(qparams, side, path):
    if not qparams:
        raise AgentError("%s: the model's %s is integer but neither the model nor its sidecar gives a scale and "
                         "zero point. Copy the artifact together with its .json sidecar." % (path, side))
    return qparams


def _quantize(x, dtype, qparams):
    scale, zp = qparams
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)


def _dequantize(y, qparams):
    scale, zp = qparams
    return (y.astype(np.float32) - zp) * scale


class OnnxRuntimeSession:
    def __init__(self, path, threads=None, contract=None):
        ort, _ = _import_runtime("onnxruntime")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                            "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(inp.type, np.float32)
        self.in_q = _sidecar_quant(contract, "input")
        self.out_q = _sidecar_quant(contract, "output")

    def run(self, x):
        if self.input_dtype in (np.int8, np.uint8):
            x = _quantize(x, self.input_dtype, _need_quant(self.in_q, "input", "onnx"))
        else:
            x = x.astype(self.input_dtype, copy=False)
        y = self.session.run(None, {self.input_name: x})[0]
        if y.dtype in (np.int8, np.uint8) and self.out_q:
            return _dequantize(y, self.out_q)
        return y.astype(np.float32, copy=False)


class OpenVINOSession:
    def __init__(self, path, threads=None, contract=None, device="CPU"):
        ov, _ = _import_runtime("openvino")
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        # One stream: latency mode, like the local adapter; throughput then comes from batching.
        config["PERFORMANCE_HINT"] = "LATENCY"
        self.compiled = core.compile_model(core.read_model(str(path)), device, config)
        self.output = self.compiled.output(0)

    def run(self, x):
        return np.asarray(self.compiled(x)[self.output], dtype=np.float32)


class LiteRTSession:
    def __init__(self, path, threads=None, contract=None):
        mod, name = _import_runtime("litert")
        interp_mod = importlib.import_module(name + ".interpreter")
        self.interpreter = interp_mod.Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
        self.interpreter.allocate_tensors()
        self.contract = contract or {}
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        signature = list(self.inp.get("shape_signature", self.inp["shape"]))
        # A converter writes a fixed batch (usually 1) into the graph, reshapes included: resizing such
        # a model gives wrong shapes, so it is run in chunks of its batch, the last one padded.
        self.dynamic = bool(signature) and signature[0] == -1
        self.batch = int(self.inp["shape"][0])
        layout = (self.contract.get("input") or {}).get("layout") if isinstance(self.contract.get("input"), dict) \
            else None
        shape = list(self.inp["shape"])
        if not layout:  # no sidecar: channels last when the last axis looks like channels and axis 1 does not
            layout = "NHWC" if len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3) else "NCHW"
        self.nhwc = layout.upper() == "NHWC"

    def run(self, x):
        if self.nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        n = x.shape[0]
        if self.dynamic or n == self.batch:
            return self._invoke(x)
        outs = []
        for i in range(0, n, self.batch):
            chunk = x[i:i + self.batch]
            k = len(chunk)
            if k < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - k,) + chunk.shape[1:], chunk.dtype)])
            outs.append(self._invoke(chunk)[:k])
        return np.concatenate(outs)

    def _invoke(self, x):
        if self.dynamic and x.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.inp["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self.inp = self.interpreter.get_input_details()[0]
            self.out = self.interpreter.get_output_details()[0]
            self.batch = x.shape[0]
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8):
            qp = self.inp.get("quantization") or (0.0, 0)
            qp = qp if qp[0] else _need_quant(_sidecar_quant(self.contract, "input"), "input", "tflite")
            x = _quantize(x, dtype, qp)
        else:
            x = np.ascontiguousarray(x, dtype=dtype)
        self.interpreter.set_tensor(self.inp["index"], np.ascontiguousarray(x))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.out["index"])
        if y.dtype in (np.int8, np.uint8):
            qp = self.out.get("quantization") or (0.0, 0)
            qp = qp if qp[0] else _need_quant(_sidecar_quant(self.contract, "output"), "output", "tflite")
            y = _dequantize(y, qp)
        return np.asarray(y, dtype=np.float32).reshape(y.shape[0], -1)


ADAPTERS = {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVINOSession, "litert": LiteRTSession}


def open_session(runtime, path, threads=None, contract=None):
    if runtime not in ADAPTERS:
        raise AgentError("the agent has no adapter for runtime '%s' (it has %s)"
                         % (runtime, ", ".join(sorted(ADAPTERS))), kind="runtime_missing")
    return ADAPTERS[runtime](path, threads=threads, contract=contract)


# --------------------------------------------------------------------------- commands

def run_job(job, root="."):
    """Load the artifact named in `job`, measure it, return a JSON-ready dict."""
    def p(name):
        return None if name is None else os.path.join(root, name)

    contract = {}
    if job.get("sidecar"):
        with open(p(job["sidecar"])) as f:
            contract = json.load(f)
        contract = contract.get("contract", contract)
    threads = job.get("threads")
    _import_runtime(job["runtime"])  # a missing runtime is its own error, before anything else
    reset_peak_rss()
    rss_before = current_rss_mb()
    t0 = time.perf_counter()
    session = open_session(job["runtime"], p(job["artifact"]), threads, contract)
    load_s = time.perf_counter() - t0
    x = np.load(p(job["inputs"]))
    labels = np.load(p(job["labels"])) if job.get("labels") else None
    reference = np.load(p(job["reference"])) if job.get("reference") else None
    fixed = None if getattr(session, "dynamic", True) else getattr(session, "batch", None)
    measured, logits = measure_session(session.run, x, labels, reference, job.get("config"), fixed_batch=fixed)
    peak = peak_rss_mb()
    if job.get("save_logits"):
        np.save(p(job["save_logits"]), logits)
    return {"schema": SCHEMA, "ok": True, "load_s": round(load_s, 4), "peak_rss_mb": peak,
            "rss_added_mb": None if rss_before is None else round(peak - rss_before, 1),
            "measure": measured, "env": environment([job["runtime"]], threads)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="edgecnn measurement agent")
    sub = parser.add_subparsers(dest="command")
    probe = sub.add_parser("probe", help="report Python, NumPy, CPU and runtimes as JSON")
    probe.add_argument("--runtimes", default=None, help="comma-separated runtime names")
    measure = sub.add_parser("measure", help="measure an artifact as described by a job file")
    measure.add_argument("--job", required=True)
    args = parser.parse_args(argv)
    if args.command == "probe":
        names = args.runtimes.split(",") if args.runtimes else None
        # import each runtime: "installed" should mean "answers", as a measurement will need
        print(json.dumps({"schema": SCHEMA, "ok": True, "env": environment(names, load=True)}))
        return 0
    if args.command != "measure":
        parser.print_help()
        return EXIT_FAILED
    try:
        with open(args.job) as f:
            job = json.load(f)
        result = run_job(job, os.path.dirname(os.path.abspath(args.job)))
    except AgentError as e:
        print(json.dumps({"schema": SCHEMA, "ok": False, "kind": e.kind, "error": str(e)}))
        return EXIT_NO_RUNTIME if e.kind == "runtime_missing" else EXIT_FAILED
    except Exception as e:  # report any failure as JSON: the caller shows it per target
        print(json.dumps({"schema": SCHEMA, "ok": False, "kind": "failed",
                          "error": "%s: %s" % (type(e).__name__, e)}))
        return EXIT_FAILED
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
