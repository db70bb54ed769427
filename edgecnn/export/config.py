"""ExportConfig: which formats and precisions to write, and how closely each must match PyTorch."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgecnn.config import check

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["onnx", "openvino", "tflite"])  # registered exporters
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])  # fp32 | fp16 | int8 (int8 needs a quantize stage)
    opset: int | None = None            # ONNX opset; null: onnx.DEFAULT_OPSET (18), recorded in the contract
    dynamic_batch: bool = True          # batch axis left free where the format allows (ONNX, OpenVINO); TFLite: batch 1
    tflite_io: Literal["float", "int8"] = "float"   # int8 TFLite: float32 I/O (quantize inside) or int8 I/O
    verify_samples: int = 500           # test-split images compared against PyTorch after each export
    fp32_tolerance: float = 1e-3        # max |logit diff| vs the float model, as a share of max |reference logit| (floored at 1)
    fp16_tolerance: float = 2e-2        # the same for fp16 artifacts
    int8_tolerance: float = 0.25        # the same for int8 vs the fake-quant graph: runtimes round int8 differently
    min_agreement: float = 0.99         # top-1 agreement with the reference, share of verified images (fp32/fp16)
    int8_min_agreement: float = 0.98    # top-1 agreement of int8 artifacts with the fake-quant graph
    name: str = "model"                 # file stem: <name>_<precision>.<ext>
    skip_unsupported: bool = False      # a format that cannot take the model is recorded and skipped, not fatal
    lowering: str | None = "auto"          # int8 ONNX rewritten for the runtime's fast kernels (export/lowering.py):
    #   'onnxruntime': uint8 activations with zero point + 128, redundant Relu folded (an exact rewrite, but ORT's
    #   u8s8 kernels on x64 CPUs without VNNI saturate int16 pairs); 'onnxruntime-exact': also uint8 weights
    #   (exact everywhere, ~1.4x slower where u8s8 runs on VNNI); 'auto': the exact one where this machine's ORT
    #   saturates (ort_u8s8_saturates()), else 'onnxruntime'; null: as exported
    openvino_lowering: str | None = None   # int8 IR from a lowered ONNX; 'openvino' requantizes float residual
    #   reads so adds fuse into int8 convolutions (not bit-exact: verified against int8_tolerance); null: as exported
    #   (edgecnn's quantizer writes no float residual reads since QuantizeConfig.int8_adds: nothing left to requantize)

    def __post_init__(self):
        from edgecnn.export.base import EXPORTERS
        from edgecnn.errors import unknown

        check(len(self.formats) > 0, "formats", "give at least one format")
        for i, f in enumerate(self.formats):
            if f not in EXPORTERS:
                raise unknown("export format", f, EXPORTERS.names(), f"formats[{i}]")
        check(len(self.precisions) > 0, "precisions", "give at least one precision")
        for i, p in enumerate(self.precisions):
            if p not in PRECISIONS:
                raise unknown("precision", p, PRECISIONS, f"precisions[{i}]")
        check(len(set(self.formats)) == len(self.formats), "formats", f"{self.formats} names a format twice")
        check(self.opset is None or 13 <= self.opset <= 23, "opset",
              f"{self.opset} is outside 13..23 (per-channel QDQ needs 13 or later)")
        check(self.verify_samples >= 1, "verify_samples", "must be at least 1")
        from edgecnn.export.lowering import AUTO, PRESETS
        for k in ("lowering", "openvino_lowering"):
            v = getattr(self, k)
            allowed = [*PRESETS, AUTO] if k == "lowering" else list(PRESETS)   # 'auto' picks an ONNX Runtime form
            if v is not None and v not in allowed:
                raise unknown("lowering preset", v, allowed, k)
        for k in ("fp32_tolerance", "fp16_tolerance", "int8_tolerance"):
            check(getattr(self, k) > 0, k, "must be > 0")
        for k in ("min_agreement", "int8_min_agreement"):
            check(0 <= getattr(self, k) <= 1, k, "must be within 0..1")
        check(self.name.replace("-", "").replace("_", "").isalnum(), "name",
              f"'{self.name}' must be letters, digits, '-' or '_' (it names files)")

    def tolerance(self, precision: str) -> tuple[float, float]:
        """(max relative logit diff, min top-1 agreement) for an artifact of `precision`."""
        if precision == "int8":
            return self.int8_tolerance, self.int8_min_agreement
        return (self.fp16_tolerance if precision == "fp16" else self.fp32_tolerance), self.min_agreement
