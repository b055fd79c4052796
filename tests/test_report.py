"""sccl-report on fabricated runs: grouping, mean/std over seeds, Markdown/CSV, the plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sccl import report

SEEDS = (42, 1337, 2024)
# (similarity, temperature, queue size, queue start epoch) -> ITW EER per seed (fractions)
CONFIGS = {
    ("cosine", 0.3, 4096, 6): (0.080, 0.085, 0.090),
    ("angular", 0.07, 0, 1): (0.087, 0.095, 0.103),
}


def make_run(root: Path, name: str, sim: str, temp: float, q: int, start: int, seed: int,
             itw: float, *, extra: dict | None = None, results: bool = True) -> Path:
    run = root / name
    (run / "stage1").mkdir(parents=True)
    cfg = {"data": {"seed": seed, "batch_size": 32, **(extra or {})},
           "loss": {"similarity": sim, "temperature": temp, "queue_size": q,
                    "queue_start_epoch": start},
           "run": {"dir": str(run), "seed": seed}}
    (run / "stage1" / "config.yaml").write_text("# sccl Stage 1 config; git x\n"
                                                + yaml.safe_dump(cfg))
    if results:
        sets = {"la19": {"eer": itw / 10}, "itw": {"eer": itw}}
        res = {"sets": sets, "pooled_eer": {"eer": itw / 2}, "mean_eer": {"eer": itw * 0.55}}
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(json.dumps(res))
    return run


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    root = tmp_path / "study runs"  # a space in the path on purpose
    for (sim, temp, q, start), eers in CONFIGS.items():
        for seed, itw in zip(SEEDS, eers, strict=True):
            make_run(root, f"{sim}-q{q}-d{start}-s{seed}", sim, temp, q, start, seed, itw)
    return root


def test_mean_std_markdown_csv_plot(grid: Path, capsys):
    assert report.main([str(grid)]) == 0
    rows = list(csv.DictReader((grid / "report.csv").open()))
    assert [(r["similarity"], r["queue_size"]) for r in rows] == [("cosine", "4096"),
                                                                  ("angular", "0")]
    for row, ((sim, temp, q, start), eers) in zip(rows, CONFIGS.items(), strict=True):
        assert (row["similarity"], int(row["queue_size"])) == (sim, q)
        assert row["n_runs"] == "3" and row["seeds"] == "42 1337 2024"
        assert float(row["temperature"]) == temp and int(row["queue_start_epoch"]) == start
        assert float(row["itw_mean_pct"]) == pytest.approx(100 * np.mean(eers))
        assert float(row["itw_std_pct"]) == pytest.approx(100 * np.std(eers, ddof=1))
        assert float(row["la19_mean_pct"]) == pytest.approx(10 * np.mean(eers))
        assert float(row["pooled_mean_pct"]) == pytest.approx(50 * np.mean(eers))
        assert float(row["mean_mean_pct"]) == pytest.approx(55 * np.mean(eers))
    assert rows[0]["delayed"] == "1" and rows[1]["delayed"] == "0"
    md = (grid / "report.md").read_text()
    assert "| cosine | 0.3 | 4096 | from epoch 6 | 3 | 42,1337,2024 |" in md
    assert "mean ± sample std over seeds" in md
    assert "**8.50 ± 0.50**" in md  # cosine ITW: best mean, in bold
    assert "9.50 ± 0.80" in md  # angular ITW
    head = next(line for line in md.splitlines() if line.startswith("| similarity"))
    assert head.endswith("| seeds | LA19 | ITW | pooled | mean |")  # study column order
    assert md in capsys.readouterr().out
    per_run = list(csv.DictReader((grid / "runs.csv").open()))
    assert len(per_run) == 6 and {r["seed"] for r in per_run} == {"42", "1337", "2024"}
    png = (grid / "itw_vs_queue.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000


def test_incomplete_runs_and_differing_settings(grid: Path, tmp_path: Path, capsys):
    make_run(grid, "cosine-q4096-d6-s7", "cosine", 0.3, 4096, 6, 7, 0.5, results=False)
    make_run(grid, "cosine-q4096-d6-s8", "cosine", 0.3, 4096, 6, 8, 0.1,
             extra={"batch_size": 64})
    out = tmp_path / "out"
    assert report.main([str(p) for p in sorted(grid.iterdir())] + ["--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "cosine-q4096-d6-s7" in md.split("## Incomplete")[1]
    assert "differ in data.batch_size" in capsys.readouterr().err
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert rows[0]["n_runs"] == "4"  # the run with results joined its configuration


def test_single_run_has_no_std_and_no_plot_without_the_set(tmp_path: Path, capsys):
    make_run(tmp_path, "one", "cosine", 0.3, 0, 1, 42, 0.2)
    assert report.main([str(tmp_path / "one"), "--plot-set", "df21"]) == 0
    row = next(csv.DictReader((tmp_path / "report.csv").open()))
    assert row["itw_mean_pct"] == "20.0000" and row["itw_std_pct"] == ""
    assert not (tmp_path / "df21_vs_queue.png").exists()
    assert "no run has an eval set named 'df21'" in capsys.readouterr().err


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys):
    run = make_run(tmp_path, "bad", "cosine", 0.3, 0, 1, 42, 0.2)
    (run / "eval" / "results.json").write_text(json.dumps({"sets": {"itw": {"eer": "x"}}}))
    assert report.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.json: itw" in err and "Traceback" not in err
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_runs_sharing_a_seed_are_not_seeds_and_names_stay_apart(tmp_path: Path):
    a = make_run(tmp_path / "a", "run", "cosine", 0.3, 0, 1, 42, 0.2)
    b = make_run(tmp_path / "b", "run", "cosine", 0.3, 0, 1, 42, 0.3)
    out = tmp_path / "out"
    assert report.main([str(a), str(b), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "over runs" in md and "over seeds" not in md and "repeats, not seeds" in md
    assert "| cosine | 0.3 | 0 | - | 2 | 42,42 |" in md
    names = [r["run"] for r in csv.DictReader((out / "runs.csv").open())]
    assert sorted(names) == ["a/run", "b/run"]
    assert "| a/run |" in md and "| b/run |" in md


def test_queue_plot_labels_the_no_queue_point(grid: Path):
    runs = [report.load_run(p) for p in report.find_runs([grid])]
    make_run(grid, "cos-q0", "cosine", 0.3, 0, 1, 42, 0.1)
    runs.append(report.load_run(grid / "cos-q0"))
    fig = report.queue_figure(report.group_runs(runs)[0], "itw")
    labels = sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert labels == ["angular (T=0.07), no queue", "cosine (T=0.3), no queue",
                      "cosine (T=0.3), queue from epoch 6"]


def test_help_states_the_out_default(capsys):
    with pytest.raises(SystemExit):
        report.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "see above" not in out and "default: the directory given" in out


def test_detection_costs_become_columns(tmp_path: Path, capsys):
    from sccl.report import main

    root = tmp_path / "runs"
    for seed, tdcf in ((0, 0.2), (1, 0.4)):
        run = make_run(root, f"s{seed}", "cosine", 0.07, 0, 1, seed, 0.1)
        res = json.loads((run / "eval" / "results.json").read_text())
        res["sets"]["la19"].update(min_tdcf={"pooled": tdcf}, min_dcf=0.5, dataset="asvspoof2019_la")
        res["sets"]["as5"] = {"eer": 0.2, "dataset": "asvspoof5", "min_dcf": 0.3 + seed / 10,
                              "act_dcf": 0.9, "cllr": 0.8}
        (run / "eval" / "results.json").write_text(json.dumps(res))
    assert main([str(root)]) == 0
    md = (root / "report.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| similarity"))
    assert head.endswith("| LA19 | ITW | AS5 | pooled | mean | LA19 min t-DCF | AS5 minDCF | "
                         "AS5 actDCF | AS5 Cllr |")
    assert "| 0.3000 ± 0.1414 | 0.3500 ± 0.0707 | 0.9000 ± 0.0000 | 0.8000 ± 0.0000 |" in md
    rows = (root / "report.csv").read_text().splitlines()
    assert "la19_min_t-DCF_mean" in rows[0] and "as5_pct_mean" not in rows[0]
    assert "as5_mean_pct" in rows[0] and ",0.300000,0.141421," in rows[1]
    capsys.readouterr()
