"""What evaluation leaves on disk: score files, results.json / results.md, plots.

- Score files follow the ASVspoof 2021 evaluation packages: ``trial_id score`` per line, no
  header, higher = bona fide. They are rewritten whole and atomically, never appended, so a
  rerun cannot leave stale or doubled lines.
- results.md lays the headline numbers out like the study (one row per run; columns LA19 /
  ITW / LA21 / DF21 / pooled / mean, EER in %); ``results_table`` takes several runs so a
  report over a grid of runs can reuse it.
- Plots use matplotlib's Agg backend (no display on cluster nodes): DET curves of every set,
  score histograms per class, a t-SNE picture of a subsample of eval embeddings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sccl.aggregate import Trials
from sccl.metrics import compute_det_curve
from shards.atomic import atomic_open, atomic_write_json, atomic_write_text

# Study column order; other set names follow in the order given.
STUDY_COLUMNS = ("la19", "itw", "la21", "df21")
_DISPLAY = {"la19": "LA19", "itw": "ITW", "la21": "LA21", "df21": "DF21"}


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


def results_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table, one row per (run name, results dict), EER in %, study column order."""
    names: list[str] = []
    for _, res in rows:
        names += [n for n in res["sets"] if n not in names]
    cols = ordered_sets(names)
    head = ["run", *[display_name(c) for c in cols], "pooled", "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, res in rows:
        cells = [run] + [_pct(res["sets"].get(c, {}).get("eer")) for c in cols]
        cells += [_pct(res["pooled_eer"]["eer"]), _pct(res["mean_eer"]["eer"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ci_text(ci: list[float] | None) -> str:
    return "" if ci is None else f" [{_pct(ci[0])}, {_pct(ci[1])}]"


def _breakdown_md(name: str, entry: dict) -> list[str]:
    """Per-attack (and per-condition) EER lines of one set."""
    out = [f"### {display_name(name)}", "",
           f"EER {_pct(entry['eer'])} %{_ci_text(entry.get('ci'))}; "
           f"{entry['bonafide']} bona fide / {entry['spoof']} spoof trials"
           + (f"; subset {entry['subset']}" if entry.get("subset") else ""), ""]
    tables = [(k[len("per_"):], v) for k, v in entry.items() if k.startswith("per_")]
    for what, table in tables:
        if not table:
            continue
        out += [f"| {what} | EER % | trials |", "|---|---|---|"]
        for value, e in table.items():
            n = e.get("spoof", 0) + e.get("bonafide", 0)
            out.append(f"| {value} | {_pct(e['eer'])} | {n} |")
        out.append("")
    return out


def results_markdown(run_name: str, res: dict) -> str:
    """The whole results.md of one run: headline table, CIs, breakdowns, warnings, plots."""
    level = res.get("bootstrap", {}).get("level", 0.95)
    lines = [f"# Results: {run_name}", "", results_table([(run_name, res)]),
             f"pooled = {res['pooled_eer']['definition']}; "
             f"mean = {res['mean_eer']['definition']}. EER in %, "
             f"{100 * level:.0f} % bootstrap CIs in brackets.", "",
             f"pooled {_pct(res['pooled_eer']['eer'])}{_ci_text(res['pooled_eer']['ci'])}, "
             f"mean {_pct(res['mean_eer']['eer'])}{_ci_text(res['mean_eer']['ci'])}", ""]
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # cluster nodes have no display
    import matplotlib.pyplot as plt

    return plt


def plot_det(sets: Sequence[Trials], path: Path, eers: dict[str, float]) -> None:
    """DET curves (normal-deviate axes) of every set into one PNG."""
    from scipy.stats import norm

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    clip = 1e-4  # probit of 0 or 1 is infinite
    for t in sets:
        frr, far, _ = compute_det_curve(t.scores[t.bonafide], t.scores[~t.bonafide])
        ax.plot(norm.ppf(np.clip(far, clip, 1 - clip)), norm.ppf(np.clip(frr, clip, 1 - clip)),
                label=f"{display_name(t.name)} (EER {_pct(eers[t.name])} %)")
    ticks = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95])
    ax.set_xticks(norm.ppf(ticks), [f"{100 * v:g}" for v in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{100 * v:g}" for v in ticks])
    ax.set_xlabel("false acceptance rate (spoof accepted, %)")
    ax.set_ylabel("false rejection rate (bona fide rejected, %)")
    ax.plot([-4, 4], [-4, 4], "k:", lw=0.8)
    ax.set_xlim(norm.ppf(clip), norm.ppf(1 - clip))
    ax.set_ylim(norm.ppf(clip), norm.ppf(1 - clip))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, plt, path)


def plot_histograms(sets: Sequence[Trials], path: Path, thresholds: dict[str, float]) -> None:
    """Score histograms per class, one panel per set, with the set's EER threshold."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(sets), 1, figsize=(6, 2.4 * len(sets)), squeeze=False)
    for ax, t in zip(axes[:, 0], sets, strict=True):
        bins = np.histogram_bin_edges(t.scores, bins=60)
        ax.hist(t.scores[t.bonafide], bins=bins, alpha=0.6, density=True, label="bona fide")
        ax.hist(t.scores[~t.bonafide], bins=bins, alpha=0.6, density=True, label="spoof")
        ax.axvline(thresholds[t.name], color="k", ls="--", lw=1, label="EER threshold")
        ax.set_title(display_name(t.name), fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("score (logit, higher = bona fide)")
    _save(fig, plt, path)


def plot_tsne(emb: np.ndarray, bonafide: np.ndarray, attacks: np.ndarray, path: Path,
              *, seed: int = 0) -> None:
    """t-SNE of embeddings (N, D), coloured by label (left) and by attack (right)."""
    from sklearn.manifold import TSNE

    if emb.shape[0] < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {emb.shape[0]}")
    perplexity = float(min(30.0, (emb.shape[0] - 1) / 3))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(emb, dtype=np.float32))
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 5))
    for mask, lab in ((bonafide, "bona fide"), (~bonafide, "spoof")):
        a1.scatter(xy[mask, 0], xy[mask, 1], s=4, label=lab)
    a1.set_title("by label")
    a1.legend(fontsize=7, markerscale=3)
    names = sorted(set(attacks.tolist()))
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    for i, name in enumerate(names):
        m = attacks == name
        a2.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i),
                   label="bona fide" if name in ("-", "bonafide") else name)
    a2.set_title("by attack")
    a2.legend(fontsize=6, markerscale=3, ncol=2)
    _save(fig, plt, path)


def _save(fig, plt, path: Path) -> None:
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
