"""Evaluation: score every eval set with a finished Stage 2 run; EERs, tables, plots.

    accelerate launch sccl/evaluate.py --run.dir RUN \\
        --eval.sets la19=shards/la19_eval,itw=shards/itw,la21=shards/la21,df21=shards/df21
    python -m sccl.evaluate --help                    # every option

Every rank scores its share of each set (each trial exactly once; padding rows never reach a
metric; bf16 autocast on CUDA); the main process gathers the scores, checks them against the
shard metadata (missing or duplicate trials, NaN scores and one-class sets are errors) and
writes RUN/eval/:
    scores/<set>.txt     ``trial_id score`` for every trial of the shard dir (rewritten whole)
    results.json         per-set EER (+ per attack, per codec for 2021), pooled and mean EER,
                         bootstrap CIs, min DCF, act DCF and Cllr (of LLRs: logit minus the
                         training prior log-odds, and calibrated where the run has a
                         calibration), min t-DCF tables for sets given ASV scores,
                         contamination warnings
    results.md           the study's table (LA19 / ITW / LA21 / DF21 / pooled / mean, %), the
                         detection-cost table, per-set breakdowns
    plots/det.png, plots/hist.png, plots/tsne.png
    config.yaml, run_info.json
ASVspoof 2021 sets are scored in full; ``eval.subset`` picks the trials (metadata ``subset``:
eval / progress / hidden_track, or all) that enter the EERs.

Detection costs (``sccl.dcf`` states the formulas; ``sccl.linear`` the LLR and calibration):
``--eval.asv_scores la19=PATH,la21=PATH`` names the official ASV scores of a set: the ASVspoof
2019 LA ``ASVspoof2019.LA.asv.eval.gi.trl.scores.txt`` gives the legacy 2019 min t-DCF per
attack and pooled; the ASVspoof 2021 ``keys/LA/ASV`` directory the revised min t-DCF per
attack x codec and pooled, on the ASV trials of ``eval.subset``, as the 2021 package does.
``--eval.calibrate dev`` fits the affine LLR calibration on Stage 2's dev embeddings and stores
it in RUN/stage2/calibration.json (RUN/export is rewritten to carry it); every evaluation then
reports act DCF and Cllr before and after it. Exit codes: see main().

Calls accumulate: each call adds its sets to results.json (a set scored again replaces its
earlier entry), and pooled / mean EER, CIs, breakdowns, DET curves and histograms are
recomputed over every set in it, reading the earlier sets' score files back. An earlier set
is dropped (with a note, its score file deleted) when the run's Stage 1 weights or classifier
changed since, or its shard directory or score file no longer match. ``--eval.fresh true``
starts over. The t-SNE picture shows the sets scored by the latest call (its title names
them); plots and score files that no longer belong to results.json are deleted.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from sccl.accel import build_accelerator, exit_on_stop_signals, exit_process
from sccl.aggregate import TrialError, Trials, detection_costs, min_tdcf_table, summarise
from sccl.asv import AsvScoreError, AsvScores, read_asv_scores
from sccl.checkpoint import StageClaim
from sccl.config import ConfigError, parse_config, report_input_error, report_storage_error
from sccl.contamination import contamination_report, training_sources, warn
from sccl.data import ShardDirError
from sccl.embed import (
    EmbedError,
    EmbedOptions,
    check_embed_window,
    collect,
    embed_share,
    read_shard_metadata,
)
from sccl.fileio import file_sha256
from sccl.linear import (
    CLASSIFIER,
    RunMismatchError,
    calibrate_on_dev,
    linear_scores,
    llr_map,
    load_stage2,
    stage1_data_config,
)
from sccl.logs import StagePaths, record_run
from sccl.model import ModelLoadError, SupConModel
from sccl.results import (
    ScoreFileError,
    plot_det,
    plot_histograms,
    plot_tsne,
    read_score_file,
    remove_stale,
    results_table,
    write_results,
    write_score_file,
)

Subset = Literal["eval", "progress", "hidden_track", "all"]
SUBSETS = get_args(Subset)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class EvalRunConfig:
    """Which run to evaluate."""

    dir: str = ""
    """Run directory with stage1/ and stage2/ (required); writes <dir>/eval."""


@dataclass
class EvalSetsConfig:
    """What to score and what to report."""

    sets: list[str] = field(default_factory=list)
    """Eval sets as name=SHARD_DIR (comma-separated on the command line), e.g.
    la19=shards/la19_eval,itw=shards/itw; a bare SHARD_DIR is named after its folder."""
    subset: Subset = "eval"
    """ASVspoof 2021 trials entering the EERs: eval | progress | hidden_track | all."""
    bootstrap: int = 1000
    """Replicates for the 95 % CIs (0 = none); cost: bench/bench_eval.py."""
    seed: int = 0
    """Bootstrap and t-SNE subsample seed."""
    tsne_points: int = 2000
    """Eval embeddings in the t-SNE picture (0 = no t-SNE)."""
    plots: bool = True
    """DET curves and score histograms."""
    num_workers: int = -1
    """Loader workers per rank (-1 = Stage 1's data.num_workers)."""
    fresh: bool = False
    """Forget the sets of earlier calls (by default a call adds its sets to results.json)."""
    asv_scores: list[str] = field(default_factory=list)
    """Official ASV scores for the min t-DCF of a set, as name=PATH (comma-separated), e.g.
    la19=LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.eval.gi.trl.scores.txt,
    la21=keys/LA/ASV; a set without them has no t-DCF."""
    calibrate: Literal["none", "dev"] = "none"
    """dev: fit the LLR calibration on Stage 2's dev embeddings and store it in the run
    (used by later evaluations and sccl-score); none: use the stored one, if any."""

    def __post_init__(self) -> None:
        if self.subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.bootstrap < 0 or self.tsne_points < 0:
            raise ValueError("bootstrap and tsne_points must be >= 0")


@dataclass
class EvalConfig:
    """Evaluation configuration (``python -m sccl.evaluate --help`` lists every key)."""

    run: EvalRunConfig = field(default_factory=EvalRunConfig)
    eval: EvalSetsConfig = field(default_factory=EvalSetsConfig)
    embed: EmbedOptions = field(default_factory=EmbedOptions)


def parse_sets(specs: list[str]) -> list[tuple[str, str]]:
    """[(name, shard_dir)] from ``name=DIR`` / ``DIR`` items; names unique and file-safe."""
    if not specs:
        raise ConfigError("eval.sets is required, e.g. --eval.sets la19=shards/la19_eval")
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        name, path = (name, path) if eq else (Path(spec).name, spec)
        if not _NAME.fullmatch(name):
            raise ConfigError(f"eval.sets: bad set name {name!r} in {spec!r} "
                              "(letters, digits, _ . - only)")
        if not (Path(path) / "manifest.json").is_file():
            raise ConfigError(f"eval.sets: {name}={path} is not a shard directory (manifest.json)")
        if name in [n for n, _ in out]:
            raise ConfigError(f"eval.sets: set name {name!r} given twice")
        out.append((name, path))
    return out


def parse_asv(specs: list[str], names: list[str]) -> dict[str, AsvScores]:
    """{set name: its ASV scores} from ``name=PATH`` items; each name one of ``names``."""
    out = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or name not in names:
            raise ConfigError(f"eval.asv_scores: {spec!r} must be NAME=PATH with NAME one of "
                              f"the sets scored now ({', '.join(names)})")
        out[name] = read_asv_scores(path)
    return out


def select(metas: list[dict], subset: str) -> tuple[np.ndarray, str | None]:
    """(mask (N,), subset applied or None): the 2021 subset filter; other sets are kept whole."""
    is_2021 = any(str(m.get("dataset", "")).startswith("asvspoof2021") for m in metas)
    if subset == "all" or not is_2021:
        return np.ones(len(metas), dtype=bool), ("all" if is_2021 else None)
    return np.array([m.get("subset") == subset for m in metas]), subset


def make_trials(name: str, keys: list[str], scores: np.ndarray, metas: list[dict]) -> Trials:
    """Trials of one set (every row); codec kept as a condition where the metadata has one."""
    conditions = {}
    if any("codec" in m for m in metas):
        conditions["codec"] = np.array([str(m.get("codec", "-")) for m in metas], dtype=object)
    return Trials(name, keys, scores, np.array([m.get("label") == "bonafide" for m in metas]),
                  np.array([str(m.get("attack", "-")) for m in metas], dtype=object), conditions)


def score_set(name: str, shard_dir: str, model, data_cfg, cfg: EvalConfig, weight, bias,
              accelerator, eval_dir: Path) -> tuple | None:
    """Every rank embeds its share; the main process returns (Trials of the chosen subset,
    subset name, embeddings (N, D) of those trials); None elsewhere."""
    keys, z = embed_share(model, shard_dir, data_cfg, cfg.embed, rank=accelerator.process_index,
                          world_size=accelerator.num_processes)
    if not accelerator.is_main_process:
        return None
    emb = collect(shard_dir, keys, z)
    scores = linear_scores(emb.z, weight, bias)
    mask, subset = select(emb.meta, cfg.eval.subset)
    if not mask.any():
        raise TrialError(f"set {name!r}: no trials with subset {cfg.eval.subset!r} in {shard_dir}")
    trials = make_trials(name, emb.keys, scores, emb.meta).subset(mask)
    print(f"{name}: scored {len(emb.keys)} trials of {shard_dir}"
          + (f" ({int(mask.sum())} in subset {subset})" if subset else ""), flush=True)
    return Scored(trials, subset, emb.meta, emb.keys, scores, emb.z[mask])


@dataclass
class Scored:
    """One set's scores on the main process: scored by this call, or read back."""

    trials: Trials  # the trials entering the EERs (after the subset filter)
    subset: str | None  # 2021 subset applied, None for other sets
    metas: list[dict]  # (N,) metadata of every trial of the shard dir
    keys: list[str]  # (N,) every trial, shard order: the score file's lines
    scores: object  # float64 (N,)
    z: object = None  # (M,) embeddings of the trials; None for sets read back


def previous_sets(eval_dir: Path, model_id: dict, skip: set[str]) -> tuple[dict, dict, list]:
    """Sets of earlier calls still valid for this model: ({name: Scored}, {name: entry of
    results.json}, [notes on dropped sets]). ``skip``: names scored again now."""
    path = eval_dir / "results.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        return {}, {}, [f"{path}: unreadable ({err}); earlier results dropped"]
    sets = {n: e for n, e in (old.get("sets") or {}).items() if n not in skip}
    changed = [k for k, v in model_id.items() if old.get(k) != v]
    if sets and changed:
        return {}, {}, [f"dropped earlier set(s) {', '.join(sets)}: scored by another model "
                        f"({', '.join(changed)} changed)"]
    kept, entries, notes = {}, {}, []
    for name, entry in sets.items():
        try:
            kept[name] = read_back(eval_dir, name, entry)
            entries[name] = entry
        except (OSError, ValueError, KeyError, TypeError, EmbedError, ScoreFileError) as err:
            notes.append(f"dropped earlier set {name!r}: {err}")
    return kept, entries, notes


def read_back(eval_dir: Path, name: str, entry: dict) -> Scored:
    """An earlier set from its score file and its shard directory's metadata."""
    shard_dir = entry["shard_dir"]
    if file_sha256(Path(shard_dir) / "manifest.json") != entry["manifest_sha256"]:
        raise ValueError(f"{shard_dir} changed since it was scored")
    metas = read_shard_metadata(shard_dir)[1]
    scores = read_score_file(eval_dir / entry["score_file"])
    keys = [m["utt_id"] for m in metas]
    if list(scores) != keys:
        raise ValueError(f"{entry['score_file']} does not list the trials of {shard_dir}")
    values = np.array([scores[k] for k in keys], dtype=np.float64)
    mask = select(metas, entry["subset"] or "all")[0]
    return Scored(make_trials(name, keys, values, metas).subset(mask), entry["subset"], metas,
                  keys, values)


def run_eval(cfg: EvalConfig) -> int:
    if not cfg.run.dir:
        raise ConfigError("run.dir is required (a run directory with stage1/ and stage2/)")
    run = Path(cfg.run.dir)
    sets = parse_sets(cfg.eval.sets)
    asv = parse_asv(cfg.eval.asv_scores, [n for n, _ in sets])
    meta, weight, bias, thr = load_stage2(run)  # checks Stage 2 against Stage 1 (sha256)
    data_cfg = stage1_data_config(run, workers=cfg.eval.num_workers)
    paths = StagePaths(run, "eval")
    accelerator = build_accelerator()
    # One evaluation at a time per run: a second one would merge into results.json unseen.
    claim = StageClaim(accelerator, paths, "evaluation", None)  # exits 2 if in use
    try:
        model = SupConModel.from_pretrained(run / "stage1" / meta.get("stage1_which", "best"))
        model = model.to(accelerator.device).eval().requires_grad_(False)
        check_embed_window(cfg.embed, model, data_cfg.sample_rate)  # before recording
        record_run(accelerator, cfg, paths, None, stage="evaluation")
        scored = {}
        for name, shard_dir in sets:
            scored[name] = score_set(name, shard_dir, model, data_cfg, cfg, weight, bias,
                                     accelerator, paths.dir)
        if accelerator.is_main_process:
            model_id = {"stage1_weights_sha256": meta["stage1_weights_sha256"],
                        "classifier_sha256": file_sha256(run / "stage2" / CLASSIFIER)}
            if cfg.eval.calibrate == "dev":
                calibrate(run, meta, weight, bias)
            report(cfg, run, paths.dir, dict(sets), scored, meta, thr, data_cfg, model_id, asv)
        # The other ranks wait for rank 0's report: a rank that tears its process group down
        # while a peer still holds it open can abort the job (seen with gloo).
        accelerator.wait_for_everyone()
    finally:
        claim.release()
    accelerator.end_training()
    return 0


def calibrate(run: Path, meta: dict, weight, bias) -> None:
    """Fit and store the LLR calibration; rewrite RUN/export so that it carries it."""
    from sccl.scoring import CONFIG, export_run

    cal = calibrate_on_dev(run, meta, weight, bias)
    print(f"calibration on {cal['fitted_on']['bonafide']} + {cal['fitted_on']['spoof']} dev "
          f"trials: LLR -> {cal['scale']:.4g} LLR + {cal['offset']:.4g}; dev Cllr "
          f"{cal['dev_cllr']['before']:.4f} -> {cal['dev_cllr']['after']:.4f} bits", flush=True)
    if (run / "export" / CONFIG).is_file():
        print(f"rewrote {export_run(run)} with the calibration", flush=True)


def add_costs(res: dict, everything: dict, run: Path, meta: dict, asv: dict, entries: dict
              ) -> list[str]:
    """min/act DCF and Cllr of every set, min t-DCF tables where ASV scores are given (this
    call's, or the files earlier calls used); notes on earlier ASV files now unreadable."""
    raw, cal = llr_map(run, meta)
    maps = {"": raw, **({"_calibrated": cal} if cal else {})}
    notes = []
    for name, entry in entries.items():
        path = (entry.get("min_tdcf") or {}).get("asv_scores")
        if path and name not in asv:
            try:
                asv[name] = read_asv_scores(path)
            except AsvScoreError as err:
                notes.append(f"set {name!r}: no min t-DCF: {err}")
    for name, x in everything.items():
        out = res["sets"][name]
        out.update(dataset=x.metas[0].get("dataset") if x.metas else None,
                   **detection_costs(x.trials, maps))
        if name in asv:
            subset = x.subset if x.subset not in (None, "all") else None
            out["min_tdcf"] = min_tdcf_table(x.trials, asv[name], subset)
    res["llr"] = {"prior_log_odds": -raw[1],
                  "calibration": {"scale": cal[0], "offset": cal[1]} if cal else None,
                  "definition": "LLR = logit - prior_log_odds; calibrated LLR = scale * logit "
                                "+ offset (RUN/stage2/calibration.json)"}
    return notes


def report(cfg: EvalConfig, run: Path, eval_dir: Path, sets: dict[str, str], scored: dict,
           meta: dict, thr: dict, data_cfg, model_id: dict, asv: dict) -> None:
    """Main process: merge with earlier calls' sets, metrics, contamination guard, score
    files, plots, results.json/md (written last), stale files removed; print the table."""
    old, entries, notes = ({}, {}, []) if cfg.eval.fresh else \
        previous_sets(eval_dir, model_id, set(scored))
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)
    everything = {**old, **scored}  # earlier sets first, in their order
    trials = [x.trials for x in everything.values()]
    conditions = {t.name: list(t.conditions) for t in trials if t.conditions}
    res = summarise(trials, conditions=conditions, n_boot=cfg.eval.bootstrap, seed=cfg.eval.seed)
    for name, x in scored.items():
        write_score_file(eval_dir / "scores" / f"{name}.txt", x.keys, x.scores)  # every trial
        shard_dir = Path(sets[name]).resolve()
        res["sets"][name].update(shard_dir=str(shard_dir), subset=x.subset,
                                 score_file=f"scores/{name}.txt", embed=vars(cfg.embed),
                                 manifest_sha256=file_sha256(shard_dir / "manifest.json"))
    for name, entry in entries.items():
        res["sets"][name].update({k: entry.get(k) for k in (
            "shard_dir", "subset", "score_file", "embed", "manifest_sha256")})
    for note in add_costs(res, everything, run, meta, asv, entries):
        print(f"note: {note}", file=sys.stderr, flush=True)
    sources = training_sources(data_cfg, meta)
    res["contamination"] = contamination_report({n: x.metas for n, x in everything.items()},
                                                sources)
    warn(res["contamination"])
    res.update(run=run.name, run_dir=str(run.resolve()), **model_id,
               dev_threshold=thr["threshold"], dev_eer=thr["dev_eer"])
    res["plots"] = make_plots(cfg, eval_dir, trials, res,
                              {n: x.z for n, x in scored.items()})
    json_path, md_path = write_results(eval_dir, run.name, res)
    removed = remove_stale(eval_dir, res)
    print("\n" + results_table([(run.name, res)]))
    print(f"pooled = {res['pooled_eer']['definition']}; mean = {res['mean_eer']['definition']}"
          + (f"; sets from earlier calls: {', '.join(old)}" if old else ""))
    print(f"wrote {json_path}, {md_path}, scores/ and plots/ in {eval_dir}"
          + (f"; removed stale {', '.join(removed)}" if removed else ""), flush=True)


