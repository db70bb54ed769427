"""`edgecnn export`, `edgecnn inspect` and `edgecnn check`: thin layers over edgecnn.export."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgecnn.errors import EdgecnnError


def _out():
    from rich.console import Console
    return Console(highlight=False)


def _split(values: list[str]) -> list[str]:
    """--format onnx,tflite and --format onnx --format tflite both work."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def export(checkpoint: Path = typer.Argument(..., help="Float checkpoint (.pt, a state_dict) or a quantized "
                                              "program (.pt2 from a quantize stage)."),
           format: list[str] = typer.Option(["onnx", "openvino", "tflite"], "--format", "-f",
                                            help="onnx | openvino | tflite; repeat or comma-separate."),
           precision: list[str] = typer.Option(["fp32"], "--precision", "-p",
                                               help="fp32 | fp16 | int8; repeat or comma-separate."),
           recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe for the data and model "
                                                 "source (default: the built-in recipe)."),
           out: Path = typer.Option(Path("exported"), "--out", "-o", help="Folder for the artifacts."),
           quantized: Optional[Path] = typer.Option(None, "--quantized", help="Quantized program (.pt2) for int8 "
                                                    "when CHECKPOINT is the float model."),
           tflite_io: str = typer.Option("float", "--tflite-io", help="int8 TFLite input/output: float | int8."),
           verify_samples: int = typer.Option(500, "--verify-samples", help="Test images compared after export."),
           allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                             help="Allow a checkpoint holding pickled objects (trusted files only).")):
    """Export a checkpoint to ONNX / OpenVINO IR / TFLite; every artifact is verified against PyTorch."""
    import dataclasses

    from edgecnn import progress
    from edgecnn.config import from_dict
    from edgecnn.data import load_data
    from edgecnn.export import ExportConfig, export_all
    from edgecnn.models import build_model
    from edgecnn.recipe import load_recipe

    cfg = from_dict(ExportConfig, {"formats": _split(format), "precisions": _split(precision),
                                   "tflite_io": tflite_io, "verify_samples": verify_samples}, key="export")
    r = load_recipe(recipe)
    data = load_data(r.data, r.seed)
    qmodel = None
    float_model = None
    if checkpoint.suffix == ".pt2":
        quantized, checkpoint = checkpoint, None
        if any(p != "int8" for p in cfg.precisions):
            raise EdgecnnError(f"{quantized} is a quantized program: it gives int8 artifacts only. Pass the "
                               "float checkpoint (.pt) for fp32/fp16, or --precision int8.")
    if checkpoint is not None:
        mcfg = dataclasses.replace(r.model, checkpoint=str(checkpoint), allow_pickle=allow_pickle)
        float_model = build_model(mcfg, data.num_classes, data.input_shape[0]).eval()
    if "int8" in cfg.precisions:
        import importlib

        q = importlib.import_module("edgecnn.compress.quantize")   # edgecnn.compress.quantize is also a function

        if quantized is not None:
            qmodel = q.load_quantized(quantized)
        else:
            qcfg = next((c for _, kind, c in r.stage_list() if kind == "quantize"), None) or q.QuantizeConfig()
            progress.log(f"int8: no --quantized program given, so {checkpoint} is quantized now "
                         f"({qcfg.mode}, {qcfg.calibration_samples} calibration images; the recipe's quantize "
                         "stage settings when it has one)")
            qmodel = q.quantize(float_model, qcfg, data, seed=r.seed).model
    if float_model is None:
        float_model = qmodel
    artifacts = export_all(float_model, qmodel, data, out, cfg, recipe_hash=r.hash())
    console = _out()
    for a in artifacts:
        v = a.verification
        console.print(f"{a.path}  {a.size_bytes / 1e6:.2f} MB  top-1 agreement {v['top1_agreement']:.2%}  "
                      f"max |diff| {v['max_abs_diff']:.3g}  ({v['samples']} images, {v['runtime']['runtime']})")
    if artifacts:
        console.print(f"next: edgecnn inspect {artifacts[0].path}   |   edgecnn bench {artifacts[0].path}")


