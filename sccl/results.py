"""What evaluation leaves on disk: score files, results.json / results.md, plots.

- Score files follow the ASVspoof 2021 evaluation packages: ``trial_id score`` per line, no
  header, higher = bona fide. They are rewritten whole and atomically, never appended, so a
  rerun cannot leave stale or doubled lines.
- results.md lays the headline numbers out like the study (one row per run; columns LA19 /
  ITW / LA21 / DF21 / pooled / mean, EER in %); ``results_table`` takes several runs so a
  report over a grid of runs can reuse it. Then the detection costs, one row per set, in the
  columns of the ASVspoof 5 package (min DCF, act DCF, Cllr, EER) plus min t-DCF, and per set
  the min t-DCF table (attack x codec, as the ASVspoof 2021 package prints it).
- Plots use matplotlib's Agg backend (no display on cluster nodes): DET curves of every set,
  score histograms per class, a t-SNE picture of a subsample of eval embeddings.
- ``remove_stale`` deletes the score files and plots results.json no longer refers to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sccl.aggregate import Trials
from sccl.fileio import atomic_open, atomic_write_json, atomic_write_text
from sccl.metrics import compute_det_curve

# Study column order; other set names follow in the order given.
STUDY_COLUMNS = ("la19", "itw", "la21", "df21")
_DISPLAY = {"la19": "LA19", "itw": "ITW", "la21": "LA21", "df21": "DF21", "as5": "AS5"}
PLOTS = ("det.png", "hist.png", "tsne.png")  # what evaluation writes under plots/
# A breakdown row with fewer trials of a class than this is flagged: with 29 bona fide
# trials one trial moves the EER by over 3 points.
SMALL = 30
BONA_COLOUR, SPOOF_COLOUR = "black", "tab:red"  # the same in every picture


class ScoreFileError(ValueError):
    """A score file that cannot be read back: names the file and line."""


def write_score_file(path: str | Path, keys: Sequence[str], scores: np.ndarray) -> None:
    """Write ``trial_id score`` lines atomically (whole file replaced).

    ``repr`` of the float64 score round-trips exactly, so an EER recomputed from the file
    equals the one computed in memory (ties included)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(keys),):
        raise ValueError(f"{len(keys)} keys but scores of shape {scores.shape}")
    with atomic_open(path, "w") as f:
        for key, score in zip(keys, scores.tolist(), strict=True):
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"trial id {key!r} is empty or holds whitespace")
            f.write(f"{key} {score!r}\n")


def read_score_file(path: str | Path) -> dict[str, float]:
    """{trial_id: score}; malformed or duplicate lines raise ScoreFileError with file:line."""
    out: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2:
                raise ScoreFileError(f"{path}:{lineno}: expected 'trial_id score', got {line!r}")
            try:
                score = float(parts[1])
            except ValueError:
                raise ScoreFileError(f"{path}:{lineno}: score {parts[1]!r} is not a number") \
                    from None
            if parts[0] in out:
                raise ScoreFileError(f"{path}:{lineno}: duplicate trial {parts[0]!r}")
            out[parts[0]] = score
    return out


def display_name(name: str) -> str:
    return _DISPLAY.get(name.lower(), name)


