"""sccl-report: the study's table over finished runs (mean +- std over each configuration's runs).

    sccl-report runs/study                       # every run directory under runs/study
    sccl-report runs/a runs/b ... [--out DIR] [--plot-set itw]

A run counts when it holds ``stage1/config.yaml`` (what was trained) and
``eval/results.json`` (what it scored); runs without results are listed as incomplete.
Runs are grouped by configuration = (similarity, temperature, queue size, first queue epoch);
seeds (run.seed / data.seed) are the replicates. Every other Stage 1 setting must agree
within a group, else a warning names the keys that differ. The spread is called "over
seeds" only when every run of a configuration has its own seed; runs sharing a seed are
repeats, and the table then says "over runs". A run is named after its directory, with as
many parent directories as it takes to tell two runs apart (a/run, b/run). Writes into DIR
(default: the directory given, or the runs' common parent):

    report.md    grouped table (EER in %, mean +- sample std, best mean in bold), then one
                 row per run
    report.csv   the grouped table as numbers (one row per configuration)
    runs.csv     one row per run
    <set>_vs_queue.png   EER of --plot-set (default ITW) against queue size, one line per
                 similarity and queue start (error bars = std over runs); the no-queue
                 point (|Q| = 0) has its own marker, where every line of its similarity starts

"pooled" is the EER over all sets' scores concatenated and "mean" the mean of the per-set
EERs, as sccl/evaluate.py reports them. Detection costs follow the EERs where results.json has
them: "<set> min t-DCF" for sets evaluated with ASV scores, and "<set> minDCF / actDCF / Cllr"
for ASVspoof 5 sets (numbers, not %). Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sccl.config import ConfigError, flatten, read_config_file
from sccl.fileio import atomic_write_text
from sccl.results import display_name, ordered_sets, pyplot, save_png

# What makes a configuration; seeds are replicates; run.* only says where/how it ran.
GROUP_KEYS = ("loss.similarity", "loss.temperature", "loss.queue_size", "loss.queue_start_epoch")
REPLICATE_KEYS = ("run.", "data.seed")
_SIM_ORDER = {"cosine": 0, "angular": 1}
# Detection costs reported per set: results.json key -> column suffix (min t-DCF where the
# set has ASV scores; the ASVspoof 5 package's minDCF / actDCF / Cllr for its sets).
COSTS = {"min_tdcf": "min t-DCF", "min_dcf": "minDCF", "act_dcf": "actDCF", "cllr": "Cllr"}


class ReportError(ValueError):
    """Unusable input: the message names the file and the key."""


@dataclass
class Run:
    """One finished run: its configuration and EERs (fractions)."""

    name: str
    path: Path
    config: dict  # flattened Stage 1 config
    eers: dict[str, float]  # set name, "pooled", "mean" -> EER; "<set> <cost>" -> cost (COSTS)

    @property
    def key(self) -> tuple:
        return tuple(self.config[k] for k in GROUP_KEYS)

    @property
    def seed(self) -> int:
        return int(self.config.get("run.seed", 0))


@dataclass
class Group:
    """The runs (seeds) of one configuration."""

    key: tuple
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> np.ndarray:
        """(n,) EERs of ``metric`` (a set name, "pooled" or "mean") over the runs having it."""
        return np.array([r.eers[metric] for r in self.runs if metric in r.eers])

    def stats(self, metric: str) -> tuple[float, float]:
        """(mean, sample std) of ``metric``; std is NaN with one run, both NaN with none."""
        v = self.values(metric)
        if len(v) == 0:
            return math.nan, math.nan
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


# ------------------------------------------------------------------------ reading runs


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories among ``paths``: each path is a run (has stage1/) or holds runs."""
    found: list[Path] = []
    for p in paths:
        if (p / "stage1").is_dir():
            found.append(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if (c / "stage1").is_dir())
        else:
            raise ReportError(f"{p}: no such directory")
    if not found:
        raise ReportError(f"no run directories (with stage1/) in {', '.join(map(str, paths))}")
    return found


def _number(obj: dict, key: str, where: Path) -> float:
    try:
        value = obj[key]["eer"] if key in ("pooled_eer", "mean_eer") else obj["eer"]
        return float(value)
    except (KeyError, TypeError, ValueError):
        raise ReportError(f"{where}: {key}: expected an object with a numeric 'eer'") from None


