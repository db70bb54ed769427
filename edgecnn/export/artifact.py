"""Artifact: an exported, verified file and the contract that tells any app how to feed it.

The contract is stored twice: in a JSON sidecar beside the main file (`model_int8.onnx.json`) and,
inside the file (ONNX metadata_props / OpenVINO rt_info / TFLite model metadata, key
`edgecnn_contract`, as compact JSON). Sidecar keys (schema edgecnn.artifact/1):

    format, precision, file, files {name: {sha256, bytes}}, sha256 (of `file`),
    input  {name, shape (null = any size), layout, dtype, quantization {scale, zero_point, dtype} | null
            (set only when the tensor itself is int8/uint8: then q = round(x / scale) + zero_point),
            internal_quantization (int8 ONNX: the scale the model quantizes its float input with)},
    output {name, shape, dtype, quantization | null},
    preprocess (edgecnn.data.Preprocess.to_dict()), class_names, recipe_hash,
    exporter {edgecnn, torch, <backend>: version, opset, ...}, verification {...}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgecnnError

SCHEMA = "edgecnn.artifact/1"


@dataclass
class Artifact:
    format: str                     # onnx | openvino | tflite
    precision: str                  # fp32 | fp16 | int8
    path: Path                      # the main file (.onnx, .xml, .tflite)
    files: list[Path]               # every file of the artifact (.xml and .bin), main first
    sidecar: Path                   # <main file>.json
    contract: dict[str, Any]        # what the sidecar holds, less `verification`
    verification: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "precision": self.precision, "path": str(self.path),
                "files": [str(p) for p in self.files], "sidecar": str(self.sidecar),
                "size_bytes": self.size_bytes, "contract": self.contract, "verification": self.verification}

    def sidecar_data(self) -> dict[str, Any]:
        return {**self.contract, "verification": self.verification}

    @classmethod
    def load(cls, path: str | Path) -> "Artifact":
        """From the sidecar (`x.onnx.json`) or the main file beside it (`x.onnx`)."""
        path = Path(path)
        sidecar = path if path.suffix == ".json" else path.with_name(path.name + ".json")
        if not sidecar.exists():
            raise EdgecnnError(f"{path}: no sidecar '{sidecar.name}' beside it, so the artifact's contract "
                               "is unknown. Re-export it with `edgecnn export`, or open the file directly "
                               "with edgecnn.runtimes.open_session.")
        try:
            data = json.loads(sidecar.read_text())
        except json.JSONDecodeError as e:
            raise EdgecnnError(f"{sidecar}: not valid JSON ({e}).") from None
        if data.get("schema") != SCHEMA:
            raise EdgecnnError(f"{sidecar}: schema {data.get('schema')!r} is not {SCHEMA!r}.")
        base = sidecar.parent
        main = base / data["file"]
        files = [base / name for name in data["files"]]
        verification = data.pop("verification", {})
        return cls(data["format"], data["precision"], main, files, sidecar, data, verification)

    def check_files(self) -> None:
        """Raise if a file is missing or its sha256 differs from the contract."""
        from edgecnn.io import sha256_file

        for p in self.files:
            want = self.contract["files"][p.name]["sha256"]
            if not p.exists():
                raise EdgecnnError(f"{p}: missing (artifact {self.sidecar.name} lists it).")
            if sha256_file(p) != want:
                raise EdgecnnError(f"{p}: sha256 differs from the one in {self.sidecar.name}; the file was "
                                   "changed after export. Re-export it.")
