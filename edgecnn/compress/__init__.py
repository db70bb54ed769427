"""Compression passes: each a plain function over a validated config, returning a result with `to_dict`."""
from edgecnn.compress.distill import DistillConfig, DistillResult, distill, distill_stage, finetune
from edgecnn.compress.prune import PruneConfig, PruneResult, prune, prune_stage
from edgecnn.compress.sensitivity import (SensitivityResult, plot_sensitivity, ratios_from_sensitivity,
                                          sensitivity_scan)

__all__ = ["PruneConfig", "PruneResult", "prune", "prune_stage", "SensitivityResult", "sensitivity_scan",
           "ratios_from_sensitivity", "plot_sensitivity", "DistillConfig", "DistillResult", "distill",
           "finetune", "distill_stage"]