def load_run(path: Path) -> Run | None:
    """The run at ``path``; None when it has no eval/results.json yet."""
    results = path / "eval" / "results.json"
    if not results.is_file():
        return None
    try:
        res = json.loads(results.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{results}: not valid JSON: {e}") from None
    if not isinstance(res, dict) or not isinstance(res.get("sets"), dict) or not res["sets"]:
        raise ReportError(f"{results}: sets: expected a non-empty object of eval sets")
    eers = {name: _number(entry, name, results) for name, entry in res["sets"].items()}
    eers.update(costs_of(res["sets"]), pooled=_number(res, "pooled_eer", results),
                mean=_number(res, "mean_eer", results))
    cfg_path = path / "stage1" / "config.yaml"
    try:
        config = flatten(read_config_file(cfg_path)[0])
    except ConfigError as e:
        raise ReportError(str(e)) from None
    missing = [k for k in GROUP_KEYS if k not in config]
    if missing:
        raise ReportError(f"{cfg_path}: missing key(s) {', '.join(missing)}")
    return Run(path.name, path, config, eers)


def costs_of(sets: dict) -> dict[str, float]:
    """{"<set> <cost>": value} of the detection costs results.json reports (COSTS)."""
    out = {}
    for name, e in sets.items():
        if isinstance(e.get("min_tdcf"), dict):
            out[f"{name} {COSTS['min_tdcf']}"] = float(e["min_tdcf"]["pooled"])
        if e.get("dataset") == "asvspoof5":
            out.update({f"{name} {COSTS[k]}": float(e[k]) for k in ("min_dcf", "act_dcf",
                                                                   "cllr") if k in e})
    return out


def group_runs(runs: list[Run]) -> tuple[list[Group], list[str]]:
    """Runs grouped by configuration, in table order, plus warnings about settings that
    differ inside a group (anything but the configuration keys and seeds)."""
    groups: dict[tuple, Group] = {}
    for r in runs:
        groups.setdefault(r.key, Group(r.key)).runs.append(r)
    warnings = []
    for g in groups.values():
        g.runs.sort(key=lambda r: (r.seed, r.name))
        keys = set().union(*(r.config for r in g.runs)) - set(GROUP_KEYS)
        differ = sorted(k for k in keys if not k.startswith(REPLICATE_KEYS)
                        and len({repr(r.config.get(k)) for r in g.runs}) > 1)
        if differ:
            warnings.append(f"configuration {config_label(g.key)}: its runs differ in "
                            f"{', '.join(differ)} (grouped anyway)")
    order = sorted(groups.values(), key=lambda g: (_SIM_ORDER.get(g.key[0], 9), str(g.key[0]),
                                                   g.key[1], g.key[2], g.key[3]))
    return order, warnings


# ------------------------------------------------------------------------ tables


def delayed_label(queue_size: int, start_epoch: int) -> str:
    if queue_size == 0:
        return "-"
    return f"from epoch {start_epoch}" if start_epoch > 1 else "no"


def config_label(key: tuple) -> str:
    sim, temp, q, start = key
    return f"{sim} T={temp:g} |Q|={q}" + (f" from epoch {start}" if q and start > 1 else "")


def _is_cost(metric: str) -> bool:
    return metric.endswith(tuple(f" {c}" for c in COSTS.values()))


def _pct(x: float, metric: str = "") -> str:
    """An EER in % (2 decimals), or a detection cost as it is (4 decimals)."""
    return "—" if math.isnan(x) else f"{x:.4f}" if _is_cost(metric) else f"{100 * x:.2f}"


def _cell(mean: float, std: float, metric: str) -> str:
    m = _pct(mean, metric)
    return m if math.isnan(std) else f"{m} ± {_pct(std, metric)}"


def _label(metric: str) -> str:
    name, _, cost = metric.partition(" ")
    return f"{display_name(name)} {cost}" if _is_cost(metric) else display_name(metric)


def metrics_of(runs: list[Run]) -> list[str]:
    """Set names in study column order, "pooled" and "mean", then the detection costs."""
    names: list[str] = []
    for r in runs:
        names += [n for n in r.eers if n not in names]
    sets = ordered_sets([n for n in names if not _is_cost(n) and n not in ("pooled", "mean")])
    costs = [f"{s} {c}" for s in sets for c in COSTS.values() if f"{s} {c}" in names]
    return [*sets, "pooled", "mean", *costs]


def replicates(groups: list[Group]) -> str:
    """"seeds" when every configuration's runs have distinct seeds, else "runs"."""
    distinct = all(len({r.seed for r in g.runs}) == len(g.runs) for g in groups)
    return "seeds" if distinct else "runs"


def unique_names(paths: list[Path]) -> list[str]:
    """Each run's directory name, with as many parent directories as it takes to tell it
    from every other run (two runs both called ``run`` become ``a/run`` and ``b/run``)."""
    parts = [p.resolve().parts for p in paths]
    names = []
    for i, mine in enumerate(parts):
        k = 1
        while k < len(mine) and any(mine[-k:] == other[-k:]
                                    for j, other in enumerate(parts) if j != i):
            k += 1
        names.append("/".join(mine[-k:]))
    return names


def markdown(groups: list[Group], metrics: list[str], incomplete: list[Path],
             warnings: list[str]) -> str:
    head = ["similarity", "T", "queue", "delayed", "n", "seeds",
            *[_label(m) for m in metrics]]
    over = replicates(groups)
    lines = ["# sccl report", "",
             f"EER in % (detection costs as numbers), mean ± sample std over {over} (n per "
             "configuration); "
             f"{len(groups)} configuration(s), {sum(len(g.runs) for g in groups)} run(s). "
             + ("" if over == "seeds" else "Some runs of a configuration share a seed: they "
                "are repeats, not seeds. ")
             + "pooled = EER over all sets' scores concatenated; mean = mean of the per-set "
             "EERs; min t-DCF, minDCF, actDCF, Cllr: sccl/dcf.py. Best mean per column in "
             "bold.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {m: np.nanmin([g.stats(m)[0] for g in groups]) for m in metrics}
    for g in groups:
        sim, temp, q, start = g.key
        cells = [sim, f"{temp:g}", str(q), delayed_label(q, start), str(len(g.runs)),
                 ",".join(str(r.seed) for r in g.runs)]
        for m in metrics:
            mean, std = g.stats(m)
            text = _cell(mean, std, m)
            cells.append(f"**{text}**" if len(groups) > 1 and mean == best[m] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| run | similarity | T | queue | queue start | seed | "
              + " | ".join(_label(m) for m in metrics) + " |",
              "|" + "---|" * (6 + len(metrics))]
    for g in groups:
        for r in g.runs:
            vals = [_pct(r.eers.get(m, math.nan), m) for m in metrics]
            lines.append(f"| {r.name} | {g.key[0]} | {g.key[1]:g} | {g.key[2]} | {g.key[3]} | "
                         f"{r.seed} | " + " | ".join(vals) + " |")
    if incomplete:
        lines += ["", "## Incomplete (no eval/results.json)", ""]
        lines += [f"- {p}" for p in incomplete]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def csv_tables(groups: list[Group], metrics: list[str]) -> tuple[str, str]:
    """(grouped CSV, per-run CSV); EERs in % (columns *_pct), detection costs as numbers
    (columns named after the metric, spaces as _), empty where undefined."""
    def num(x: float, m: str = "") -> str:
        return "" if math.isnan(x) else f"{x:.6f}" if _is_cost(m) else f"{100 * x:.4f}"

    def col(m: str) -> str:
        return m.replace(" ", "_") if _is_cost(m) else f"{m}_pct"

    grouped, per_run = io.StringIO(), io.StringIO()
    gw, rw = csv.writer(grouped, lineterminator="\n"), csv.writer(per_run, lineterminator="\n")
    gw.writerow(["similarity", "temperature", "queue_size", "queue_start_epoch", "delayed",
                 "n_runs", "seeds", *[f"{m}_{s}_pct" if not _is_cost(m) else
                                      f"{col(m)}_{s}" for m in metrics for s in ("mean", "std")]])
    rw.writerow(["run", "similarity", "temperature", "queue_size", "queue_start_epoch", "seed",
                 *[col(m) for m in metrics], "path"])
    for g in groups:
        sim, temp, q, start = g.key
        stats = [num(v, m) for m in metrics for v in g.stats(m)]
        gw.writerow([sim, temp, q, start, int(q > 0 and start > 1), len(g.runs),
                     " ".join(str(r.seed) for r in g.runs), *stats])
        for r in g.runs:
            vals = [num(r.eers.get(m, math.nan), m) for m in metrics]
            rw.writerow([r.name, sim, temp, q, start, r.seed, *vals, str(r.path)])
    return grouped.getvalue(), per_run.getvalue()


# ------------------------------------------------------------------------ plot


def plot_vs_queue(groups: list[Group], metric: str, path: Path) -> bool:
    """Write ``queue_figure`` to ``path``; False (nothing written) if no run has ``metric``."""
    fig = queue_figure(groups, metric)
    if fig is not None:
        save_png(fig, path)
    return fig is not None


def queue_figure(groups: list[Group], metric: str):
    """EER of ``metric`` against queue size: a line per (similarity, temperature, queue
    start); the no-queue point (its own marker) starts every line of its similarity. None if
    no run has ``metric``."""
    lines: dict[tuple, dict[int, tuple[float, float]]] = {}
    for g in groups:
        sim, temp, q, start = g.key
        mean, std = g.stats(metric)
        if math.isnan(mean):
            continue
        starts = {k[3] for k in (h.key for h in groups) if k[:2] == (sim, temp) and k[2]} or {1}
        for s in ([start] if q else starts):  # q=0 is both the delayed and undelayed origin
            lines.setdefault((sim, temp, s), {})[q] = (mean, 0.0 if math.isnan(std) else std)
    if not lines:
        return None
    plt = pyplot()
    sizes = sorted({q for pts in lines.values() for q in pts})
    pos = {q: i for i, q in enumerate(sizes)}  # even spacing: 0 has no place on a log axis
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {}  # one colour per (similarity, T); solid = delayed queue, dashed = from start
    origins = {}  # (similarity, T) -> the no-queue point (mean, std)
    for (sim, temp, start), pts in sorted(lines.items(), key=lambda kv: str(kv[0])):
        qs = sorted(pts)
        colour = colours.setdefault((sim, temp), f"C{len(colours)}")
        if 0 in pts:
            origins[(sim, temp)] = pts[0]
        if qs == [0]:
            continue  # no queue run of this similarity: only its marker below
        label = f"{sim} (T={temp:g}), queue " + (f"from epoch {start}" if start > 1 else
                                                  "from the start")
        ax.errorbar([pos[q] for q in qs], [100 * pts[q][0] for q in qs],
                    yerr=[100 * pts[q][1] for q in qs], marker="o", capsize=3, color=colour,
                    ls="-" if start > 1 else "--", label=label)
    for i, ((sim, temp), (mean, std)) in enumerate(origins.items()):
        shift = 0.04 * (i - (len(origins) - 1) / 2)  # side by side: overlapping bars hide
        ax.errorbar([pos[0] + shift], [100 * mean], yerr=[100 * std], marker="s", markersize=7,
                    capsize=3, color=colours[(sim, temp)], mec="k", ls="none",
                    label=f"{sim} (T={temp:g}), no queue")
    ax.set_xticks(range(len(sizes)), [str(q) for q in sizes])
    ax.set_xlabel("queue size |Q| (0 = no queue)")
    ax.set_ylabel(f"{display_name(metric)} EER (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ entry point


def report(paths: list[Path], out: Path | None, plot_set: str = "itw") -> Path:
    """Read, group, write report.md / report.csv / runs.csv / the plot; return the out dir."""
    run_dirs = find_runs(paths)
    loaded = [(p, load_run(p)) for p in run_dirs]
    runs = [r for _, r in loaded if r is not None]
    for r, name in zip(runs, unique_names([r.path for r in runs]), strict=True):
        r.name = name
    incomplete = [p for p, r in loaded if r is None]
    if not runs:
        raise ReportError(f"none of the {len(run_dirs)} run(s) has eval/results.json yet")
    groups, warnings = group_runs(runs)
    metrics = metrics_of(runs)
    out = out or (paths[0] if len(paths) == 1 and paths[0] not in run_dirs
                  else Path(os.path.commonpath([p.resolve().parent for p in run_dirs])))
    out.mkdir(parents=True, exist_ok=True)
    plot_metric = next((m for m in metrics if m.lower() == plot_set.lower()), None)
    plot_path = out / f"{plot_set.lower()}_vs_queue.png"
    if plot_metric is None or not plot_vs_queue(groups, plot_metric, plot_path):
        warnings.append(f"no run has an eval set named {plot_set!r}: no plot (see --plot-set)")
    md = markdown(groups, metrics, incomplete, warnings)
    grouped_csv, runs_csv = csv_tables(groups, metrics)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.csv", grouped_csv)
    atomic_write_text(out / "runs.csv", runs_csv)
    print(md)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sccl-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories or directories of runs")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to write (default: the directory given, when it holds the "
                         "runs; else the runs' common parent directory)")
    ap.add_argument("--plot-set", default="itw", help="eval set plotted against queue size")
    args = ap.parse_args(argv)
    try:
        out = report(args.runs, args.out, args.plot_set)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'report.md'}, report.csv, runs.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
