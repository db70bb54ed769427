"""Post-export verification: the artifact, loaded in its own runtime, against PyTorch.

fp32/fp16 artifacts are compared with the float model, int8 artifacts with the PT2E fake-quant
(converted) graph they were written from. Recorded: max and mean |logit diff|, the diff relative
to the reference's logit scale, top-1 agreement (an image whose reference top-1 is an exact tie
agrees when the artifact picks one of the tied classes; plain argmax agreement is kept beside it),
the runtime and its options. Outside tolerance
-> ExportError saying by how much.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import ExportError


def top1_agreement(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of two (N, classes) logit arrays, exact ties counted as what they are.

    An int8 model's logits sit on a grid, and on a barely trained model many images have their two
    top logits exactly equal; argmax then names the lower class index by convention, not because the
    model prefers it. An image agrees when one side's top-1 is among the other side's exactly tied top
    logits (with no ties: plain argmax equality). `strict` is plain argmax equality either way; `ties`
    counts the images whose reference top-1 is tied.
    """
    o, r = out.argmax(1), ref.argmax(1)
    rows = np.arange(len(ref))
    ref_top, out_top = ref.max(1), out.max(1)
    agree = (o == r) | (ref[rows, o] == ref_top) | (out[rows, r] == out_top)
    return {"top1_agreement": float(agree.mean()), "top1_agreement_strict": float((o == r).mean()),
            "reference_top1_ties": int(((ref == ref_top[:, None]).sum(1) > 1).sum())}


def compare(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Numbers that say how closely `out` follows `ref` (both (N, classes) logits)."""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    scale = max(1.0, float(np.abs(ref).max()))
    return {"samples": int(len(ref)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_scale": scale, "max_rel_diff": float(diff.max() / scale), **top1_agreement(out, ref)}


def runtime_options(fmt: str, precision: str) -> dict[str, Any]:
    # OpenVINO runs fp32 models in bf16 on AMX CPUs unless told otherwise; verification checks the
    # artifact's own numbers, so it asks for f32 compute (the bench measures the device default too).
    if fmt == "openvino":
        return {"inference_precision": "f32"}
    return {}


def verify(main: Path, contract: dict[str, Any], reference: Any, x: np.ndarray, precision: str,
           config: Any, runtime: str | None = None) -> dict[str, Any]:
    from edgecnn.export.base import run_torch
    from edgecnn.runtimes import open_session

    fmt = contract["format"]
    opts = runtime_options(fmt, precision)
    try:
        session = open_session(_Staged(main, fmt, contract), runtime, **opts)
    except Exception as e:   # noqa: BLE001
        raise ExportError(f"export {fmt} {precision}: the written file does not load in its runtime "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}).") from e
    with session:
        out = session.run(x)
    ref = run_torch(reference, x)
    if out.shape != ref.shape:
        raise ExportError(f"export {fmt} {precision}: the artifact gives logits of shape {out.shape}, "
                          f"PyTorch {ref.shape}.")
    result = compare(out, ref)
    tol, min_agree = config.tolerance(precision)
    result.update({"reference": "fake-quant graph" if precision == "int8" else "float model",
                   "tolerance_rel": tol, "min_top1_agreement": min_agree,
                   "runtime": session.info, "load_seconds": round(session.load_seconds, 3)})
    problems = []
    if not np.isfinite(out).all():
        problems.append("the artifact's logits contain NaN or inf")
    if result["max_rel_diff"] > tol:
        problems.append(f"max |logit diff| {result['max_abs_diff']:.4g} is {result['max_rel_diff']:.3g} of the "
                        f"logit scale {result['logit_scale']:.3g}, over the tolerance {tol:g} "
                        f"(by {result['max_rel_diff'] / tol:.1f}x)")
    if result["top1_agreement"] < min_agree:
        problems.append(f"top-1 agreement {result['top1_agreement']:.2%} is under {min_agree:.2%} "
                        f"(short by {min_agree - result['top1_agreement']:.2%})")
    result["passed"] = not problems
    if problems:
        which = "export.int8_tolerance / int8_min_agreement" if precision == "int8" else \
            f"export.{precision}_tolerance / min_agreement"
        raise ExportError(f"export {fmt} {precision}: verification in {session.info.get('runtime')} against the "
                          f"{result['reference']} on {result['samples']} images failed: {'; '.join(problems)}. "
                          f"Nothing was written.{_saturation_hint(fmt, precision, config)} If the difference is "
                          f"expected, loosen {which}.")
    return result


class _Staged:
    """A not-yet-final artifact, shaped like Artifact for open_session."""

    def __init__(self, path: Path, fmt: str, contract: dict[str, Any]):
        self.path, self.format, self.contract = path, fmt, contract


def _saturation_hint(fmt: str, precision: str, config: Any) -> str:
    """Why an int8 ONNX artifact can miss in ONNX Runtime on this machine, and the fix."""
    from edgecnn.export.lowering import ort_u8s8_saturates, resolve

    if fmt != "onnx" or precision != "int8" or resolve(getattr(config, "lowering", None)) == "onnxruntime-exact":
        return ""
    if not ort_u8s8_saturates():
        return ""
    return (" This machine's ONNX Runtime adds u8 x s8 products in saturating int16 pairs (x64 kernels without "
            "VNNI), which moves int8 results; export.lowering: onnxruntime-exact (uint8 weights) runs exactly, "
            "about 1.4x slower.")
