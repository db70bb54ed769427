"""Markdown for benchmarks/run.py's JSON: one table per model and size, comparisons, goals, environment."""
from __future__ import annotations

from typing import Any


def _f(v: Any, nd: int = 2, suffix: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}{suffix}"
    return f"{v}{suffix}"


def _size(b: int | None) -> str:
    return "" if not b else f"{b / 1e6:.2f}"


def _spread(row: dict[str, Any], tag: str) -> str:
    s = (row.get("spread") or {}).get(tag)
    if not s or s.get("p10") is None:
        return ""
    return f"{s['p10']:.3f}-{s['p90']:.3f}"


def phases(r: dict[str, Any]) -> list[str]:
    """Where this model's seconds went."""
    parts = dict(r.get("phases") or {})
    steps = r.get("steps") or {}
    groups = {"exports (ONNX, IR, TFLite)": ("export", "-> OpenVINO IR", " IR", "lower"),
              "edgecnn PTQ": ("PTQ",), "ORT quantize_static": ("ORT quantize_static",), "NNCF": ("NNCF",)}
    for label, keys in groups.items():
        v = sum(t for k, t in steps.items() if any(x in k for x in keys)
                and not (label.startswith("exports") and ("PTQ" in k or "NNCF" in k or "ORT" in k)))
        if v:
            parts[label] = round(v, 1)
    parts["runtime kernel inspection"] = r.get("kernels_seconds")
    for k, v in (r.get("measure_seconds") or {}).items():
        parts[k.replace("_", " ")] = v
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        return []
    return ["Seconds: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, (int, float)) else f"{k} {v}"
                                    for k, v in parts.items()) + f"; total {r.get('seconds', 0):.0f}. Load average after: {r.get('loadavg_after')}.", ""]


