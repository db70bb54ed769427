"""The `edgecnn` command: a thin layer over the Python API.

Errors the user can fix (EdgecnnError) print as one paragraph with no traceback and exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgecnn import progress
from edgecnn.errors import EdgecnnError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Take a PyTorch CNN to verified, compressed edge artifacts (ONNX, OpenVINO IR, TFLite).")

RecipeArg = typer.Argument(None, help="Recipe YAML file. Omitted: the built-in default recipe "
                                      "(bn_cnn on mnist5k; see 'edgecnn init').")
NameOpt = typer.Option(None, "--name", help="Run directory name under --runs (default: the recipe's 'name').")
RunsOpt = typer.Option(Path("runs"), "--runs", help="Folder that holds run directories.")
ForceOpt = typer.Option(False, "--force", help="Re-run every stage even if its inputs are unchanged.")


def _pipeline(recipe: Optional[Path], name: Optional[str], runs: Path, force: bool):
    from edgecnn.pipeline import Pipeline
    from edgecnn.recipe import load_recipe

    r = load_recipe(recipe)
    return Pipeline(r, runs / (name or r.name), force=force)


def _run(recipe, name, runs, force, until=None):
    from edgecnn.report import write_reports

    pipe = _pipeline(recipe, name, runs, force)
    result = pipe.run(until=until)
    paths = write_reports(result.run_dir, result.manifest, pipe.recipe.report)
    from edgecnn.report.terminal import print_summary
    print_summary(result, paths)
    return result


@app.command()
def run(recipe: Optional[Path] = RecipeArg, name: Optional[str] = NameOpt, runs: Path = RunsOpt,
        force: bool = ForceOpt):
    """Run the whole pipeline: train, compress, export, verify on targets, report.

    Stages whose inputs did not change since the last run are skipped; an interrupted run
    resumes at the stage it was in.
    """
    _run(recipe, name, runs, force)


@app.command()
def init(path: Path = typer.Argument(Path("recipe.yaml"), help="Where to write the recipe."),
         overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file.")):
    """Write the built-in default recipe to a file to edit."""
    from edgecnn.io import write_text
    from edgecnn.recipe import default_recipe_text

    if path.exists() and not overwrite:
        raise EdgecnnError(f"'{path}' exists. Pass --overwrite to replace it, or give another path.")
    write_text(path, default_recipe_text())
    typer.echo(f"wrote {path}\nnext: edgecnn run {path}")


def _stage_command(stage_name: str, doc: str):
    def command(recipe: Optional[Path] = RecipeArg, name: Optional[str] = NameOpt, runs: Path = RunsOpt,
                force: bool = ForceOpt):
        _run(recipe, name, runs, force, until=stage_name)
    command.__doc__ = doc
    command.__name__ = stage_name
    return command


for _name, _doc in [
    ("train", "Run the recipe up to and including its train stage (fit, evaluate on the test split)."),
    ("prune", "Run the recipe up to and including its prune stage (structured pruning + distillation)."),
    ("distill", "Run the recipe up to and including its distill stage (knowledge distillation)."),
    ("quantize", "Run the recipe up to and including its quantize stage (int8 PTQ or QAT)."),
]:
    app.command(name=_name)(_stage_command(_name, _doc))


@app.command("eval")
def eval_(checkpoint: Path = typer.Argument(..., help="A checkpoint (.pt) written by a stage, or a state_dict."),
          recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe for the data and model source "
                                                "(default: the built-in recipe)."),
          split: str = typer.Option("test", "--split", help="train | val | test | calibration"),
          allow_pickle: bool = typer.Option(False, "--allow-pickle",
                                            help="Allow a checkpoint that holds pickled objects (trusted files only).")):
    """Evaluate a checkpoint: top-1 / top-5 on a split of the recipe's data."""
    import dataclasses

    from edgecnn.data import load_data
    from edgecnn.models import build_model
    from edgecnn.recipe import load_recipe
    from edgecnn.train import evaluate

    r = load_recipe(recipe)
    if split not in ("train", "val", "test", "calibration"):
        raise EdgecnnError(f"--split: '{split}' is not a split. Use train, val, test or calibration.")
    data = load_data(r.data, r.seed)
    cfg = dataclasses.replace(r.model, checkpoint=str(checkpoint), allow_pickle=allow_pickle)
    model = build_model(cfg, data.num_classes, data.input_shape[0]).eval()
    res = evaluate(model, data, split)
    typer.echo(f"{checkpoint}: {split} top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
               f"loss {res['loss']:.4f}  ({res['n']} images)")


def _register_commands() -> None:
    import importlib
    import pkgutil

    import edgecnn.commands as commands

    for info in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"edgecnn.commands.{info.name}").register(app)


def _quiet_backends() -> None:
    """Keep TensorFlow/absl and torch's deprecation chatter out of the user's terminal."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    _quiet_backends()
    progress.enable(True)
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except EdgecnnError as e:
        progress.console().print(f"[bold red]error:[/] {e}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        progress.console().print("interrupted: finished stages are kept; run the same command again to resume.")
        return 130
    except SystemExit as e:  # click's own exits (--help, usage errors)
        return int(e.code or 0)
    except Exception as e:
        import click
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