def inspect(artifact: Path = typer.Argument(..., help="Artifact file (.onnx, .xml, .tflite) or its .json sidecar."),
            as_json: bool = typer.Option(False, "--json", help="Print the whole sidecar as JSON."),
            check: bool = typer.Option(True, "--check/--no-check", help="Check the files' sha256.")):
    """Print an artifact's contract: input, output, quantization, preprocessing, labels, verification."""
    from edgecnn.export import Artifact

    art = Artifact.load(artifact)
    if check:
        art.check_files()
    if as_json:
        typer.echo(json.dumps(art.sidecar_data(), indent=2))
        return
    c, v = art.contract, art.verification
    console = _out()
    console.print(f"[bold]{art.path}[/]  {art.format} {art.precision}  {art.size_bytes / 1e6:.2f} MB  "
                  f"sha256 {c['sha256'][:16]}…")
    for side in ("input", "output"):
        t = c[side]
        q = t.get("quantization")
        qs = f"  int8 scale {q['scale']:.6g} zero point {q['zero_point']}" if q else ""
        console.print(f"  {side:6s} {t['name']} {t['shape']} {t['dtype']} {t.get('layout', '')}{qs}")
    pre = c.get("preprocess") or {}
    if pre:
        console.print(f"  preprocess: {pre.get('channels')} ch {pre.get('size')} {pre.get('resize')}, "
                      f"x/255, mean {pre.get('mean')}, std {pre.get('std')}")
    names = c.get("class_names") or []
    console.print(f"  classes ({len(names)}): {', '.join(names[:10])}{' …' if len(names) > 10 else ''}")
    console.print(f"  exporter: {', '.join(f'{k} {v}' for k, v in c.get('exporter', {}).items())}")
    if v:
        console.print(f"  verified in {v['runtime']['runtime']} {v['runtime'].get('version')}: top-1 agreement "
                      f"{v['top1_agreement']:.2%}, max |diff| {v['max_abs_diff']:.3g} vs the {v['reference']} "
                      f"on {v['samples']} images")
    console.print(f"next: edgecnn bench {artifact}")


def check(model: str = typer.Argument(..., help="Model source (bn_cnn, torchvision:resnet18, pkg.mod:factory) "
                                      "or a checkpoint (.pt) of the recipe's model."),
          formats: list[str] = typer.Option(["onnx", "openvino", "tflite"], "--formats", "-f",
                                            help="Formats to try; repeat or comma-separate."),
          input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W (default: the recipe "
                                                    "data's)."),
          num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier outputs (default 10; which operators convert does not depend on it, but a "
                                                "checkpoint's classifier must match)."),
          recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Recipe (default: built-in)."),
          as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """Pre-flight: convert a batch-1 copy of the model to each format and load it in its runtime."""
    import dataclasses

    from edgecnn.export import check_model
    from edgecnn.models import ModelConfig, build_model
    from edgecnn.recipe import load_recipe

    r = load_recipe(recipe)
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            raise EdgecnnError(f"--input-shape: '{input_shape}' is not C,H,W (e.g. 3,224,224).")
    else:
        from edgecnn.data import input_shape_of
        shape = input_shape_of(r.data, r.seed)
    classes = num_classes or 10
    if Path(model).suffix in (".pt", ".pth") and Path(model).exists():
        mcfg = dataclasses.replace(r.model, checkpoint=model)
    else:
        mcfg = ModelConfig(source=model)
    m = build_model(mcfg, classes, shape[0]).eval()
    report = check_model(m, shape, _split(formats))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _out().print(report.summary())
    if not report.ok:
        raise SystemExit(1)   # not typer.Exit: cli.main runs click with standalone_mode=False


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("inspect")(inspect)
    app.command("check")(check)
