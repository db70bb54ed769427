"""edgecnn vs the peers, side by side in one process: accuracy, agreement, batch-1 latency, size.

    PYTHONPATH=. python benchmarks/run.py                 # full suite (about 40 min on 2 quiet cores)
    PYTHONPATH=. python benchmarks/run.py --quick         # smoke test: bn_cnn only, few runs (< 3 min)
    PYTHONPATH=. python benchmarks/run.py --models resnet18 --no-224 --out benchmarks/results/suite_resnet18.json

Per model (trained briefly on mnist5k at --size px, bn_cnn at 28x28x1), every row measured in the
same process with the latency runs interleaved (medians of batch-1 runs at 1 thread and at all
threads), each row's accuracy and top-1 agreement with the fp32 PyTorch eager model on the test split:

- baseline: PyTorch eager fp32 (every speedup is relative to it), ONNX fp32 in ORT, IR fp32 in OpenVINO
- int8 in ONNX Runtime: edgecnn's QDQ as exported, lowered ('onnxruntime': exact; 'onnxruntime-integer')
  vs ORT quantize_static in every configuration of benchmarks/suite.ORT_CONFIGS (best kept)
- int8 in OpenVINO: edgecnn's IR as exported and lowered ('openvino') vs NNCF (presets performance, mixed)
- int8 TFLite in LiteRT with and without XNNPACK
- pruning: edgecnn prune + distill vs Torch-Pruning MagnitudePruner + plain fine-tune (same ratio, same
  epochs), fp32 in torch/ORT/OpenVINO, and edgecnn's pruned model in int8

Then the 224x224 latency mode for resnet18 and mobilenet_v2: the same trained weights (trained at
--size px: training at 224 on 2 cores would take the whole budget), calibrated and measured at
224x224x3; accuracy at 224 is that of these weights on 224-px upscaled digits, the same for every row.
Writes JSON and Markdown (command, git commit, CPU, flags, versions, load average) to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite  # noqa: E402  (benchmarks/suite.py)
from suite import LATENCY_224, MODELS, ORT_CONFIGS_QUICK, SuiteConfig  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "suite.json"


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- environment

def cpu() -> dict[str, Any]:
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": [], "mhz": None}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
                info["model"] = v
            elif k == "vendor_id":
                info["vendor"] = v
            elif k == "cpu MHz" and info["mhz"] is None:
                info["mhz"] = float(v)
            elif k == "flags" and not info["flags"]:
                info["flags"] = sorted(f for f in v.split() if f.startswith(("avx", "amx", "fma", "f16c"))
                                       or f in ("sse4_2",))
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "CPU max MHz":
                info["max_mhz"] = float(v.strip())
            if k.strip() == "Model name":
                info["model"] = v.strip()
            if k.strip() == "Hypervisor vendor":
                info["hypervisor"] = v.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    info["cores"] = suite.all_threads()
    try:   # whether ORT's u8s8 kernels saturate here (x64 without VNNI): decides the 'auto' lowering
        from edgecnn.export.lowering import ort_u8s8_saturates
        info["ort_u8s8_saturates"] = ort_u8s8_saturates()
    except Exception as e:  # noqa: BLE001 - recorded, not fatal: the suite reports what it could learn
        info["ort_u8s8_saturates"] = f"probe failed: {e}"
    return info


def int8_peak(c: dict[str, Any]) -> dict[str, Any]:
    """Peak int8 MAC/s of this CPU from its ISA: MACs per cycle per core x cores x frequency.

    AMX (amx_int8): 1,024 int8 MAC/cycle/core (one TDPBUSD tile op per 16 cycles = 16x64x16 MACs).
    AVX-512 VNNI: VPDPBUSD does 64 u8*s8 MACs per 512-bit instruction; Intel server cores issue 2
    per cycle (ports 0 and 5): 128; AMD Zen 4 runs 512-bit ops as two 256-bit halves on its
    two VNNI-capable pipes: 64. AVX2 (pmaddubsw + pmaddwd): 2 x 32 = 64 at best, 32 counted here.
    Frequency: lscpu 'CPU max MHz' when the machine reports it, else /proc/cpuinfo 'cpu MHz'
    (a VM often reports only the nominal clock: then the peak is a floor, boost clocks go higher).
    """
    flags = set(c.get("flags", []))
    amd = "AMD" in (c.get("vendor", "") + c.get("model", ""))
    if "amx_int8" in flags:
        per, isa = 1024, "AMX int8"
    elif "avx512_vnni" in flags:
        per, isa = (64, "AVX-512 VNNI (Zen 4: 2x256-bit)") if amd else (128, "AVX-512 VNNI (2 FMA ports)")
    elif "avx_vnni" in flags:
        per, isa = 64, "AVX-VNNI (256-bit)"
    else:
        per, isa = 32, "AVX2"
    mhz = c.get("max_mhz") or c.get("mhz") or 0
    return {"isa": isa, "int8_mac_per_cycle_per_core": per, "mhz": mhz,
            "mhz_source": "lscpu CPU max MHz" if c.get("max_mhz") else "/proc/cpuinfo cpu MHz (nominal)",
            "peak_gmac_s_1core": round(per * mhz / 1e3, 1),
            "note": "no AMX on this CPU" if "amx_int8" not in flags else ""}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for m in ("torch", "torchvision", "torchao", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning",
              "litert-torch", "ai-edge-litert", "numpy"):
        try:
            out[m] = version(m)
        except PackageNotFoundError:
            out[m] = "not installed"
    return out


def git() -> dict[str, Any]:
    def g(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": g("rev-parse", "HEAD").strip(),
            "dirty_files": [ln[3:] for ln in g("status", "--porcelain").splitlines()
                            if ln.strip() and not ln.startswith("??")][:50]}


def scheduling() -> dict[str, Any]:
    """This process's nice value and, where the kernel groups processes per session (autogroup: then a
    nice value only ranks processes within their own session), its group's nice value."""
    out: dict[str, Any] = {"nice": os.nice(0)}
    for key, path in (("sched_autogroup_enabled", "/proc/sys/kernel/sched_autogroup_enabled"),
                      ("autogroup", "/proc/self/autogroup")):
        try:
            out[key] = Path(path).read_text().strip()
        except OSError:
            pass
    return out