def ordered_sets(names: Sequence[str]) -> list[str]:
    """Set names in study column order first, then the rest in the given order."""
    study = [n for c in STUDY_COLUMNS for n in names if n.lower() == c]
    return study + [n for n in names if n not in study]


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def results_table(rows: Sequence[tuple[str, dict]], *, cis: bool = False) -> str:
    """Markdown table, one row per (run name, results dict), EER in %, study column order;
    ``cis``: each cell followed by its bootstrap CI in brackets (when it has one)."""
    names: list[str] = []
    for _, res in rows:
        names += [n for n in res["sets"] if n not in names]
    cols = ordered_sets(names)
    head = ["run", *[display_name(c) for c in cols], "pooled", "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, res in rows:
        entries = [res["sets"].get(c, {}) for c in cols] + [res["pooled_eer"], res["mean_eer"]]
        cells = [run] + [_pct(e.get("eer")) + (_ci_text(e.get("ci")) if cis else "")
                         for e in entries]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ci_text(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _num(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.4f}"


def costs_table(res: dict) -> str:
    """Markdown, one row per set: EER %, min DCF, act DCF, Cllr (bits), the calibrated act DCF
    and Cllr where the run has a calibration, pooled min t-DCF where ASV scores were given."""
    cal = any("cllr_calibrated" in e for e in res["sets"].values())
    keys = ["min_dcf", "act_dcf", "cllr"] + (["act_dcf_calibrated", "cllr_calibrated"] if cal
                                             else [])
    head = ["set", "EER %", "minDCF", "actDCF", "Cllr"] + (["actDCF cal.", "Cllr cal."] if cal
                                                           else []) + ["min t-DCF"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ordered_sets(list(res["sets"])):
        e = res["sets"][name]
        cells = [display_name(name), _pct(e["eer"]), *[_num(e.get(k)) for k in keys],
                 _num((e.get("min_tdcf") or {}).get("pooled"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _tdcf_md(t: dict) -> list[str]:
    """The min t-DCF table of one set: a row per attack and Pooled, a column per codec."""
    cols = list(t["table"][next(iter(t["table"]))])
    out = [f"min t-DCF, {t['formulation']}, ASV scores `{t['asv_scores']}`"
           + (f" (subset {t['asv_subset']})" if t.get("asv_subset") else "") + ":", "",
           "| attack | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    out += [f"| {a} | " + " | ".join(_num(row[c]) for c in cols) + " |"
            for a, row in t["table"].items()]
    return out + [""]


def _breakdown_md(name: str, entry: dict) -> list[str]:
    """Per-attack (and per-condition) EER tables of one set. An attack's EER pits its spoof
    trials against every bona fide trial of the set; a condition's (codec) only those
    sharing the condition. A breakdown with a single group says nothing new: skipped."""
    out = [f"### {display_name(name)}", "",
           f"EER {_pct(entry['eer'])} %{_ci_text(entry.get('ci'))}; "
           f"{entry['bonafide']} bona fide / {entry['spoof']} spoof trials"
           + (f"; subset {entry['subset']}" if entry.get("subset") else ""), ""]
    flagged = False
    for key, table in entry.items():
        if not key.startswith("per_") or len(table or {}) < 2:
            continue
        what = key[len("per_"):]
        out += [f"Per {what}: " + ("each attack's spoof trials against all bona fide trials."
                                   if what == "attack" else f"the trials of each {what}."), "",
                f"| {what} | EER % | bona fide | spoof | note |", "|---|---|---|---|---|"]
        for value, e in table.items():
            nb = e.get("bonafide", entry["bonafide"])  # per attack: the set's bona fide
            small = min(nb, e.get("spoof", 0)) < SMALL
            flagged |= small
            out.append(f"| {value} | {_pct(e['eer'])} | {nb} | {e.get('spoof', 0)} | "
                       f"{'small' if small else ''} |")
        out.append("")
    if flagged:
        out += [f"small: fewer than {SMALL} trials of a class; that EER is coarse.", ""]
    return out + (_tdcf_md(entry["min_tdcf"]) if entry.get("min_tdcf") else [])


def results_markdown(run_name: str, res: dict) -> str:
    """The whole results.md of one run: headline table, CIs, breakdowns, warnings, plots."""
    boot = res.get("bootstrap", {})
    ci_note = (f"{100 * boot.get('level', 0.95):.0f} % bootstrap CIs in brackets "
               f"({boot['replicates']} replicates, {boot.get('scheme', '')})."
               if boot.get("replicates") else "No bootstrap CIs (eval.bootstrap 0).")
    lines = [f"# Results: {run_name}", "", results_table([(run_name, res)], cis=True),
             f"EER in %. pooled = {res['pooled_eer']['definition']}; "
             f"mean = {res['mean_eer']['definition']}. {ci_note}", ""]
    if "min_dcf" in next(iter(res["sets"].values())):
        llr = res.get("llr", {})
        lines += ["## Detection costs", "", costs_table(res),
                  "minDCF, actDCF: normalised, Pspoof 0.05, Cmiss 1, Cfa 10 (ASVspoof 5); "
                  "actDCF and Cllr (bits) read the scores as LLRs: "
                  f"{llr.get('definition', '')}. min t-DCF: sccl/dcf.py.", ""]
    for warning in res.get("contamination", []):
        lines += [f"**WARNING (contamination)**: {warning['message']}", ""]
    for name in ordered_sets(list(res["sets"])):
        lines += _breakdown_md(name, res["sets"][name])
    if res.get("plots"):
        lines += ["## Plots", ""] + [f"- {k}: `{v}`" for k, v in res["plots"].items()] + [""]
    return "\n".join(lines)


def write_results(eval_dir: Path, run_name: str, res: dict) -> tuple[Path, Path]:
    """Write results.json and results.md atomically; return both paths."""
    json_path, md_path = eval_dir / "results.json", eval_dir / "results.md"
    atomic_write_json(json_path, res)
    atomic_write_text(md_path, results_markdown(run_name, res))
    return json_path, md_path


def remove_stale(eval_dir: Path, res: dict) -> list[str]:
    """Delete score files and plots under ``eval_dir`` that ``res`` (results.json) does not
    refer to; return their paths relative to ``eval_dir``."""
    keep = {e.get("score_file") for e in res["sets"].values()} | set(res.get("plots", {}).values())
    scores = sorted((eval_dir / "scores").glob("*.txt")) if (eval_dir / "scores").is_dir() else []
    candidates = [f"plots/{n}" for n in PLOTS] + [f"scores/{p.name}" for p in scores]
    removed = [c for c in candidates if c not in keep and (eval_dir / c).is_file()]
    for c in removed:
        (eval_dir / c).unlink()
    return removed


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # cluster nodes have no display
    import matplotlib.pyplot as plt

    return plt


def det_label(name: str, entry: dict) -> str:
    """'LA19 (EER 1.23 %, minDCF 0.0456, min t-DCF 0.0789)', with what the entry has."""
    extra = [f"minDCF {entry['min_dcf']:.4f}"] if "min_dcf" in entry else []
    if entry.get("min_tdcf"):
        extra.append(f"min t-DCF {entry['min_tdcf']['pooled']:.4f}")
    return f"{display_name(name)} (" + ", ".join([f"EER {_pct(entry['eer'])} %", *extra]) + ")"


def plot_det(sets: Sequence[Trials], path: Path, entries: dict[str, dict]) -> None:
    """DET curves (normal-deviate axes, 0.1 % to 99.9 %, ticks at both ends) of every set
    into one PNG, labelled with ``det_label`` of its results entry; rates beyond the range (0
    or 1 included) sit on the axis edge."""
    from scipy.stats import norm

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    lo, hi = norm.ppf(1e-3), norm.ppf(1 - 1e-3)  # probit of 0 or 1 is infinite
    for i, t in enumerate(sets):
        frr, far, _ = compute_det_curve(t.scores[t.bonafide], t.scores[~t.bonafide])
        ax.plot(np.clip(norm.ppf(far), lo, hi), np.clip(norm.ppf(frr), lo, hi),
                ls=("-", "--", "-.")[i % 3],  # curves that coincide stay visible
                label=det_label(t.name, entries[t.name]))
    ticks = np.array([0.001, 0.005, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98, 0.995, 0.999])
    labels = [f"{100 * v:g}" for v in ticks]
    ax.set_xticks(norm.ppf(ticks), labels)
    ax.set_yticks(norm.ppf(ticks), labels)
    ax.set_xlabel("false acceptance rate (spoof accepted, %)")
    ax.set_ylabel("false rejection rate (bona fide rejected, %)")
    ax.plot([lo, hi], [lo, hi], "k:", lw=0.8, label="FAR = FRR")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_title("DET curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    save_png(fig, path)


def plot_histograms(sets: Sequence[Trials], path: Path, thresholds: dict[str, float]) -> None:
    """Score histograms per class, one panel per set, with the set's EER threshold."""
    plt = pyplot()
    fig, axes = plt.subplots(len(sets), 1, figsize=(6, 2.7 * len(sets)), squeeze=False)
    for ax, t in zip(axes[:, 0], sets, strict=True):
        bins = np.histogram_bin_edges(t.scores, bins=60)
        nb, ns = int(t.bonafide.sum()), int((~t.bonafide).sum())
        ax.hist(t.scores[t.bonafide], bins=bins, alpha=0.6, density=True, color=BONA_COLOUR,
                label=f"bona fide ({nb})")
        ax.hist(t.scores[~t.bonafide], bins=bins, alpha=0.6, density=True, color=SPOOF_COLOUR,
                label=f"spoof ({ns})")
        ax.axvline(thresholds[t.name], color="tab:blue", ls="--", lw=1.5, label="EER threshold")
        ax.set_title(display_name(t.name), fontsize=9)
        ax.set_xlabel("score (logit, higher = bona fide)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7)
    save_png(fig, path)


def plot_tsne(emb: np.ndarray, bonafide: np.ndarray, attacks: np.ndarray, path: Path,
              *, seed: int = 0, sets: np.ndarray | None = None, total: int = 0) -> None:
    """t-SNE of embeddings (N, D), coloured by label (left) and by attack (right); ``sets``
    (N,) names each point's eval set and ``total`` the number sampled from, for the title.
    Bona fide is black in both panels; attacks (including "unknown") take the tab20 colours,
    none of which is black."""
    from sklearn.manifold import TSNE

    if emb.shape[0] < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {emb.shape[0]}")
    perplexity = float(min(30.0, (emb.shape[0] - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(emb, dtype=np.float32))
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.5))
    for mask, lab, colour in ((~bonafide, "spoof", SPOOF_COLOUR), (bonafide, "bona fide",
                                                                    BONA_COLOUR)):
        a1.scatter(xy[mask, 0], xy[mask, 1], s=4, color=colour, label=f"{lab} ({int(mask.sum())})")
    a1.set_title("by label")
    a1.legend(fontsize=7, markerscale=3)
    names = sorted(set(attacks[~bonafide].tolist()))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        m = (attacks == name) & ~bonafide
        a2.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % 20), label=f"{name} ({int(m.sum())})")
    a2.scatter(xy[bonafide, 0], xy[bonafide, 1], s=4, color=BONA_COLOUR,
               label=f"bona fide ({int(bonafide.sum())})")
    a2.set_title("by attack")
    a2.legend(fontsize=6, markerscale=3, ncol=1 + len(names) // 12, loc="center left",
              bbox_to_anchor=(1.0, 0.5))
    for ax in (a1, a2):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(tsne_title(len(emb), sets, total), fontsize=10)
    save_png(fig, path)


def tsne_title(n: int, sets: np.ndarray | None, total: int = 0) -> str:
    """'t-SNE of N eval embeddings (...); points per set: LA19 n1, ITW n2' (study order)."""
    sample = f" (a random subsample of {total})" if total > n else ""
    if sets is None:
        return f"t-SNE of {n} embeddings{sample}"
    counts = {name: int((np.asarray(sets) == name).sum()) for name in set(np.asarray(sets).tolist())}
    parts = [f"{display_name(s)} {counts[s]}" for s in ordered_sets(list(counts))]
    return f"t-SNE of {n} eval embeddings{sample}; points per set: " + ", ".join(parts)


def save_png(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as a PNG atomically, then free it."""
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    pyplot().close(fig)
