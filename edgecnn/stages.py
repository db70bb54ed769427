"""The stage registry: every stage a recipe can name, with its config class.

Each entry is one line that points at the pass's own module; the pass functions live with the
passes (compress/, export/, bench/), so this file only wires names to them.
"""
from __future__ import annotations

from edgecnn.models import build_model, count_macs, count_params
from edgecnn.pipeline import STAGES, StageContext, StageResult, stage
from edgecnn.train import TrainConfig, evaluate, fit

__all__ = ["STAGES"]


@stage("train", TrainConfig, trains=True)
def train_stage(ctx: StageContext, cfg: TrainConfig) -> StageResult:
    """Build the model from the recipe (and its checkpoint), train it, measure it on the test split."""
    model = build_model(ctx.recipe.model, ctx.data.num_classes, ctx.data.input_shape[0])
    fit_result = fit(model, ctx.data, cfg, seed=ctx.seed, description="train") if cfg.epochs else None
    model.eval()
    metrics = {"test": evaluate(model, ctx.data, "test"),
               "macs": count_macs(model, ctx.data.input_shape), "params": count_params(model)}
    if fit_result is not None:
        metrics["fit"] = fit_result.to_dict()
    return StageResult(model=model.cpu(), metrics=metrics)


def _register_optional() -> None:
    """Stages whose modules are present. Each import is light: heavy backends load on use."""
    import importlib

    wiring = [
        ("prune", "edgecnn.compress.prune", "PruneConfig", "prune_stage", True),
        ("distill", "edgecnn.compress.distill", "DistillConfig", "distill_stage", True),
        ("quantize", "edgecnn.compress.quantize", "QuantizeConfig", "quantize_stage", True),
        ("export", "edgecnn.export", "ExportConfig", "export_stage", False),
        ("verify", "edgecnn.bench.runner", "BenchConfig", "verify_stage", False),
    ]
    for name, module, cfg_name, fn_name, trains in wiring:
        mod = importlib.import_module(module)
        stage(name, getattr(mod, cfg_name), trains)(getattr(mod, fn_name))


_register_optional()
