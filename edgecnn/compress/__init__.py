"""Compression passes: each a plain function over a validated config, returning a result with `to_dict`.

    prune(model, PruneConfig(...), data) -> PruneResult
    distill(student, teacher, data, DistillConfig(...)) -> DistillResult
    quantize(model, QuantizeConfig(...), data) -> QuantizeResult   (PTQ or QAT, one PT2E graph)
"""
from edgecnn.compress.calibration import CalibrationManifest, CalibrationSet, load_calibration
from edgecnn.compress.distill import DistillConfig, DistillResult, distill, distill_stage, finetune
from edgecnn.compress.prune import PruneConfig, PruneResult, prune, prune_stage
from edgecnn.compress.quantize import (ACTIVATION_OBSERVERS, QuantizeConfig, QuantizeResult, load_quantized,
                                       quantizable_layers, quantize, quantize_stage, save_quantized)
from edgecnn.compress.sensitivity import (SensitivityResult, plot_sensitivity, ratios_from_sensitivity,
                                          sensitivity_scan)

__all__ = ["PruneConfig", "PruneResult", "prune", "prune_stage", "SensitivityResult", "sensitivity_scan",
           "ratios_from_sensitivity", "plot_sensitivity", "DistillConfig", "DistillResult", "distill",
           "finetune", "distill_stage", "QuantizeConfig", "QuantizeResult", "quantize", "quantize_stage",
           "save_quantized", "load_quantized", "quantizable_layers", "ACTIVATION_OBSERVERS",
           "CalibrationManifest", "CalibrationSet", "load_calibration"]