def make_plots(cfg: EvalConfig, eval_dir: Path, trials: list[Trials], res: dict,
               embs: dict[str, np.ndarray]) -> dict[str, str]:
    """DET curves and histograms of every set; t-SNE of the sets scored now (``embs``)."""
    out: dict[str, str] = {}
    plots = eval_dir / "plots"
    if cfg.eval.plots:
        plot_det(trials, plots / "det.png", res["sets"])
        plot_histograms(trials, plots / "hist.png",
                        {n: s["threshold"] for n, s in res["sets"].items()})
        out.update(det="plots/det.png", histograms="plots/hist.png")
    if cfg.eval.tsne_points:
        now = [t for t in trials if t.name in embs]
        z, bona, attack, where = tsne_sample(now, embs, cfg.eval.tsne_points, cfg.eval.seed)
        if len(z) >= 5:
            plot_tsne(z, bona, attack, plots / "tsne.png", seed=cfg.eval.seed, sets=where,
                      total=sum(len(t.keys) for t in now))
            out["tsne"] = "plots/tsne.png"
    return out


def tsne_sample(trials: list[Trials], embs: dict[str, np.ndarray], n: int, seed: int):
    """A seeded random subsample of at most ``n`` eval embeddings over all sets -> (z (M, D),
    bona fide (M,), attack (M,), set name (M,)). Attack names are shared across sets
    (LA21/DF21 reuse the LA19 eval systems), so they are not prefixed with the set's name."""
    z = np.concatenate([embs[t.name] for t in trials])
    bona = np.concatenate([t.bonafide for t in trials])
    attack = np.concatenate([np.where(t.bonafide, "bona fide", t.attacks.astype(str))
                             for t in trials])
    where = np.concatenate([np.full(len(t.keys), t.name, dtype=object) for t in trials])
    pick = np.random.default_rng(seed).permutation(len(z))[:n]
    return z[pick], bona[pick], attack[pick], where[pick]


def main(argv: list[str] | None = None) -> int:
    """Entry point; the exit code: 0 done; 2 bad input (config, run directory, shards, score
    files) or storage that fails (the run directory's disk full, over quota, read-only,
    forbidden), in one line ``error: ...`` naming the file or key (the path and the cause for
    storage; rank k > 0 of a launch writes ``error (rank k): ...``); 128 + the signal when
    SIGTERM / SIGUSR1 stopped it. Anything else raises, with its traceback (exit 1)."""
    cfg = None
    try:
        cfg = parse_config(EvalConfig, argv, prog="python -m sccl.evaluate")
        with exit_on_stop_signals():  # a stop unwinds: the stage lock is released
            return run_eval(cfg)
    except (ConfigError, ModelLoadError, RunMismatchError, EmbedError, ShardDirError,
            TrialError, ScoreFileError, AsvScoreError) as e:
        return report_input_error(e)
    except OSError as e:  # a full disk, a quota, a read-only run directory
        return report_storage_error(e, cfg.run.dir if cfg else None)


if __name__ == "__main__":
    exit_process(main())
