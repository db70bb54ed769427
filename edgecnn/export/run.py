"""export_all (every format x precision, each verified) and the pipeline's export stage."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgecnn import progress
from edgecnn.errors import ExportError
from edgecnn.export.artifact import Artifact
from edgecnn.export.base import EXPORTERS, export_artifact
from edgecnn.export.config import ExportConfig


def contract_meta(data: Any, recipe_hash: str = "") -> dict[str, Any]:
    """What an artifact's contract takes from the data: preprocessing and class labels."""
    return {"preprocess": data.preprocess.to_dict(), "class_names": list(data.class_names),
            "recipe_hash": recipe_hash, "data_source": getattr(data, "source", None)}


class ArtifactList(list):
    """export_all's result: a list of Artifacts, plus `skipped` (format, precision, reason) entries."""

    def __init__(self, items=(), skipped=None):
        super().__init__(items)
        self.skipped: list[dict[str, str]] = list(skipped or [])


def export_all(float_model: Any, quantized_model_or_None: Any, data: Any, out_dir: Path, cfg: ExportConfig,
               recipe_hash: str = "") -> list[Artifact]:
    """Every format x precision in `cfg`, verified on `cfg.verify_samples` test images.

    fp32/fp16 come from `float_model`, int8 from the PT2E-converted `quantized_model_or_None`
    (int8 without one is an ExportError naming the fix). With cfg.skip_unsupported, a format that
    cannot take the model is left out and the reason kept in the result's `.skipped`.
    """
    out_dir = Path(out_dir)
    if "int8" in cfg.precisions and quantized_model_or_None is None:
        raise ExportError("export: int8 is in export.precisions but there is no quantized model. Add a "
                          "'quantize' stage before 'export', or set export.precisions to [fp32].")
    if any(p != "int8" for p in cfg.precisions):   # int8 only: float_model may be the quantized program itself
        float_model = float_model.eval().cpu()
    x_ver, _ = data.tensors("test", cfg.verify_samples)
    x_ver = x_ver.numpy()
    example = data.example_input(1)
    meta = contract_meta(data, recipe_hash)
    jobs = [(f, p) for p in cfg.precisions for f in cfg.formats]
    artifacts: list[Artifact] = []
    skipped: list[dict[str, str]] = []
    cache: dict = {}    # ONNX and OpenVINO share one torch.onnx.export per model
    for fmt, precision in progress.progress(jobs, len(jobs), "export"):
        spec = EXPORTERS.get(fmt)
        if precision not in spec.precisions:
            skipped.append({"format": fmt, "precision": precision,
                            "reason": f"{fmt} has no {precision} (it writes {', '.join(spec.precisions)})"})
            progress.log(f"  [yellow]skip[/] {fmt} {precision}: {fmt} has no {precision}")
            continue
        model = quantized_model_or_None if precision == "int8" else float_model
        path = out_dir / f"{cfg.name}_{precision}{spec.suffix}"
        progress.status(f"{fmt} {precision}")
        t0 = time.perf_counter()
        try:
            art = export_artifact(fmt, model, example, path, cfg, precision=precision, meta=meta,
                                  verify_inputs=x_ver, cache=cache)
        except ExportError as e:
            if not cfg.skip_unsupported:
                raise
            skipped.append({"format": fmt, "precision": precision, "reason": str(e)})
            progress.log(f"  [yellow]skip[/] {fmt} {precision}: {e}")
            continue
        art.verification["export_seconds"] = round(time.perf_counter() - t0, 2)
        v = art.verification
        progress.log(f"  {fmt} {precision}: {art.path.name} {art.size_bytes / 1e3:.0f} kB, top-1 agreement "
                     f"{v['top1_agreement']:.2%}, max |diff| {v['max_abs_diff']:.3g}")
        artifacts.append(art)
    return ArtifactList(artifacts, skipped)


def export_stage(ctx: Any, cfg: ExportConfig):
    """The pipeline's export stage: ctx.model (+ ctx.quantized()) -> verified artifacts in ctx.stage_dir."""
    from edgecnn.pipeline import StageResult

    quantized = ctx.quantized() if "int8" in cfg.precisions else None
    if quantized is None and "int8" in cfg.precisions:
        raise ExportError("export: export.precisions has int8 but no 'quantize' stage ran before 'export'. "
                          "Add a quantize stage to the recipe, or set export.precisions: [fp32].")
    artifacts = export_all(ctx.model, quantized, ctx.data, ctx.stage_dir, cfg, ctx.recipe_hash)
    metrics = {f"{a.format}_{a.precision}": {
        "file": a.path.name, "bytes": a.size_bytes, "top1_agreement": a.verification["top1_agreement"],
        "max_abs_diff": a.verification["max_abs_diff"], "samples": a.verification["samples"],
        "runtime": a.verification["runtime"].get("runtime")} for a in artifacts}
    if artifacts.skipped:
        metrics["skipped"] = list(artifacts.skipped)
    return StageResult(metrics=metrics, artifacts=artifacts)