def table(r: dict[str, Any]) -> list[str]:
    lines = ["| method | runtime | prec | top-1 % | agree % | p50 1T ms | p10-p90 1T | p50 all ms | speedup 1T "
             "| speedup all | size MB | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        c = row.get("config") or {}
        notes = []
        if row["status"] == "screened":
            notes.append(f"screened out: {row['error']}")
        elif row["status"] != "ok":
            notes.append(f"**{row['status']}**: {row['error']}")
        elif row.get("screen"):
            sc = row["screen"]
            notes.append(f"screen: {sc.get('top1')}% on {sc.get('images')} images, {sc.get('p50_1t')} ms")
        if "macs_ratio" in c:
            notes.append(f"MACs /{c['macs_ratio']}")
        if c.get("best"):
            notes.append("**best of its side**")
        k = c.get("kernels")
        if k and "delegated_ops" in k:
            notes.append(f"XNNPACK: {sum(k['delegated_ops'].values())} ops delegated, outside: {k['outside_delegate'] or 'none'}")
        elif k:
            notes.append("runs: " + ", ".join(f"{n} {v}" for n, v in k.items()))
        stored, asked = c.get("weights_stored"), {"u8": "uint8", "s8": "int8"}.get(c.get("weights"))
        if stored and asked and set(stored) != {asked}:
            notes.append(f"**weights asked {c['weights']}, stored " + ", ".join(f"{t} {n}" for t, n in stored.items()) + "**")
        if "changes" in c:
            notes.append("lowering " + ", ".join(f"{k} {v}" for k, v in c["changes"].items())
                         + ("" if c.get("exact") else " (inexact passes)"))
        lines.append(f"| {row['method']} | {row['runtime']} | {row['precision']} | {_f(row['top1'])} | "
                     f"{_f(row['agreement'])} | {_f(row['p50_1t'], 3)} | {_spread(row, '1t')} | "
                     f"{_f(row['p50_all'], 3)} | "
                     f"{_f(c.get('speedup_vs_eager_1t'), 1, 'x')} | {_f(c.get('speedup_vs_eager_all'), 1, 'x')} | "
                     f"{_size(row['size_bytes'])} | {'; '.join(notes)} |")
    return lines


def comparisons(r: dict[str, Any]) -> list[str]:
    rows = {row["key"]: row for row in r["rows"]}
    out = ["", "| comparison | edgecnn | peer | peer ms / edgecnn ms (1T) | (all threads) | top-1 edgecnn - peer "
           "| verdict |", "|---|---|---|---|---|---|---|"]
    for c in r.get("comparisons", []):
        e, p = rows[c["edgecnn"]], rows[c["peer"]]
        lat, acc = c["peer_over_edgecnn_latency_1t"], c["edgecnn_minus_peer_top1_pp"]
        verdict = []
        if lat is not None:
            verdict.append("edgecnn faster" if lat > 1.0 else "**peer faster**" if lat < 1.0 else "equal speed")
        if acc is not None:
            verdict.append("edgecnn more accurate" if acc > 0 else "**peer more accurate**" if acc < 0 else "equal accuracy")
        pa = c.get("accuracy_paired")
        if pa and acc:
            verdict[-1] += f" (p {pa['p_value']})"
        out.append(f"| {c['group']} | {e['method']} | {p['method']} | {_f(lat, 3)} | "
                   f"{_f(c['peer_over_edgecnn_latency_all'], 3)} | {_f(acc, 2)} pp | {', '.join(verdict)} |")
    if r.get("pruning_speedup"):
        out += ["", "| pruned | unpruned | MACs ratio | speedup 1T | speedup all | speedup / MACs ratio |",
                "|---|---|---|---|---|---|"]
        for p in r["pruning_speedup"]:
            out.append(f"| {rows[p['pruned']]['method']} | {rows[p['unpruned']]['method']} | {_f(p['macs_ratio'])} | "
                       f"{_f(p['speedup_1t'])} | {_f(p['speedup_all'])} | {_f(p['speedup_over_macs_ratio'])} |")
    return out


def observer_sentence(q: dict, pruned: dict | None) -> str:
    """Which activation observer PTQ used ('auto': chosen on val images, with each candidate's val
    agreement with the float model); empty for results written before the suite recorded it."""
    def one(rec: dict) -> str:
        s = rec.get("observer_search")
        if not s:
            return f"observer {rec['observer']}"
        def name(c: dict) -> str:
            bc = c.get("bias_correction")
            return c["observer"] + ("" if bc is None else f" bc {'on' if bc else 'off'}")
        bc = s.get("bias_correction")
        kept = "" if bc is None else f", bias correction {'on' if bc else 'off'}"
        return (f"observer {s['chosen']}{kept} (auto; val agreement with float on {s['val_images']} images: "
                + ", ".join(f"{name(c)} {c['val_agreement']}%" for c in s["candidates"]) + ")")
    if "observer" not in q:
        return ""
    return " PTQ " + one(q) + ("; pruned model's PTQ " + one(pruned) if pruned and "observer" in pruned else "") + "."


def markdown(res: dict[str, Any]) -> str:
    c = res.get("cpu", {})
    la0, la1 = res.get("loadavg_start"), res.get("loadavg_end")
    loaded = any(v and v[0] > 2.5 for v in (la0, la1))
    lines = ["# edgecnn benchmark suite", "",
             f"Command: `{res['command']}`  ", f"Git commit: `{res['git']['commit']}`"
             + (f" (uncommitted changes in {', '.join(res['git']['dirty_files'][:8])})" if res['git']['dirty_files'] else "")
             + "  ", f"Started {res['started']}, {res.get('seconds', 0):.0f} s. Load average at start {la0}, at end {la1}."
             + (" **Measured while the machine was busy: latency figures are noisy.**" if loaded else ""), "",
             f"CPU: {c.get('model')} ({c.get('vendor', '')}{', ' + c['hypervisor'] + ' VM' if c.get('hypervisor') else ''}), "
             f"{c.get('cores')} cores, {c.get('mhz')} MHz; flags: {' '.join(c.get('flags', []))}"
             + (f"; ONNX Runtime u8s8 kernels saturate: {c['ort_u8s8_saturates']}" if "ort_u8s8_saturates" in c else "")
             + "  ",
             (f"Scheduling: {res['scheduling']}  " if res.get("scheduling") else ""),
             "Versions: " + ", ".join(f"{k} {v}" for k, v in res.get("versions", {}).items()), "",
             "Rows: batch 1, medians of interleaved runs in one process; top-1 and agreement (top-1 equal to the fp32 "
             "PyTorch eager model's) on mnist5k test images; speedup = eager fp32 ms / row ms at the same thread count. "
             "'best of its side': the fastest (1 thread) row of edgecnn or of the peer whose top-1 is within 0.5 pp "
             "of that side's most accurate row; comparisons pit these two against each other.", ""]
    goals = res.get("goals") or []
    if goals:
        lines += ["## Goals (issue 8: 1 thread, batch 1, 224x224)", "", "| model | goal | figure | met |",
                  "|---|---|---|---|"]
        for g in goals:
            met = "yes" if g["met"] else "**no**"
            if not g["met"] and g.get("within_noise"):
                met += ", within this run's noise"
            lines.append(f"| {g['model']} | {g['goal']} | {g['figure']} | {met} |")
        paired = [g for g in goals if g.get("noise")]
        if paired:
            lines += ["", "Paired figures of the comparisons above (the same test images and the same interleaved "
                      "timing rounds on both sides; 'within noise': neither the latency interval lies wholly on the "
                      "wrong side of the goal nor the accuracy test finds edgecnn less accurate at p < 0.05):", ""]
            lines += [f"- {g['model']}, {g['goal'].split(',')[0]}: {g['noise']}" for g in paired]
        lines.append("")
    mr = res.get("mac_rate")
    if mr:
        p = res["int8_peak"]
        lines += [f"int8 MAC rate, resnet18 {mr['input']}: {mr['gmac']} GMAC in {mr['p50_1t_ms']} ms at 1 thread "
                  f"({mr['row']}) = {mr['achieved_gmac_s']} GMAC/s, {100 * (mr['share_of_peak'] or 0):.0f}% of one "
                  f"core's peak {p['peak_gmac_s_1core']} GMAC/s ({p['isa']}: {p['int8_mac_per_cycle_per_core']} "
                  f"MAC/cycle x {p['mhz']} MHz, {p['mhz_source']}){'; ' + p['note'] if p['note'] else ''}."
                  + (f" **{mr['note']}**" if mr.get("note") else ""), ""]
    for title, key in (("Main table", "models"), ("224x224 latency mode", "latency_224")):
        for name, r in res.get(key, {}).items():
            lines += [f"## {name}, input {r.get('input_shape')} ({title})", ""]
            if key == "latency_224":
                ad = r.get("adapt_224") or {}
                m = ad.get("model")
                if m:
                    lines += [f"Weights trained at {res['config']['size']} px, adapted to 224 px by a short fine-tune: "
                              f"batch norms re-estimated on {m['bn_images']} training images, {m['steps']} steps of "
                              f"batch {m['batch']} (AdamW, lr {m['lr']}), batch norms re-estimated again; "
                              f"{m['seconds']:.0f} s, {m['step_seconds_median']} s a step (one epoch, "
                              f"{m['steps_per_epoch']} steps, would take ~{m['epoch_seconds_estimate']} s). "
                              f"Validation top-1 ({m['val_images']} images) before -> after: "
                              + "; ".join(f"{k} {v['val_top1_before']}% -> {v['val_top1_after']}%"
                                          for k, v in ad.items() if "val_top1_after" in v)
                              + ". Same weights and calibration images for every row.", ""]
                else:
                    lines += [f"Weights trained at {res['config']['size']} px, used as they are: top-1 here is theirs "
                              "on 224-px upscaled digits (same weights and calibration images for every row).", ""]
            q = r.get("edgecnn_quantize")
            if q:
                lines += [f"edgecnn PT2E fake-quant: fp32 top-1 {q['float_test'].get('top1')}% -> int8 "
                          f"{q['int8_test'].get('top1')}% ({'first ' + str(q['test_images']) + ' test images' if q.get('test_images') else 'whole test split'}). MACs {r.get('macs', 0) / 1e6:.1f} M."
                          + observer_sentence(q, r.get("edgecnn_quantize_pruned")), ""]
            scr = r.get("ort_screen")
            if scr:
                lines += [f"ORT quantize_static: all {len([x for x in r['rows'] if x['key'].startswith('ort/peer-')])} "
                          f"configurations screened ({scr['images']} test images, {scr['runs']} runs at 1 thread); "
                          f"measured fully: {', '.join(scr['kept'])}.", ""]
            lines += table(r) + comparisons(r) + [""] + phases(r)
    return "\n".join(lines) + "\n"
