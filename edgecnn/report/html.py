"""report.html: one self-contained file (inline CSS, plots as base64 PNG data URIs, no script, no
external URL), readable offline and attachable to a CI run as is."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from edgecnn.report import plots
from edgecnn.report.markdown import DASH, fmt, kib, si
from edgecnn.report.rows import measurement_rows, runtime_label

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
.meta{color:#5a6270;font-size:13px} code{font:12px ui-monospace,Menlo,monospace;background:#eceff3;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;background:#fff;font-size:12.5px;margin:6px 0;box-shadow:0 0 0 1px #e1e4e8}
th,td{padding:4px 8px;border-bottom:1px solid #eceff3;text-align:right;white-space:nowrap}
th{background:#eef1f5;font-weight:600} td.l,th.l{text-align:left}
tr.front td{background:#fff8e1} .star{color:#c77d00;font-weight:700}
.bad{color:#b42318;font-weight:600} .ok{color:#067647}
.note{background:#fff4e5;border-left:4px solid #f79009;padding:6px 10px;margin:6px 0;font-size:13px}
.tw{overflow-x:auto;max-width:100%} img.w{max-width:760px}
.grid{display:flex;flex-wrap:wrap;gap:16px} .grid>div{flex:1 1 460px}
img{max-width:100%;background:#fff;box-shadow:0 0 0 1px #e1e4e8}
details{margin:4px 0} summary{cursor:pointer;color:#344054}
pre{background:#fff;padding:8px;overflow:auto;font-size:11.5px;box-shadow:0 0 0 1px #e1e4e8;max-height:360px}
"""


