"""What every exporter shares: the format table, staging + verification + sidecar, operator errors.

A format module registers a `FormatSpec` whose `write(job) -> Written` puts the format's files in
`job.staging` (a private folder beside the destination) with the contract embedded where it can.
`export_artifact` then verifies them in the format's runtime and only then moves them to their
final names and writes the sidecar, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.errors import ExportError
from edgecnn.registry import Registry

if TYPE_CHECKING:
    from edgecnn.export.artifact import Artifact


@dataclass(frozen=True)
class FormatSpec:
    """A format described as data (the ultralytics table), plus its writer."""
    name: str
    suffix: str                                # main file suffix
    precisions: tuple[str, ...]                # what it can write
    dynamic_batch: bool                        # batch axis can be left free
    io_dtypes: dict[str, tuple[str, ...]]      # precision -> input/output dtypes it can give
    runtime: str                               # the runtime that verifies it
    backend: str                               # python module doing the conversion (for `available`)
    write: Callable[["Job"], "Written"]
    notes: str = ""


EXPORTERS: Registry[FormatSpec] = Registry("export format")


@dataclass
class Job:
    """One format x precision export, handed to a FormatSpec.write."""
    model: Any                     # float nn.Module, or the PT2E-converted GraphModule for int8
    example_input: Any             # torch.Tensor (N, C, H, W)
    precision: str
    config: Any                    # ExportConfig
    staging: Path                  # write files here, with their final names
    stem: str                      # file stem, e.g. 'model_int8'
    contract: dict[str, Any]       # partial contract to embed (no sha256 yet)
    cache: dict[Any, Any] | None = None   # shared by the jobs of one export_all / check_model: formats
    #   written through the same intermediate (ONNX for ONNX and OpenVINO) convert the model once


@dataclass
class Written:
    main: Path
    files: list[Path]                        # main first
    contract: dict[str, Any] = field(default_factory=dict)   # format's additions: input/output, exporter


# --------------------------------------------------------------------------- helpers

def is_quantized(model: Any) -> bool:
    """Whether `model` is a PT2E-converted graph (has quantize/dequantize ops)."""
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(n.op == "call_function" and ("quantize_per" in str(n.target) or "dequantize" in str(n.target))
               for n in model.graph.nodes)


def example_batch(model: Any) -> int | None:
    """A GraphModule from torch.export keeps shape guards: its fixed batch, when it has one."""
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return None
    for n in model.graph.nodes:
        if n.op == "placeholder":
            v = n.meta.get("val")
            if v is not None and hasattr(v, "shape") and len(v.shape) == 4:
                b = v.shape[0]
                return int(b) if isinstance(b, int) else None
    return None


def run_torch(model: Any, x: np.ndarray, batch: int | None = None, chunk: int = 256) -> np.ndarray:
    """Reference logits from PyTorch, in chunks (a graph with a fixed batch gets chunks of that size)."""
    import torch

    fixed = example_batch(model)
    b = fixed or batch or chunk
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), b):
            part = torch.from_numpy(np.ascontiguousarray(x[i:i + b], np.float32))
            k = len(part)
            if fixed and k < fixed:
                part = torch.cat([part, part.new_zeros(fixed - k, *part.shape[1:])])
            y = model(part)
            if isinstance(y, (tuple, list)):
                y = y[0]
            outs.append(y.float().numpy()[:k])
    return np.concatenate(outs)


def versions(*modules: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import edgecnn

    import torch

    out = {"edgecnn": getattr(edgecnn, "__version__", "unknown"), "torch": torch.__version__}
    for m in modules:
        try:
            out[m] = version(m)
        except PackageNotFoundError:
            out[m] = "unknown"
    return out


def contract_json(contract: dict[str, Any]) -> str:
    """The contract as embedded in a file: JSON without optional spaces, keys sorted (equal contracts give
    equal bytes). Any JSON reader takes it; the sidecar stays indented for people."""
    import json

    return json.dumps(contract, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- operator errors

_OP_PATTERNS = [
    r"OpOverload\(op='(\w+)\.(\w+)'",              # torch.onnx: No ONNX function found for <OpOverload(op='prims.erf_inv'
    r"(aten|prims)::(\w+)",                           # OpenVINO: No conversion rule found for aten::foo
    r"torch\.ops\.(aten|prims)\.(\w+)",
    r"\b(aten|prims)\.(\w+)\.\w+",                   # litert-torch: Lowering not found: aten.erfinv.default
]


def operator_in(message: str) -> str | None:
    """The operator a converter complained about, as 'aten.erfinv' / 'prims.erf_inv'."""
    for pat in _OP_PATTERNS:
        m = re.search(pat, message)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _base(op: str) -> str:
    """'aten.erfinv' / 'prims.erf_inv' / 'aten.relu_' -> 'erfinv' (decompositions rename ops slightly)."""
    return op.split(".")[-1].replace("_", "")


def module_of_op(model: Any, example_input: Any, op: str) -> list[str]:
    """'path (Class)' of each module in the model that calls `op` (from torch.export's nn_module_stack)."""
    import torch

    try:
        gm = model if isinstance(model, torch.fx.GraphModule) else \
            torch.export.export(model.eval(), (example_input,)).run_decompositions({}).graph_module
    except Exception:   # noqa: BLE001  (best effort: the error is still raised without the location)
        return []
    want = _base(op)
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        parts = str(node.target).split(".")
        name = parts[1] if len(parts) > 2 else parts[0]
        if name.replace("_", "") != want:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            where = f"{path or '<top>'} ({cls_name.rsplit('.', 1)[-1]})"
        else:
            where = "<top-level forward>"
        if where not in found:
            found.append(where)
    return found


def operator_error(fmt: str, precision: str, model: Any, example_input: Any, err: BaseException,
                   other_formats: Callable[[], list[str]] | None = None) -> ExportError:
    """An ExportError that names the operator, where it is in the model, and which formats take it."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(err).__name__}: {err}")   # converters colour their text
    cause = err.__cause__
    if cause is not None:
        msg += "\n" + re.sub(r"\x1b\[[0-9;]*m", "", f"{type(cause).__name__}: {cause}")
    op = operator_in(msg)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    hit = [ln for ln in lines if op and op in ln]
    first = (hit or lines or [type(err).__name__])[0][:400]
    if op is None:
        return ExportError(f"export {fmt} {precision}: the converter failed: {first}")
    where = module_of_op(model, example_input, op)
    ok = other_formats() if other_formats else []
    loc = f" in {', '.join(where)}" if where else ""
    alt = (f" Formats that accept this model: {', '.join(ok)}." if ok else
           " No other format accepted it either.") if other_formats else ""
    return ExportError(f"export {fmt} {precision}: {fmt} cannot express operator {op}{loc}.{alt} "
                       f"Replace that layer with supported operations, or drop '{fmt}' from export.formats. "
                       f"(converter said: {first})")


# --------------------------------------------------------------------------- the shared flow

def export_artifact(fmt: str, model: Any, example_input: Any, path: str | Path, config: Any, *,
                    precision: str | None = None, meta: dict[str, Any] | None = None,
                    verify_inputs: np.ndarray | None = None, reference: Any = None,
                    cache: dict[Any, Any] | None = None) -> Artifact:
    """Write `model` as `fmt` to `path`, verify it in its runtime, write the sidecar; return the Artifact.

    precision: fp32 | fp16 | int8; None: int8 for a PT2E-converted graph, else fp32.
    meta: preprocess (dict), class_names, recipe_hash, embedded in the contract.
    verify_inputs: float32 NCHW images to compare on (default: example_input and 15 random images).
    reference: the PyTorch module the artifact must match (default: `model`).
    cache: a dict shared by the calls that export the same model (see Job.cache).
    """
    import torch

    from edgecnn.export.artifact import SCHEMA, Artifact
    from edgecnn.export.config import ExportConfig
    from edgecnn.io import sha256_file, write_json

    spec = EXPORTERS.get(fmt, key="export.formats")
    config = config or ExportConfig()
    precision = precision or ("int8" if is_quantized(model) else "fp32")
    if precision not in spec.precisions:
        raise ExportError(f"export {fmt}: precision '{precision}' is not available for {fmt} "
                          f"(it writes {', '.join(spec.precisions)}). Drop it from export.precisions "
                          f"or choose a format that has it.")
    if precision == "int8" and not is_quantized(model):
        raise ExportError(f"export {fmt} int8: the model is not quantized. int8 artifacts are written from the "
                          "PT2E-converted graph of a 'quantize' stage; add one before 'export' or drop int8.")
    if precision != "int8" and is_quantized(model):
        raise ExportError(f"export {fmt} {precision}: got a quantized graph; {precision} artifacts are written "
                          "from the float model.")
    meta = dict(meta or {})
    path = Path(path)
    if path.suffix != spec.suffix:
        path = path.with_name(path.name + spec.suffix) if not path.suffix else path.with_suffix(spec.suffix)
    if isinstance(example_input, np.ndarray):
        example_input = torch.from_numpy(example_input)
    if not isinstance(model, torch.fx.GraphModule):
        model = model.eval()

    contract: dict[str, Any] = {
        "schema": SCHEMA, "format": fmt, "precision": precision, "file": path.name,
        "input": {"name": "input", "shape": list(example_input.shape), "layout": "NCHW", "dtype": "float32",
                  "quantization": None},
        "output": {"name": "logits", "shape": None, "dtype": "float32", "quantization": None},
        "preprocess": meta.get("preprocess"), "class_names": meta.get("class_names"),
        "recipe_hash": meta.get("recipe_hash", ""), "data_source": meta.get("data_source"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        job = Job(model, example_input, precision, config, staging, path.stem, contract, cache)
        try:
            written = spec.write(job)
        except ExportError:
            raise
        except Exception as e:   # noqa: BLE001  (every converter raises its own types)
            raise operator_error(fmt, precision, model, example_input, e,
                                 lambda: accepting_formats(model, example_input, precision, exclude=fmt)) from e
        contract.update(written.contract)
        contract["files"] = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in written.files}
        contract["sha256"] = contract["files"][written.main.name]["sha256"]

        from edgecnn.export.verify import verify
        x = verify_inputs if verify_inputs is not None else _default_inputs(example_input)
        ref = reference if reference is not None else model
        verification = verify(written.main, contract, ref, x, precision, config)

        final = [path.parent / p.name for p in written.files]
        for src, dst in zip(written.files, final):
            src.replace(dst)
        sidecar = path.with_name(path.name + ".json")
        art = Artifact(fmt, precision, final[0], final, sidecar, contract, verification)
        try:
            write_json(sidecar, art.sidecar_data())
        except BaseException:
            for p in final:
                p.unlink(missing_ok=True)
            raise
        return art
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _default_inputs(example_input: Any) -> np.ndarray:
    ex = example_input.detach().cpu().numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    return np.concatenate([ex, rng.standard_normal((15, *ex.shape[1:])).astype(np.float32)])


def accepting_formats(model: Any, example_input: Any, precision: str, exclude: str) -> list[str]:
    """Formats whose converter takes `model` (written to a scratch folder, not verified)."""
    ok = []
    for name in EXPORTERS.names():
        spec = EXPORTERS.get(name)
        if name == exclude or precision not in spec.precisions:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                spec.write(Job(model, example_input, precision, _scratch_config(), Path(tmp), "probe", {}))
                ok.append(name)
            except Exception:   # noqa: BLE001
                pass
    return ok


def _scratch_config():
    from edgecnn.export.config import ExportConfig
    return ExportConfig()
