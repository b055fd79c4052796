"""Goals of issue 6 judged against a bench/gpu.py report, and its Markdown summary."""

from __future__ import annotations

import math


def _get(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _train_row(report: dict, name: str, crop: float) -> dict | None:
    rows = _get(report, "sections", "train", "results", default=[])
    return next((r for r in rows if r["setting"]["name"] == name
                 and r["setting"]["crop_s"] == crop and r.get("status") == "ok"), None)


def goal_values(report: dict) -> list[tuple[str, str, float, float | None, str]]:
    """(goal, unit, target, measured or None, "min"|"max") for each goal of issue 6."""
    crop = report["meta"]["crops"][0]
    best = _train_row(report, "best", crop) or {}
    queue_rows = _get(report, "sections", "queue", "results", default=[])
    q8k = next((r for r in queue_rows if r["queue_size"] == 8192), {})
    workers = []
    for row in _get(report, "sections", "rawboost", "results", default=[]):
        if "workers_rawboost_on_device" in row:
            workers.append(min(row["workers_rawboost_on_device"],
                               row["workers_rawboost_in_workers"]))
    mfu = best.get("mfu")
    return [
        (f"Stage 1 MFU, bf16, {crop:g} s crops", "%", 45.0,
         None if mfu is None else 100 * mfu, "min"),
        (f"speed-up over naive (fp32, eager, no compile), {crop:g} s", "x", 3.0,
         _get(report, "sections", "train", "speedup_vs_naive", str(crop)), "min"),
        ("queue + gather overhead at |Q| = 8192", "% of step", 1.0,
         q8k.get("isolated_overhead_pct"), "max"),
        (f"scoring throughput, bf16, {crop:g} s", "utt/s", 2000.0,
         _get(report, "sections", "eval", "best", str(crop), "utt_per_s"), "min"),
        ("CPU workers to feed one device (best RawBoost placement, worst crop)", "workers", 6.0,
         float(max(workers)) if workers else None, "max"),
    ]


def judge(report: dict) -> list[dict]:
    """Each goal: measured value and "met", "missed by ...", "not measured" or "n/a: ..."."""
    meta = report["meta"]
    applicable = meta["device_type"] == "cuda" and meta["preset"] == "xlsr-300m-random"
    out = []
    for goal, unit, target, value, kind in goal_values(report):
        if not applicable:
            status = f"n/a: the goal is for a CUDA GPU with xlsr-300m-random (this run: " \
                     f"{meta['device_type']}, {meta['preset']})"
        elif value is None or not math.isfinite(value):
            status = "not measured"
        elif (value >= target) if kind == "min" else (value <= target):
            status = "met"
        else:
            gap = target - value if kind == "min" else value - target
            status = f"missed by {gap:.3g} {unit} ({100 * gap / target:.0f} % of the goal)"
        sign = ">=" if kind == "min" else "<="
        out.append({"goal": goal, "target": f"{sign} {target:g} {unit}", "measured": value,
                    "unit": unit, "status": status})
    return out


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


def _setting_rows(rows: list[dict], extra: str | None = None) -> list[str]:
    lines = []
    for r in rows:
        s = r["setting"]
        if r.get("status") != "ok":
            lines.append(f"| {s['name']} | {s['crop_s']:g} | {s['batch']} | {r.get('status')} "
                         f"| | | | |" + (" |" if extra else ""))
            continue
        mfu = None if r.get("mfu") is None else 100 * r["mfu"]
        cells = [s["name"], f"{s['crop_s']:g}", str(s["batch"]), _fmt(r["samples_per_s"]),
                 _fmt(1e3 * r["step_s"]["median"]), _fmt(mfu), _fmt(r["achieved_tflops"]),
                 _fmt(r.get("peak_mem_gib"))]
        if extra:
            cells.append(_fmt(r.get(extra)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _table(title: str, rows: list[dict], extra: str | None = None) -> list[str]:
    head = "| setting | crop s | batch | samples/s | step ms | MFU % | TFLOP/s | peak GiB |"
    rule = "|---|---|---|---|---|---|---|---|"
    if extra:
        head, rule = head + f" {extra} |", rule + "---|"
    return [f"### {title}", "", head, rule, *_setting_rows(rows, extra), ""]


def markdown(report: dict) -> str:
    meta, sec = report["meta"], report["sections"]
    lines = [f"# bench/gpu.py report — {meta['device_name']}", "",
             f"device: {meta['device_label']}; preset {meta['preset']}; torch {meta['torch']}, "
             f"transformers {meta['transformers']}; peak {_fmt(meta['peak_tflops'])} TFLOP/s "
             f"({meta['peak_source']}); {meta['started']}", ""]
    if meta.get("note"):
        lines += [f"note: {meta['note']}", ""]
    lines += ["## Goals (issue 6)", "", "| goal | target | measured | status |",
              "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {_fmt(g['measured'])} | {g['status']} |"
              for g in report.get("goals", [])]
    lines.append("")
    lines += _sections_md(sec)
    skipped = [f"{k}: {v.get('status')}" for k, v in sec.items() if v.get("status") != "ok"]
    if skipped:
        lines += ["## Not run in full", "", *[f"- {s}" for s in skipped], ""]
    return "\n".join(lines)


def _sections_md(sec: dict) -> list[str]:
    lines = []
    if _get(sec, "train", "results"):
        lines += _table("Training step: fast vs naive", sec["train"]["results"])
        lines += ["speed-up over naive: " + ", ".join(
            f"{c} s: {v:.2f}x" for c, v in sec["train"]["speedup_vs_naive"].items()), ""]
    for key, title in (("options", "Options (each alone, vs best)"),
                       ("zero2", "DDP / DeepSpeed ZeRO-2, world 1"), ("compile", "torch.compile")):
        if _get(sec, key, "results"):
            lines += _table(title, sec[key]["results"], "speed_vs_best")
    if _get(sec, "sharded", "results"):
        big = sec["sharded"]
        lines += _table(f"{big['preset']} ({_fmt(big['parameters'])} parameters): plain / FSDP2 / "
                        "ZeRO-3, world 1", big["results"], "speed_vs_plain")
    if _get(sec, "compile", "results"):
        lines += [f"compile time: {_fmt(sec['compile']['results'][0].get('compile_s'))} s", ""]
    if _get(sec, "queue", "results"):
        lines += ["### Queue overhead", "", "| |Q| | step ms | step overhead % | queue part ms | "
                  "overhead % (isolated) |", "|---|---|---|---|---|"]
        lines += [f"| {r['queue_size']} | {_fmt(1e3 * r['step_s']['median'])} | "
                  f"{_fmt(r.get('step_overhead_pct'))} | {_fmt(r['isolated_ms'])} | "
                  f"{_fmt(r.get('isolated_overhead_pct'))} |" for r in sec["queue"]["results"]]
        lines.append("")
    if _get(sec, "eval", "results"):
        lines += ["### Scoring (bf16 inference)", "", "| crop s | batch | utt/s | peak GiB |",
                  "|---|---|---|---|"]
        lines += [f"| {r['crop_s']:g} | {r['batch']} | {_fmt(r.get('utt_per_s'))} | "
                  f"{_fmt(r.get('peak_mem_gib'))} |" for r in sec["eval"]["results"]]
        lines.append("")
    lines += _feed_md(sec)
    return lines


def _feed_md(sec: dict) -> list[str]:
    lines = []
    if _get(sec, "rawboost", "results"):
        lines += ["### RawBoost, codecs and CPU workers", "", "| crop s | device RawBoost "
                  "samples/s | worker decode samples/s | worker decode+RawBoost samples/s | "
                  "worker decode+RawBoost+codec mix samples/s | workers (RawBoost + codecs in "
                  "workers / RawBoost in workers / on device / none) |",
                  "|---|---|---|---|---|---|"]
        for r in sec["rawboost"]["results"]:
            w = "/".join(_fmt(r.get(f"workers_{k}"))
                         for k in ("rawboost_codecs_in_workers", "rawboost_in_workers",
                                   "rawboost_on_device", "no_rawboost"))
            lines.append(f"| {r['crop_s']:g} | {_fmt(r['device_samples_per_s'])} | "
                         f"{_fmt(r.get('cpu_worker_samples_per_s_decode'))} | "
                         f"{_fmt(r.get('cpu_worker_samples_per_s_decode_rawboost'))} | "
                         f"{_fmt(r.get('cpu_worker_samples_per_s_decode_rawboost_codecs'))} "
                         f"| {w} |")
        lines.append("")
    if _get(sec, "max_batch", "results"):
        lines += ["### Largest batch that fits (fast setting)", "",
                  "| crop s | largest | first OOM | peak GiB | capped |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {_fmt(r['largest'])} | {_fmt(r['smallest_oom'])} | "
                  f"{_fmt(r.get('peak_mem_gib_at_largest'))} | {r['capped']} |"
                  for c, r in sec["max_batch"]["results"].items()]
        lines.append("")
    for key, what in (("top", "ops"), ("top_kernels", "kernels")):
        if _get(sec, "profile", key):
            lines += [f"### Profile: top {what} by self time (fast setting)", "",
                      f"| {what[:-1]} | ms/step | share |", "|---|---|---|"]
            lines += [f"| {t['name'][:70]} | {_fmt(t['ms_per_step'])} | {100 * t['share']:.1f} % |"
                      for t in sec["profile"][key][:10]]
            lines.append("")
    return lines