def e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _table(header: list[str], rows: list[list[Any]], left: int = 1, row_class: list[str] | None = None) -> str:
    """Cells are escaped unless wrapped in `Raw`; the first `left` columns align left."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{e(h)}</th>' for i, h in enumerate(header))
    body = []
    for k, r in enumerate(rows):
        cls = f' class="{row_class[k]}"' if row_class and row_class[k] else ""
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, Raw) else e(c)}</td>'
                      for i, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="tw"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class Raw(str):
    """Markup already escaped."""


def _img(uri: str | None, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img src="{uri}" alt="{e(alt)}"{c}>' if uri else ""


def _section_stages(report: dict[str, Any]) -> str:
    stages = report.get("stages") or []
    out = ["<h2>Stages</h2>", _table(
        ["stage", "kind", "top-1 %", "split", "top-5 %", "MACs", "params", "seconds"],
        [[s["name"], s.get("kind") or DASH, fmt((s.get("accuracy") or {}).get("top1")),
          (s.get("accuracy") or {}).get("split") or DASH, fmt((s.get("accuracy") or {}).get("top5")), si(s.get("macs")), si(s.get("params")),
          fmt(s.get("seconds"), 1)] for s in stages], left=2)]
    for s in stages:
        scalars = _flatten(s.get("metrics") or {})
        if scalars:
            out.append(f"<details><summary>{e(s['name'])}: {len(scalars)} metrics</summary>"
                       + _table(["metric", "value"], [[k, fmt(v, 4) if isinstance(v, float) else v]
                                                      for k, v in scalars.items()]) + "</details>")
    return "\n".join(out)


def _flatten(d: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 2:
            out.update(_flatten(v, key + ".", depth + 1))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
        elif isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float, str)) for x in v):
            out[key] = ", ".join(map(str, v))
    return out


def _section_artifacts(report: dict[str, Any]) -> str:
    arts = report.get("artifacts") or []
    if not arts:
        return ""
    rows = []
    for a in arts:
        v = a.get("verification") or {}
        passed = v.get("passed")
        rows.append([a["name"], a.get("format") or DASH, a.get("precision") or DASH, kib(a.get("size_bytes")),
                     fmt(v.get("top1_agreement")), fmt(v.get("max_abs_diff"), 5), fmt(v.get("n")),
                     Raw(f'<span class="{"ok" if passed else "bad"}">{"yes" if passed else "NO"}</span>')
                     if passed is not None else DASH,
                     Raw(f"<code>{e((a.get('sha256') or '')[:16])}</code>") if a.get("sha256") else DASH])
    return "<h2>Artifacts</h2>" + _table(
        ["artifact", "format", "precision", "size KiB", "verified agreement %", "max abs diff", "n", "verified",
         "sha256"], rows, left=3)


def _section_measurements(report: dict[str, Any]) -> str:
    rows = measurement_rows(report)
    refs = report.get("reference") or []
    if not rows and not refs:
        return ""
    all_rows = rows + refs
    cells, classes = [], []
    for r in all_rows:
        ok = r.get("status", "ok") == "ok"
        lat, acc = r["latency_ms"], r["accuracy"]
        cells.append([Raw('<span class="star">★</span>') if r.get("pareto") else "", r["artifact"], r["target"],
                      runtime_label(r) or DASH, r.get("precision") or DASH,
                      fmt(acc.get("top1")) if ok else Raw(f'<span class="bad">{e(r.get("status"))}</span>'),
                      fmt(acc.get("top5")), fmt(r["agreement"].get("top1_agreement")),
                      fmt(r["agreement"].get("max_abs_diff"), 4), fmt(lat.get("p50"), 3), fmt(lat.get("p90"), 3),
                      fmt(lat.get("p99"), 3), fmt(lat.get("std"), 3), fmt(r["throughput"].get("images_per_s"), 0),
                      fmt(r.get("load_seconds"), 3), fmt(r["memory"].get("peak_rss_mb"), 0), fmt(r.get("threads"))])
        classes.append("front" if r.get("pareto") else "")
    out = ["<h2>Measurements</h2>",
           '<p class="meta">Batch-1 latency in ms; agreement is with the PyTorch reference of the same precision; '
           '<span class="star">★</span> marks the accuracy/latency Pareto front of each target.</p>',
           _table(["", "artifact", "target", "runtime", "precision", "top-1 %", "top-5 %", "agree %", "max diff",
                   "p50", "p90", "p99", "std", "img/s", "load s", "RSS MiB", "threads"], cells, left=5,
                  row_class=classes)]
    for r in all_rows:
        if r.get("error"):
            out.append(f'<div class="note">{e(r["artifact"])} @ {e(r["target"])}: {e(r["error"])}</div>')
    pareto = plots.pareto_plot(rows)
    size = plots.size_plot(report.get("artifacts") or [])
    if pareto:
        out.append(f"<h3>Accuracy against latency</h3>{_img(pareto, 'accuracy against latency')}")
    if size:
        out.append(f"<h3>Size per artifact</h3>{_img(size, 'size per artifact', 'w')}")
    return "\n".join(out)


def _section_sensitivity(report: dict[str, Any], run_dir: Path | None) -> str:
    out = []
    for s in report.get("stages") or []:
        uri = plots.sensitivity_plot(s["sensitivity"]) if s.get("sensitivity") is not None else None
        if uri is None and run_dir is not None:   # the stage drew its own plot: embed that PNG
            for o in s.get("outputs") or []:
                p = Path(run_dir) / str(o.get("path", ""))
                if "sensitivity" in str(o.get("key", "")) + p.name and p.suffix == ".png" and p.is_file():
                    uri = plots.png_file_uri(p)
                    break
        if uri:
            out.append(f"<h3>{e(s['name'])}</h3>{_img(uri, s['name'] + ' sensitivity', 'w')}")
    return ("<h2>Pruning sensitivity</h2>" + "".join(out)) if out else ""


def _section_per_class(report: dict[str, Any]) -> str:
    pc = report.get("per_class") or {}
    arts = pc.get("artifacts") or {}
    if not arts:
        return ""
    out = ["<h2>Per-class precision and recall</h2>",
           f'<p class="meta">On the {e(next(iter(arts.values()))["n"])} test images the verify stage measured; '
           "each cell is precision % / recall % of the class.</p>"]
    names = list(arts)
    classes = [c["class"] for c in next(iter(arts.values()))["classes"]]
    header = ["class", "support"] + names
    rows = []
    for i, c in enumerate(classes):
        row = [c, next(iter(arts.values()))["classes"][i]["support"]]
        for n in names:
            cl = arts[n]["classes"][i] if i < len(arts[n]["classes"]) else {}
            row.append(f"{fmt(cl.get('precision'), 1)} / {fmt(cl.get('recall'), 1)}")
        rows.append(row)
    rows.append(["top-1 %", ""] + [fmt(arts[n]["top1"]) for n in names])
    out.append(_table(header, rows))
    # One confusion matrix per precision: the final artifacts of each kind (the first of each).
    shown, grid = set(), ['<div class="grid">']
    by_name = {a["name"]: a for a in report.get("artifacts") or []}
    for n in names:
        precision = (by_name.get(n) or {}).get("precision") or "reference"
        if precision in shown or precision == "reference":
            continue
        shown.add(precision)
        grid.append("<div>" + _img(plots.confusion_plot(arts[n]["confusion"], classes,
                                                        f"{n} ({precision}): confusion matrix"), f"{n} confusion") + "</div>")
    grid.append("</div>")
    return "\n".join(out + grid)


def _section_consistency(report: dict[str, Any]) -> str:
    cons = report.get("consistency") or {}
    if not cons.get("groups"):
        return ""
    out = ["<h2>Cross-runtime consistency</h2>",
           f'<p class="meta">Top-1 agreement between every pair of outputs of the same precision on the same test '
           f'images; pairs under {e(cons.get("threshold"))}% are listed with the images where they differ.</p>']
    for precision, m in cons["groups"].items():
        out.append(f"<h3>{e(precision)}: {len(m['names'])} outputs, {m['n']} images</h3>")
        out.append(_img(plots.agreement_heatmap(m, f"{precision}: top-1 agreement, %"), f"{precision} agreement"))
        names = m["names"]
        out.append("<details><summary>max |logit difference| matrix</summary>" + _table(
            ["", *names], [[a, *(fmt(v, 4) for v in m["max_abs_diff"][i])] for i, a in enumerate(names)]) + "</details>")
        if m["flagged"]:
            out.append(_table(["a", "b", "agreement %", "images differ", "max logit diff", "image indices"],
                              [[f["a"], f["b"], fmt(f["top1_agreement"]), f["n_differ"], fmt(f["max_abs_diff"], 4),
                                Raw('<span style="white-space:normal;display:inline-block;min-width:340px">'
                                    + e(", ".join(map(str, f["indices"])) + (" ..." if f["truncated"] else ""))
                                    + "</span>")]
                               for f in m["flagged"]], left=2))
        else:
            out.append(f'<p class="ok">every pair agrees on at least {e(m["threshold"])}% of images</p>')
    return "\n".join(out)


def _section_env(report: dict[str, Any]) -> str:
    envs = {"report built on": report.get("environment") or {}}
    for r in measurement_rows(report) + (report.get("reference") or []):
        envs.setdefault(f"target {r['target']}", r.get("env") or {})
    targets = report.get("targets") or {}
    budget_rows = [[t, *(fmt((v.get("budgets") or {}).get(k)) for k in ("latency_ms", "size_mb", "memory_mb"))]
                   for t, v in targets.items()]
    out = ["<h2>Environment and recipe</h2>"]
    if any(any(c != DASH for c in r[1:]) for r in budget_rows):
        out.append("<h3>Target budgets</h3>" + _table(["target", "latency p50 ms", "size MB", "memory MiB"], budget_rows))
    for k, v in envs.items():
        out.append(f"<details><summary>{e(k)}</summary><pre>{e(json.dumps(v, indent=2, default=str))}</pre></details>")
    out.append(f"<details><summary>recipe <code>{e(report.get('recipe_hash') or '')}</code></summary>"
               f"<pre>{e(json.dumps(report.get('recipe'), indent=2, default=str))}</pre></details>")
    return "\n".join(out)


def render_html(report: dict[str, Any], run_dir: Path | None = None,
                gates: list[dict[str, Any]] | None = None) -> str:
    recipe = report.get("recipe") or {}
    data = report.get("data") or {}
    run = report.get("run") or {}
    title = f"edgecnn report: {recipe.get('name', '?')}"
    parts = [f"<h1>{e(title)}</h1>",
             f'<div class="meta">recipe <code>{e((report.get("recipe_hash") or "")[:12])}</code> · data '
             f'<code>{e(data.get("source", DASH))}</code> · model <code>{e((recipe.get("model") or {}).get("source", DASH))}</code>'
             f' · finished {e(run.get("finished") or DASH)} · edgecnn {e(run.get("edgecnn_version") or DASH)}'
             f' · <code>{e(report.get("schema"))}</code></div>']
    parts += [f'<div class="note">{e(n)}</div>' for n in report.get("notes") or []]
    if gates:
        failed = [g for g in gates if g["status"] == "failed"]
        parts.append("<h2>Gates</h2>" + (f'<p class="bad">{len(failed)} of {len(gates)} failed</p>' if failed
                                          else f'<p class="ok">all {len(gates)} passed</p>'))
        parts.append(_table(["status", "artifact", "target", "bound", "value", "limit", "detail"],
                            [[g["status"], g["artifact"], g.get("target") or DASH, g["bound"], fmt(g.get("value"), 3),
                              fmt(g.get("limit"), 3), g.get("message", "")] for g in failed or gates], left=4))
    parts += [_section_stages(report), _section_artifacts(report), _section_measurements(report),
              _section_sensitivity(report, run_dir), _section_per_class(report), _section_consistency(report),
              _section_env(report)]
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body><main>\n{body}\n</main></body></html>\n")
