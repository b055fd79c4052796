"""Evaluation: EER aggregation (per set / attack / condition, pooled vs mean, CIs), score files,
the results table, the contamination guard, the evaluation stage end to end with its clear
errors, and a 2-process run that must score every trial exactly once."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sccl.aggregate import (
    TrialError,
    Trials,
    bootstrap_cis,
    per_attack_eer,
    per_condition_eer,
    pooled_eer,
    summarise,
)
from sccl.contamination import contamination_report
from sccl.embed import read_shard_metadata
from sccl.evaluate import main as eval_main
from sccl.evaluate import select
from sccl.metrics import class_counts, compute_eer, replicate_eer, walk_eer, walk_order
from sccl.results import read_score_file, results_table, write_score_file
from sccl.train_linear import main as stage2_main
from tests.eval_fixtures import (
    LA19_ASV,
    LA21_ASV,
    ROOT,
    STAGE2_ARGS,
    accelerate_launch,
    corpus_sets,
    make_sets,
    make_stage1_run,
)

DIST_SCRIPT = ROOT / "tests" / "dist_scripts" / "dist_eval_check.py"


def _trials(name, bona, spoof, attacks=None, **conditions):
    n = len(bona) + len(spoof)
    attacks = ["-"] * len(bona) + list(attacks or ["A01"] * len(spoof))
    return Trials(name, [f"{name}_{i}" for i in range(n)], np.r_[bona, spoof],
                  np.r_[np.ones(len(bona), bool), np.zeros(len(spoof), bool)],
                  np.array(attacks, dtype=object),
                  {k: np.array(v, dtype=object) for k, v in conditions.items()})


def test_pooled_and_mean_differ_and_match_definitions():
    # Each set alone is perfectly separated, but at different score offsets: pooled > 0.
    a = _trials("a", [1.0, 1.1, 1.2], [0.0, 0.1, 0.2, 0.3])
    b = _trials("b", [11.0, 11.1], [10.0, 10.1, 10.2])
    bona = np.r_[a.scores[a.bonafide], b.scores[b.bonafide]]
    spoof = np.r_[a.scores[~a.bonafide], b.scores[~b.bonafide]]
    assert pooled_eer([a, b]) == compute_eer(bona, spoof)[0] > 0.0
    res = summarise([a, b], n_boot=0)
    assert res["mean_eer"]["eer"] == 0.0 and res["pooled_eer"]["eer"] == pooled_eer([a, b])
    assert "concatenated" in res["pooled_eer"]["definition"]
    assert "mean" in res["mean_eer"]["definition"]


def test_per_attack_uses_all_bona_fide():
    t = _trials("s", [2.0, 3.0, 4.0], [0.0, 1.0, 3.5, 5.0], attacks=["A1", "A1", "A2", "A2"])
    out = per_attack_eer(t)
    assert out["A1"] == {"eer": 0.0, "spoof": 2}
    bona = np.array([2.0, 3.0, 4.0])
    assert out["A2"]["eer"] == compute_eer(bona, np.array([3.5, 5.0]))[0] > 0.0


def test_per_condition_breakdown_and_one_class_value():
    t = _trials("s", [2.0, 3.0], [0.0, 3.5, 1.0], codec=["alaw", "none", "alaw", "none", "gsm"])
    out = per_condition_eer(t, "codec")
    assert out["alaw"]["eer"] == 0.0 and out["none"]["eer"] == 1.0
    assert out["gsm"] == {"eer": None, "bonafide": 0, "spoof": 1}


def test_trial_errors():
    with pytest.raises(TrialError, match="only spoof"):
        summarise([_trials("x", [], [0.0, 1.0])], n_boot=0)
    with pytest.raises(TrialError, match="non-finite"):
        summarise([_trials("x", [np.nan], [0.0])], n_boot=0)
    with pytest.raises(TrialError, match="duplicate set names"):
        summarise([_trials("x", [1.0], [0.0]), _trials("x", [1.0], [0.0])], n_boot=0)


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_walk_equals_compute_eer_on_the_resample(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    scores = rng.integers(0, 6, n).astype(float)  # many ties, across classes too
    bona = rng.random(n) < 0.4
    bona[:2] = [True, False]
    order = walk_order(scores, bona)
    assert walk_eer(bona[order])[0] == compute_eer(scores[bona], scores[~bona])[0]
    counts = class_counts(bona, rng)
    resampled = np.repeat(np.arange(n), counts)  # the explicit resample, in any order
    expect = compute_eer(scores[resampled][bona[resampled]], scores[resampled][~bona[resampled]])
    assert replicate_eer(bona[order], counts[order]) == expect[0]


def test_bootstrap_reproducible_and_brackets_estimate():
    rng = np.random.default_rng(0)
    sets = [_trials(n, rng.normal(1, 1, 40), rng.normal(0, 1, 60)) for n in ("a", "b")]
    c1, c2 = (bootstrap_cis(sets, n_boot=50, seed=3) for _ in range(2))
    assert c1 == c2
    assert c1 != bootstrap_cis(sets, n_boot=50, seed=4)
    res = summarise(sets, n_boot=50, seed=3)
    for key in ("pooled_eer", "mean_eer"):
        lo, hi = res[key]["ci"]
        assert lo <= res[key]["eer"] <= hi


def test_score_file_format_roundtrip_and_overwrite(tmp_path):
    path = tmp_path / "scores" / "la19.txt"
    scores = np.array([0.1, -2.5e-9, 3.0, 1 / 3])
    write_score_file(path, ["a", "b", "c", "d"], scores)
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and all(re.fullmatch(r"\S+ \S+", x) for x in lines)
    assert list(read_score_file(path).values()) == scores.tolist()  # exact round trip
    write_score_file(path, ["z"], np.array([1.0]))  # rewritten whole, never appended
    assert path.read_text() == "z 1.0\n"
    with pytest.raises(ValueError, match="whitespace"):
        write_score_file(path, ["a b"], np.array([1.0]))
    assert path.read_text() == "z 1.0\n"  # a failed write leaves the old file


def test_results_table_study_layout():
    def res(**eers):
        return {"sets": {k: {"eer": v} for k, v in eers.items()},
                "pooled_eer": {"eer": 0.05}, "mean_eer": {"eer": 0.0625}}

    table = results_table([("r1", res(df21=0.1, extra=0.2, la19=0.01, itw=0.08)),
                           ("r2", res(la21=0.03))])
    head, _, row1, row2 = table.splitlines()
    assert head == "| run | LA19 | ITW | LA21 | DF21 | extra | pooled | mean |"
    assert row1 == "| r1 | 1.00 | 8.00 | — | 10.00 | 20.00 | 5.00 | 6.25 |"
    assert row2.startswith("| r2 | — | — | 3.00 |")


def test_contamination_report_ids_and_hashes():
    train = [{"utt_id": "T1", "sha256": "h1"}, {"utt_id": "T2", "sha256": "h2"}]
    ev = {"clean": [{"utt_id": "E1", "sha256": "e1"}],
          "same_id": [{"utt_id": "T1", "sha256": "x"}],
          "same_audio": [{"utt_id": "E2", "sha256": "h2"}]}
    found = contamination_report(ev, {"Stage 1 train d": train, "Stage 1 dev gone": "missing"})
    by_set = {f["set"]: f for f in found}
    assert set(by_set) == {None, "same_id", "same_audio"}
    assert by_set["same_id"]["shared_utt_ids"] == 1 and by_set["same_id"]["shared_hashes"] == 0
    assert by_set["same_audio"]["shared_hashes"] == 1 and by_set["same_audio"]["examples"] == ["E2"]
    assert "could not check" in by_set[None]["message"]


def test_subset_selection_only_for_2021():
    metas = [{"dataset": "asvspoof2021_la", "subset": s} for s in ("eval", "progress", "eval")]
    mask, name = select(metas, "eval")
    assert mask.tolist() == [True, False, True] and name == "eval"
    assert select(metas, "all")[0].all()
    assert select([{"dataset": "itw", "subset": "eval"}], "progress") == (np.array([True]), None)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    sets = make_sets(root / "shards")
    run = make_stage1_run(root / "run", sets["train"], sets["dev"])
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS, "--run.export", "false"]) == 0
    return run, sets


def _eval_args(run, spec, *extra):
    return ["--run.dir", str(run), "--eval.sets", spec, "--embed.seconds", "1",
            "--embed.batch_size", "3", "--eval.bootstrap", "20", "--eval.tsne_points", "30",
            *extra]


def test_evaluate_end_to_end(trained, capsys):
    run, sets = trained
    spec = f"a={sets['evalA']},b={sets['evalB']},{sets['evalC']}"
    assert eval_main(_eval_args(run, spec)) == 0
    out = capsys.readouterr().out
    assert "| run | a | b | evalC | pooled | mean |" in out
    res = json.loads((run / "eval" / "results.json").read_text())
    assert list(res["sets"]) == ["a", "b", "evalC"] and res["contamination"] == []
    mean = np.mean([s["eer"] for s in res["sets"].values()])
    assert res["mean_eer"]["eer"] == pytest.approx(mean)
    for name, d in (("a", "evalA"), ("b", "evalB"), ("evalC", "evalC")):
        scores = read_score_file(run / "eval" / "scores" / f"{name}.txt")
        keys = [m["utt_id"] for m in read_shard_metadata(sets[d])[1]]
        assert list(scores) == keys  # every trial once, in shard order
        bona = [scores[k] for k in keys if "_bona_" in k]
        spoof = [scores[k] for k in keys if "_spoof_" in k]
        assert res["sets"][name]["eer"] == compute_eer(bona, spoof)[0]
    for plot in ("det", "histograms", "tsne"):
        assert (run / "eval" / res["plots"][plot]).stat().st_size > 1000
    md = (run / "eval" / "results.md").read_text()
    assert "| run | a | b | evalC | pooled | mean |" in md and "A07" in md


def test_evaluate_warns_about_contamination(trained, capsys):
    run, sets = trained
    args = _eval_args(run, f"a={sets['evalA']},leak={sets['dev']}", "--eval.tsne_points", "0",
                      "--eval.plots", "false", "--embed.crop", "windows", "--embed.seconds", "0.1")
    assert eval_main(args) == 0  # (windows of 0.1 s: the clips last 0.15-0.4 s)
    assert "WARNING (contamination)" in capsys.readouterr().err
    res = json.loads((run / "eval" / "results.json").read_text())
    (finding,) = res["contamination"]
    assert finding["set"] == "leak" and finding["shared_utt_ids"] == 10
    assert finding["shared_hashes"] == 10 and "Stage 1 dev" in finding["source"]
    assert "WARNING (contamination)" in (run / "eval" / "results.md").read_text()


def _duplicate_trials(src, dst):
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    first = dict(manifest["shards"][0], name="evalB-000009.tar")
    shutil.copy(dst / manifest["shards"][0]["name"], dst / first["name"])
    manifest["shards"].append(first)
    manifest["num_samples"] += first["num_samples"]
    counts = json.loads((dst / "manifest.json").read_text())["counts"]
    for meta in read_shard_metadata(src)[1][: first["num_samples"]]:
        counts[meta["label"]] += 1
    manifest["counts"] = counts
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_evaluate_clear_errors(trained, tmp_path, capsys):
    run, sets = trained
    from tests.data_fixtures import write_shards

    cases = {
        "is not a shard directory": f"a={tmp_path / 'none'}",
        "given twice": f"a={sets['evalA']},a={sets['evalB']}",
        "only spoof": "x=" + str(write_shards(tmp_path / "onlyspoof", n_bonafide=0, n_spoof=4,
                                              split_by_label=False, n_shards=1,
                                              seconds=(0.15, 0.2)) and tmp_path / "onlyspoof"),
        "not scored": "x=" + str(write_shards(tmp_path / "corrupt", n_bonafide=2, n_spoof=2,
                                              split_by_label=False, n_shards=1, split="c",
                                              seconds=(0.15, 0.2), corrupt=("c_bona_0000",))
                                 and tmp_path / "corrupt"),
        "duplicate trial": f"x={_duplicate_trials(sets['evalB'], tmp_path / 'dup')}",
    }
    for message, spec in cases.items():
        args = _eval_args(run, spec, "--eval.plots", "false", "--eval.tsne_points", "0")
        assert eval_main(args) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") or "\nerror: " in err, (message, err)
        assert message in err, (message, err)


def test_evaluate_nan_scores_and_stage_mismatch(trained, tmp_path, capsys):
    run, sets = trained
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    clf = bad / "stage2" / "classifier.safetensors"
    state = load_file(clf)
    save_file({"weight": state["weight"], "bias": torch.tensor([float("nan")])}, clf,
              metadata={"format": "pt"})
    assert eval_main(_eval_args(bad, f"a={sets['evalA']}", "--eval.plots", "false")) == 2
    assert "non-finite score" in capsys.readouterr().err
    make_stage1_run(bad, sets["train"], sets["dev"], seed=5)  # Stage 1 replaced
    assert eval_main(_eval_args(bad, f"a={sets['evalA']}")) == 2
    assert "does not match its Stage 1" in capsys.readouterr().err


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_evaluation_scores_every_trial_once(trained, tmp_path):
    run, sets = trained
    spec = f"a={sets['evalA']},b={sets['evalB']},c={sets['evalC']}"
    assert eval_main(_eval_args(run, spec, "--eval.plots", "false",
                                "--eval.tsne_points", "0")) == 0
    single = {n: read_score_file(run / "eval" / "scores" / f"{n}.txt") for n in "abc"}
    proc = accelerate_launch(DIST_SCRIPT, [str(run), spec, str(tmp_path / "report.json")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2
    for n in "abc":
        scores = read_score_file(run / "eval" / "scores" / f"{n}.txt")
        assert list(scores) == list(single[n])  # same trials, each once, same order
        np.testing.assert_allclose(list(scores.values()), list(single[n].values()), atol=1e-4)
        # both ranks scored real (valid) trials, and the shares add up to the set exactly
        shares = report["shares"][n]
        assert sum(shares) == len(single[n]) and min(shares) > 0
    assert sum(report["padding"]["b"]) > 0  # 7 trials, 3 + 4 per rank: one padded batch


@pytest.mark.slow  # four evaluations and a Stage 2 (about 25 s on a loaded 2-core machine)
def test_second_call_adds_its_sets_and_removes_stale_files(trained, tmp_path, capsys):
    run = shutil.copytree(trained[0], tmp_path / "run")
    sets = trained[1]
    ev = run / "eval"
    assert eval_main(_eval_args(run, f"a={sets['evalA']},b={sets['evalB']}",
                                "--eval.fresh", "true")) == 0
    first = json.loads((ev / "results.json").read_text())
    assert (ev / "plots" / "tsne.png").is_file()
    (ev / "scores" / "orphan.txt").write_text("x 1.0\n")  # left by an interrupted call
    assert eval_main(_eval_args(run, f"c={sets['evalC']}", "--eval.tsne_points", "0")) == 0
    merged = json.loads((ev / "results.json").read_text())
    assert list(merged["sets"]) == ["a", "b", "c"]
    assert merged["sets"]["a"]["eer"] == first["sets"]["a"]["eer"]
    assert "tsne" not in merged["plots"] and not (ev / "plots" / "tsne.png").exists()
    assert not (ev / "scores" / "orphan.txt").exists()
    assert "removed stale plots/tsne.png, scores/orphan.txt" in capsys.readouterr().out
    md = (ev / "results.md").read_text()
    assert all(f"### {n}" in md for n in "abc")
    # the merged numbers are those of one call scoring all three sets
    assert eval_main(_eval_args(run, f"a={sets['evalA']},b={sets['evalB']},c={sets['evalC']}",
                                "--eval.fresh", "true", "--eval.tsne_points", "0")) == 0
    once = json.loads((ev / "results.json").read_text())
    for key in ("pooled_eer", "mean_eer"):
        assert merged[key] == once[key]
    assert {n: s["eer"] for n, s in merged["sets"].items()} == \
        {n: s["eer"] for n, s in once["sets"].items()}
    # a new classifier: earlier sets were scored by another model and are dropped; plots
    # switched off: the old ones no longer describe the results
    capsys.readouterr()
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS, "--run.export", "false",
                        "--linear.seed", "7", "--run.allow_config_change", "true"]) == 0
    assert eval_main(_eval_args(run, f"c={sets['evalC']}", "--eval.plots", "false",
                                "--eval.tsne_points", "0")) == 0
    assert list(json.loads((ev / "results.json").read_text())["sets"]) == ["c"]
    assert "dropped earlier set(s) a, b" in capsys.readouterr().err
    assert sorted(p.name for p in (ev / "scores").iterdir()) == ["c.txt"]
    assert not (ev / "plots" / "det.png").exists() and not (ev / "plots" / "hist.png").exists()


def _res_with_breakdowns(bootstrap=20):
    t = _trials("la21", [2.0, 3.0, 1.0], [0.0, 3.5, 1.5, 0.5], attacks=["A07", "A07", "A08", "A08"],
                codec=["alaw", "alaw", "none", "alaw", "none", "none", "none"])
    itw = _trials("itw", [1.0, 2.0], [0.0, 1.5], attacks=["unknown", "unknown"])
    return summarise([t, itw], conditions={"la21": ["codec"]}, n_boot=bootstrap)


def test_results_markdown_counts_small_groups_and_cis():
    from sccl.results import results_markdown

    md = results_markdown("r", _res_with_breakdowns())
    head, _, row = md.splitlines()[2:5]
    assert head == "| run | ITW | LA21 | pooled | mean |"
    assert all(re.search(r"\d \[\d+\.\d\d, \d+\.\d\d\]", c) for c in row.split("|")[2:-1])
    assert "bootstrap CIs in brackets" in md
    la21 = md.split("### LA21")[1].split("###")[0]
    assert "| attack | EER % | bona fide | spoof | note |" in la21
    assert "| A07 | 58.33 | 3 | 2 | small |" in la21  # every attack against all 3 bona fide
    assert "| codec | EER % | bona fide | spoof | note |" in la21
    assert "| alaw | " in la21 and "| 2 | 1 | small |" in la21  # codec rows: their own counts
    assert "fewer than 30 trials" in la21
    assert "| attack |" not in md.split("### ITW")[1].split("###")[0]  # one group: no table
    no_ci = results_markdown("r", _res_with_breakdowns(bootstrap=0))
    assert "in brackets" not in no_ci and "No bootstrap CIs" in no_ci


def _figures(monkeypatch):
    import sccl.results as results

    figs = []
    monkeypatch.setattr(results, "save_png", lambda fig, path: figs.append(fig))
    return results, figs


def test_plots_ticks_labels_titles_and_colours(monkeypatch, tmp_path):
    from matplotlib.colors import to_rgb

    results, figs = _figures(monkeypatch)
    rng = np.random.default_rng(0)
    sets = [_trials(n, rng.normal(1, 1, 30), rng.normal(0, 1, 40)) for n in ("la19", "itw")]
    results.plot_det(sets, tmp_path / "det.png", {"la19": {"eer": 0.1, "min_dcf": 0.25},
                                                   "itw": {"eer": 0.2}})
    ax = figs[-1].axes[0]
    ticks, (lo, hi) = ax.get_xticks(), ax.get_xlim()
    assert ticks.min() <= lo + 1e-9 and ticks.max() >= hi - 1e-9  # ticks span the axis
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "99.9"
    results.plot_histograms(sets, tmp_path / "hist.png", {"la19": 0.5, "itw": 0.5})
    for ax in figs[-1].axes:
        assert ax.get_xlabel() and ax.get_ylabel() == "density"
    n = 40
    bona = np.arange(n) < 10
    attacks = np.where(bona, "bona fide", np.where(np.arange(n) < 25, "unknown", "A07"))
    where = np.where(np.arange(n) % 2 == 0, "la19", "itw")
    results.plot_tsne(rng.normal(size=(n, 8)), bona, attacks, tmp_path / "t.png", sets=where,
                      total=100)
    fig = figs[-1]
    assert fig._suptitle.get_text() == "t-SNE of 40 eval embeddings (a random subsample of " \
        "100); points per set: LA19 20, ITW 20"
    colours = {c.get_label().split(" (")[0]: to_rgb(c.get_facecolor()[0])
               for c in fig.axes[1].collections}
    assert set(colours) == {"bona fide", "unknown", "A07"}
    distance = np.abs(np.subtract(colours["bona fide"], colours["unknown"])).sum()
    assert distance > 0.6, colours


def test_second_evaluation_of_a_run_at_once_exits_2(trained, capsys):
    from sccl.lock import DirLock

    run, sets = trained
    with DirLock(run / "eval", what="evaluation"):  # a live holder: this process
        assert eval_main(_eval_args(run, f"a={sets['evalA']}", "--eval.plots", "false")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is in use" in err and "held by pid" in err


def test_evaluation_of_a_read_only_run_exits_2_with_one_line(trained, capsys):
    from tests.mounts import read_only

    run, sets = trained
    with read_only(run):
        code = eval_main(_eval_args(run, f"a={sets['evalA']}", "--eval.plots", "false"))
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith(f"error: {run}") and "read-only file system" in errors[0], err


# ------------------------------------------------------------------- detection costs


def _asv_2021(tmp_path):
    """A keys/LA/ASV directory: per codec (alaw, none) targets, nontargets and A07/A08 spoofs."""
    rng = np.random.default_rng(0)
    scores, meta = [], []
    for i in range(60):
        codec, key = ("alaw", "none")[i % 2], ("target", "nontarget", "spoof")[i % 3]
        attack = "bonafide" if key != "spoof" else ("A07", "A08")[(i // 6) % 2]
        mean = {"target": 2.0, "nontarget": -2.0, "spoof": 0.5 if attack == "A07" else -0.5}
        scores.append(f"LA_0001 T{i} {rng.normal(mean[key], 1.0):.4f}")
        meta.append(f"LA_0001 T{i} {codec} - {attack} {key} notrim {('eval', 'progress')[i % 5 == 0]}")
    d = tmp_path / "keys" / "LA" / "ASV"
    (d / "ASVTorch_Kaldi").mkdir(parents=True)
    (d / "ASVTorch_Kaldi" / "score.txt").write_text("\n".join(scores) + "\n")
    (d / "trial_metadata.txt").write_text("\n".join(meta) + "\n")
    return d


def test_min_tdcf_table_selects_trials_like_the_2021_package(tmp_path):
    from sccl.aggregate import min_tdcf_table
    from sccl.asv import read_asv_scores
    from sccl.dcf import min_tdcf

    rng = np.random.default_rng(1)
    t = _trials("la21", rng.normal(1, 1, 12), rng.normal(-1, 1, 16),
                attacks=["A07", "A07", "A08", "A08"] * 4, codec=["alaw", "none"] * 14)
    asv = read_asv_scores(_asv_2021(tmp_path))
    res = min_tdcf_table(t, asv, "eval")
    assert res["formulation"] == "ASVspoof 2021 (revised)"
    assert list(res["table"]) == ["A07", "A08", "Pooled"]
    assert list(res["table"]["A07"]) == ["alaw", "none", "Pooled"]
    # the package's selection, written out: an attack picks spoof trials only (CM and ASV),
    # a codec every trial, the subset every ASV trial
    keep = asv.subsets == "eval"
    for attack in ("A07", "A08", "Pooled"):
        for codec in ("alaw", "none", "Pooled"):
            in_c = np.ones(len(t.keys), bool) if codec == "Pooled" else t.conditions["codec"] == codec
            a_in_c = keep & ((asv.codecs == codec) if codec != "Pooled" else True)
            spoof_asv = a_in_c & (asv.keys == "spoof") & (
                (asv.attacks == attack) if attack != "Pooled" else True)
            is_a = (t.attacks == attack) if attack != "Pooled" else True
            expect = min_tdcf(t.scores[t.bonafide & in_c], t.scores[~t.bonafide & is_a & in_c],
                              asv.scores[a_in_c & (asv.keys == "target")],
                              asv.scores[a_in_c & (asv.keys == "nontarget")], asv.scores[spoof_asv])
            assert res["table"][attack][codec] == expect, (attack, codec)  # all defined here
    assert res["pooled"] == res["table"]["Pooled"]["Pooled"]
    la19 = tmp_path / "asv19.txt"
    la19.write_text("".join(f"{k} {v}\n" for k, v in (
        ("bonafide target", 2.1), ("bonafide target", 1.5), ("bonafide nontarget", -1.0),
        ("bonafide nontarget", -2.2), ("A07 spoof", 0.4), ("A08 spoof", -0.3))))
    legacy = min_tdcf_table(t, read_asv_scores(la19), None)
    assert list(legacy["table"]["A07"]) == ["Pooled"] and "legacy" in legacy["formulation"]
    assert legacy["pooled"] == min_tdcf(t.scores[t.bonafide], t.scores[~t.bonafide],
                                        [2.1, 1.5], [-1.0, -2.2], [0.4, -0.3], legacy=True)
    assert legacy["table"]["A08"]["Pooled"] == min_tdcf(
        t.scores[t.bonafide], t.scores[~t.bonafide & (t.attacks == "A08")], [2.1, 1.5],
        [-1.0, -2.2], [-0.3], legacy=True)


@pytest.mark.slow  # the tiny synthetic corpus, three shard sets, Stage 2 and one evaluation
def test_evaluate_min_tdcf_costs_and_calibration_on_the_synthetic_corpus(trained, tmp_path,
                                                                          capsys):
    from sccl.asv import read_asv_scores
    from sccl.dcf import act_dcf, cllr, min_dcf, min_tdcf

    run = shutil.copytree(trained[0], tmp_path / "run")
    corpus, sets = corpus_sets(tmp_path / "data", ["la19", "la21", "as5"])
    spec = ",".join(f"{n}={d}" for n, d in sets.items())
    asv = f"la19={corpus / LA19_ASV},la21={corpus / LA21_ASV}"
    assert eval_main(_eval_args(run, spec, "--eval.asv_scores", asv, "--eval.subset", "all",
                                "--eval.calibrate", "dev", "--eval.tsne_points", "0")) == 0
    out = capsys.readouterr().out
    assert "dev Cllr" in out
    res = json.loads((run / "eval" / "results.json").read_text())
    cal = json.loads((run / "stage2" / "calibration.json").read_text())
    a, b = cal["scale"], cal["offset"] - cal["scale"] * cal["prior_log_odds"]
    for name in sets:
        e = res["sets"][name]
        metas = read_shard_metadata(sets[name])[1]
        scores = read_score_file(run / "eval" / "scores" / f"{name}.txt")
        bona = np.array([scores[m["utt_id"]] for m in metas if m["label"] == "bonafide"])
        spoof = np.array([scores[m["utt_id"]] for m in metas if m["label"] == "spoof"])
        assert e["min_dcf"] == min_dcf(bona, spoof)
        assert e["cllr"] == pytest.approx(cllr(bona - cal["prior_log_odds"],
                                               spoof - cal["prior_log_odds"]))
        assert e["act_dcf_calibrated"] == act_dcf(a * bona + b, a * spoof + b)
        assert e["cllr_calibrated"] == pytest.approx(cllr(a * bona + b, a * spoof + b))
        assert e["dataset"] == metas[0]["dataset"]
        if name == "as5":
            assert "min_tdcf" not in e  # no ASV scores given: no t-DCF
            continue
        tar, non, sp = read_asv_scores(corpus / (LA19_ASV if name == "la19" else LA21_ASV)
                                       ).trials()
        assert e["min_tdcf"]["pooled"] == min_tdcf(bona, spoof, tar, non, sp,
                                                   legacy=name == "la19")
    assert len(res["sets"]["la21"]["min_tdcf"]["table"]["Pooled"]) > 2  # codec columns
    md = (run / "eval" / "results.md").read_text()
    assert "## Detection costs" in md and "| set | EER % | minDCF | actDCF | Cllr | " in md
    assert "min t-DCF, ASVspoof 2019 (legacy)" in md and "ASVspoof 2021 (revised)" in md


@pytest.mark.slow  # build -> Stage 1 (2 tiny epochs) -> Stage 2 -> evaluation, about 20 s
def test_asvspoof5_end_to_end(tmp_path):
    import subprocess
    import sys

    _, train = corpus_sets(tmp_path / "data", ["as5_train", "as5_dev"], split_by_label=True)
    _, evals = corpus_sets(tmp_path / "data", ["as5"])
    run = tmp_path / "run"
    cfg = tmp_path / "stage1.json"
    cfg.write_text(json.dumps({
        "data": {"train_shards": str(train["as5_train"]), "dev_shards": str(train["as5_dev"]),
                 "crop_seconds": 1.0, "batch_size": 2, "num_workers": 0, "shuffle_buffer": 8,
                 "rawboost": False},
        "model": {"encoder": "tiny", "proj_dim": 16}, "optim": {"epochs": 2},
        "run": {"progress": False, "tensorboard": False}}))
    proc = subprocess.run([sys.executable, "-m", "sccl.train_supcon", "--config", str(cfg),
                           "--run.dir", str(run)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1",
                                            "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert stage2_main(["--run.dir", str(run), *STAGE2_ARGS]) == 0
    assert eval_main(_eval_args(run, f"as5={evals['as5']}", "--eval.tsne_points", "0",
                                "--eval.calibrate", "dev")) == 0
    res = json.loads((run / "eval" / "results.json").read_text())
    e = res["sets"]["as5"]
    assert e["dataset"] == "asvspoof5" and "per_codec" in e and len(e["per_attack"]) > 1
    for key in ("eer", "min_dcf", "act_dcf", "cllr", "act_dcf_calibrated", "cllr_calibrated"):
        assert np.isfinite(e[key]), key
    md = (run / "eval" / "results.md").read_text()
    assert re.search(r"\| AS5 \| \d+\.\d\d \| \d\.\d{4} \| \d+\.\d{4} \| \d+\.\d{4} \|", md)