def cpu_line(c: dict[str, Any]) -> str:
    """`cpu()` in one sentence, for a results Markdown header."""
    return (f"CPU {c.get('model')}, flags {' '.join(c.get('flags', []))}, "
            f"ONNX Runtime u8s8 kernels saturate: {c.get('ort_u8s8_saturates')}")


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_results(res: dict[str, Any], out: str | Path, markdown: Callable[[dict[str, Any]], str],
                  t0: float) -> None:
    """End a benchmark script: record the end load average and the seconds since `t0` in `res`, write
    `out` (JSON) and the Markdown `markdown(res)` beside it (same name, .md; both atomic), print the
    Markdown."""
    from edgecnn.io import write_json, write_text

    res["loadavg_end"] = loadavg()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(Path(out), res)
    print(write_text(Path(out).with_suffix(".md"), markdown(res)).read_text(), flush=True)


# --------------------------------------------------------------------------- the run

def load(name: str, size: int, calibration: int, seed: int):
    from edgecnn.data import DataConfig, load_data

    _, ch = MODELS[name]
    s = 28 if name == "bn_cnn" else size
    return load_data(DataConfig(source="mnist5k", image_size=s, channels=ch, calibration_size=calibration), seed)


def run_model(name: str, cfg: SuiteConfig, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    data = load(name, cfg.size, cfg.calibration, cfg.seed)
    phases["load_data"] = round(time.perf_counter() - t0, 1)
    log(f"  {name} at {data.input_shape}")
    t = time.perf_counter()
    model = suite.train(name, data, cfg, log)
    phases["train"] = round(time.perf_counter() - t, 1)
    pruned: dict[str, tuple] = {}
    t = time.perf_counter()
    try:
        pruned["edgecnn"] = suite.prune_edgecnn(model, data, cfg)
        log(f"    edgecnn prune + distill: {time.perf_counter() - t:.0f} s")
    except Exception as e:   # noqa: BLE001
        log(f"    [failed] edgecnn prune: {type(e).__name__}: {e}")
    phases["prune_edgecnn"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    try:
        pruned["tp"] = suite.prune_torch_pruning(model, data, cfg)
        log(f"    Torch-Pruning magnitude + fine-tune: {time.perf_counter() - t:.0f} s")
    except Exception as e:   # noqa: BLE001
        log(f"    [failed] Torch-Pruning: {type(e).__name__}: {e}")
    phases["prune_torch_pruning"] = round(time.perf_counter() - t, 1)
    res = suite.run_size(name, model, pruned, data, cfg.calibration, cfg.eval_limit, cfg.runs, cfg,
                         work / name, log, "main")
    res["phases"] = phases
    res["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"  {name}: {res['seconds']:.0f} s")
    return res, {"model": model, "pruned": pruned}


def run_224(name: str, state: dict[str, Any], cfg: SuiteConfig, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    phases: dict[str, Any] = {}
    data = load(name, 224, cfg.calibration_224, cfg.seed)
    phases["load_data"] = round(time.perf_counter() - t0, 1)
    log(f"  {name} at {data.input_shape} (weights trained at {cfg.size} px)")
    model, pruned, adapt = state["model"], dict(state["pruned"]), {}
    if cfg.adapt_224:
        t = time.perf_counter()
        model, adapt["model"] = suite.adapt_224(model, data, cfg, log, name, measure=True)
        for key, (pm, pinfo) in state["pruned"].items():
            am, ainfo = suite.adapt_224(pm, data, cfg, log, f"pruned ({key})", measure=True)
            pruned[key] = (am, pinfo)
            adapt[f"pruned-{key}"] = ainfo
        phases["adapt"] = round(time.perf_counter() - t, 1)
    c = dataclasses.replace(cfg, quantize_test_limit=min(100, cfg.eval_limit_224))
    res = suite.run_size(name, model, pruned, data, cfg.calibration_224, cfg.eval_limit_224,
                         cfg.runs_224, c, work / f"{name}_224", log, "224")
    res["adapt_224"] = adapt
    res["phases"] = phases
    res["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"  {name} 224: {res['seconds']:.0f} s")
    return res


def executed_conv_precision(row: dict[str, Any] | None) -> str | None:
    """The precision a row's convolutions ran in, from its runtime kernels ({'Convolution:bf16': 20, ...},
    recorded for OpenVINO rows); None where not recorded."""
    kernels = ((row or {}).get("config") or {}).get("kernels") or {}
    precs = sorted({k.split(":", 1)[1] for k in kernels if isinstance(k, str) and k.startswith("Convolution:")})
    return "/".join(precs) or None


def noise(comp: dict[str, Any], min_ratio: float) -> dict[str, Any]:
    """What the run's own spread says of a latency + accuracy goal (peer/edgecnn latency >= `min_ratio`,
    top-1 not below the peer's): 'within_noise' is true when neither the 95% interval of the paired
    latency ratio (interleaved rounds) lies wholly below `min_ratio` nor the paired accuracy test
    (McNemar, p < 0.05) finds edgecnn less accurate; the point figures decide 'met'."""
    lat, acc = comp.get("latency_paired_1t"), comp.get("accuracy_paired")
    if not lat or not acc:
        return {}
    parts = [f"latency ratio {lat['ratio_median']} (95% CI {lat['ci95'][0]}-{lat['ci95'][1]}, {lat['rounds']} rounds)",
             f"top-1 {acc['diff_pp']:+.2f} pp (95% CI {acc['diff_ci95_pp'][0]:+.2f} to {acc['diff_ci95_pp'][1]:+.2f}; "
             f"{acc['edgecnn_only']} images only edgecnn gets right, {acc['peer_only']} only the peer; McNemar p "
             f"{acc['p_value']})"]
    slower = lat["ci95"][1] < min_ratio
    worse = acc["significant"] and acc["diff_pp"] < 0
    return {"within_noise": not slower and not worse, "noise": "; ".join(parts)}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's goals, at 1 thread, batch 1, 224x224 (or the main size when 224 was not run)."""
    out = []
    mode = "latency_224" if results.get("latency_224") else "models"
    for name in LATENCY_224:
        r = results.get(mode, {}).get(name)
        if not r:
            continue
        rows = {row["key"]: row for row in r["rows"]}
        for comp in r.get("comparisons", []):
            if comp["group"] == "int8-ort":
                ratio = comp["peer_over_edgecnn_latency_1t"]
                acc = comp["edgecnn_minus_peer_top1_pp"]
                out.append({"model": name, "goal": "edgecnn int8 ONNX in ORT no slower than ORT's best quantize_static, "
                            "equal or better accuracy", "edgecnn": comp["edgecnn"], "peer": comp["peer"],
                            "figure": f"peer/edgecnn latency {ratio}, top-1 diff {acc:+.2f} pp",
                            "met": bool(ratio and ratio >= 1.0 and acc is not None and acc >= 0),
                            **noise(comp, 1.0)})
            if comp["group"] == "int8-ov":
                ratio = comp["peer_over_edgecnn_latency_1t"]
                acc = comp["edgecnn_minus_peer_top1_pp"]
                out.append({"model": name, "goal": "edgecnn int8 IR within 1.05x of NNCF, equal or better accuracy",
                            "edgecnn": comp["edgecnn"], "peer": comp["peer"],
                            "figure": f"edgecnn/NNCF latency {1 / ratio:.3f}, top-1 diff {acc:+.2f} pp" if ratio else "n/a",
                            "met": bool(ratio and 1 / ratio <= 1.05 and acc is not None and acc >= 0),
                            **noise(comp, 1 / 1.05)})
        if name == "resnet18":
            base = rows.get("torch/fp32")
            best = min((row for row in r["rows"] if row["precision"] == "int8" and row["who"] == "edgecnn"
                        and row["status"] == "ok" and row["p50_1t"] and not row["key"].startswith(("ort/pruned",
                                                                                                 "ov/pruned"))),
                       key=lambda row: row["p50_1t"], default=None)
            if base and best:
                sp = base["p50_1t"] / best["p50_1t"]
                out.append({"model": name, "goal": "best int8 artifact >= 15x faster than fp32 PyTorch eager",
                            "edgecnn": best["key"], "figure": f"{sp:.1f}x ({base['p50_1t']:.2f} ms -> "
                                                              f"{best['p50_1t']:.2f} ms)", "met": sp >= 15})
        for p in r.get("pruning_speedup", []):
            if p["pruned"].endswith(("pruned-edgecnn", "pruned-edgecnn-int8")) and not p["pruned"].startswith("torch"):
                g = {"model": name, "goal": "50%-channel-pruned speedup >= 0.8x the MACs ratio",
                     "edgecnn": p["pruned"], "peer": p["unpruned"],
                     "figure": f"{p['pruned']} vs {p['unpruned']}: speedup {p['speedup_1t']:.2f}x vs MACs "
                               f"ratio {p['macs_ratio']:.2f}x ({p['speedup_over_macs_ratio']:.2f})",
                     "met": bool(p["speedup_over_macs_ratio"] and p["speedup_over_macs_ratio"] >= 0.8)}
                ran = executed_conv_precision(rows.get(p["pruned"]))
                if ran and rows.get(p["pruned"], {}).get("precision") == "fp32" and ran != "f32":
                    # an "fp32" OpenVINO row runs in the CPU default precision (bf16 on CPUs with bf16
                    # units), where pruning gains less than in f32 (benchmarks/results/prune_profile.md)
                    g["executed_precision"] = ran
                    g["figure"] += f"; OpenVINO ran the convolutions in {ran} (CPU default precision), not f32"
                out.append(g)
    return out


def mac_rate(results: dict[str, Any], peak: dict[str, Any]) -> dict[str, Any] | None:
    mode = "latency_224" if results.get("latency_224", {}).get("resnet18") else "models"
    r = results.get(mode, {}).get("resnet18")
    if not r:
        return None
    rows = [row for row in r["rows"] if row["precision"] == "int8" and row["status"] == "ok" and row["p50_1t"]
            and "pruned" not in row["key"]]
    if not rows:
        return None
    best = min(rows, key=lambda row: row["p50_1t"])
    gmac = r["macs"] / 1e9
    rate = gmac / (best["p50_1t"] / 1e3)
    out = {"input": r["input_shape"], "row": best["key"], "gmac": round(gmac, 3), "p50_1t_ms": best["p50_1t"],
           "achieved_gmac_s": round(rate, 1), "peak_gmac_s_1core": peak["peak_gmac_s_1core"],
           "share_of_peak": round(rate / peak["peak_gmac_s_1core"], 3) if peak["peak_gmac_s_1core"] else None,
           # the clock the core must at least have run at to do this many MACs at the ISA's MACs/cycle
           "implied_min_mhz": round(rate * 1e3 / peak["int8_mac_per_cycle_per_core"])}
    if out["share_of_peak"] and out["share_of_peak"] > 1:
        out["note"] = (f"above the computed peak: the reported {peak['mhz']} MHz is not the clock the core ran at "
                       f"(boost); at {peak['int8_mac_per_cycle_per_core']} MAC/cycle it ran at >= "
                       f"{out['implied_min_mhz']} MHz. Give the real max clock with --cpu-max-mhz.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: bn_cnn only, short training, few runs")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="models of the main table (default: all)")
    ap.add_argument("--size", type=int, default=32, help="input side of the torchvision models (px, default 32)")
    ap.add_argument("--no-224", dest="l224", action="store_false", help="skip the 224x224 latency mode")
    ap.add_argument("--with-224", action="store_true", help="run the 224x224 mode in --quick too (smoke test)")
    ap.add_argument("--l224-models", nargs="+", choices=list(LATENCY_224), default=list(LATENCY_224),
                    help="models of the 224x224 mode (default: resnet18 mobilenet_v2)")
    ap.add_argument("--runs", type=int, help="timed runs per row and thread count (default 60; 224: 40)")
    ap.add_argument("--no-adapt-224", dest="adapt_224", action="store_false",
                    help="224 mode: use the main-size weights as they are (no fine-tune at 224 px)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON path; the .md goes beside it")
    ap.add_argument("--cpu-max-mhz", type=float, help="the CPU's max (boost) clock, when lscpu does not report it "
                                                      "(a VM): used for the int8 peak")
    ap.add_argument("--work", type=Path, help="folder for models and artifacts (default: a temporary one)")
    args = ap.parse_args(argv)

    cfg = SuiteConfig(size=args.size)
    models = args.models or list(MODELS)
    if args.quick:
        models = args.models or ["bn_cnn"]
        cfg = dataclasses.replace(cfg, train_epochs=1, train_max_steps=40, finetune_max_steps=15, calibration=64,
                                  eval_limit=200, runs=20, warmup=3, ort_configs=list(ORT_CONFIGS_QUICK),
                                  nncf_presets=("performance",), calibration_224=32, eval_limit_224=50,
                                  runs_224=10, ort_screen_images=50, ort_screen_runs=5, ort_keep=1,
                                  adapt_bn_images=64, adapt_steps=2)
        args.l224 = args.with_224
    if args.runs:
        cfg = dataclasses.replace(cfg, runs=args.runs, runs_224=args.runs)
    cfg = dataclasses.replace(cfg, adapt_224=args.adapt_224)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import torch
    torch.manual_seed(cfg.seed)
    c = cpu()
    if args.cpu_max_mhz:
        c["max_mhz"] = args.cpu_max_mhz
    peak = int8_peak(c)
    if args.cpu_max_mhz:
        peak["mhz_source"] = "--cpu-max-mhz"
    results: dict[str, Any] = {
        "schema": "edgecnn-benchmark-suite/1",
        "command": "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in ["benchmarks/run.py", *(argv or sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git(), "cpu": c, "int8_peak": peak,
        "versions": versions(), "scheduling": scheduling(), "loadavg_start": loadavg(), "config": dataclasses.asdict(cfg),
        "quick": args.quick, "models": {}, "latency_224": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="edgecnn-bench-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    states: dict[str, Any] = {}
    l224 = args.l224_models if args.l224 else []
    need = list(models) + [m for m in l224 if m not in models]
    try:
        for name in need:
            log(f"[{time.perf_counter() - t0:5.0f} s] {name}")
            res, states[name] = run_model(name, cfg, work)
            res["loadavg_after"] = loadavg()
            if name in models:
                results["models"][name] = res
            results["seconds"] = round(time.perf_counter() - t0, 1)
            write(results, args.out)
        if l224:
            for name in l224:
                log(f"[{time.perf_counter() - t0:5.0f} s] {name} at 224x224")
                results["latency_224"][name] = run_224(name, states[name], cfg, work)
                results["latency_224"][name]["loadavg_after"] = loadavg()
                results["seconds"] = round(time.perf_counter() - t0, 1)
                write(results, args.out)
    finally:
        results["seconds"] = round(time.perf_counter() - t0, 1)
        results["loadavg_end"] = loadavg()
        results["goals"] = goals(results)
        results["mac_rate"] = mac_rate(results, peak)
        write(results, args.out)
        if work_ctx:
            work_ctx.cleanup()
    log(f"done in {results['seconds']:.0f} s: {args.out} and {args.out.with_suffix('.md')}")
    return 0


def write(results: dict[str, Any], out: Path) -> None:
    from suite_report import markdown

    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out)
    md = out.with_suffix(".md")
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(markdown(results))
    tmp.replace(md)


if __name__ == "__main__":
    sys.exit(main())
