"""The one-command demo: the whole chain on the synthetic corpus, on CPU, in minutes.

    sccl-demo [--out sccl-demo] [--size default|tiny] [--seeds 0,1,2] [--epochs N] [--procs 2]

1. ``sccl-shards synth``: a synthetic corpus in the real datasets' layouts (OUT/corpus);
2. ``sccl-shards build`` for LA19 train and dev (split by label) and the eval sets LA19 eval,
   ITW, LA21, DF21 and ASVspoof 5 eval (OUT/shards);
3. Stage 1 (``accelerate launch`` with 2 CPU processes, gloo): the tiny encoder with the
   settings of sccl/configs/demo_stage1.yaml (OUT/run/stage1);
4. Stage 2: frozen embeddings + linear classifier (OUT/run/stage2, OUT/run/export);
5. evaluation of the five eval sets, with min t-DCF from the corpus's synthetic ASV scores:
   score files, results.md, plots (OUT/run/eval);
then prints the results table and where the plots are. Every command is printed before it
runs, so each step can be rerun by hand. A rerun skips the steps whose output is complete
(the corpus, each shard dir, a finished Stage 1, a Stage 2 that matches it); ``--fresh``
starts the run(s) (not the corpus) again.

One run on one machine is one draw: float summation order differs between CPUs, and a toy
encoder trained for a minute amplifies that. ``--seeds 0,1,2`` (or ``--seeds 3``) runs steps
3-5 once per seed in OUT/seed-<s> (Stage 1 ``run.seed`` and ``data.seed``, Stage 2
``linear.seed`` set to the seed; corpus and shards built once and shared) and prints each
seed's EERs with their mean, sample standard deviation and spread (max - min), also written
to OUT/seeds.md and OUT/seeds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import sccl
from sccl.fileio import atomic_write_json, atomic_write_text

_LA19 = "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{}.txt"
# name -> (format, protocol, audio dir, extra flags); paths relative to the corpus
SETS = {
    "la19_train": ("asvspoof2019", _LA19.format("train.trn"), "LA/ASVspoof2019_LA_train",
                   ["--split-by-label"]),
    "la19_dev": ("asvspoof2019", _LA19.format("dev.trl"), "LA/ASVspoof2019_LA_dev",
                 ["--split-by-label"]),
    "la19_eval": ("asvspoof2019", _LA19.format("eval.trl"), "LA/ASVspoof2019_LA_eval", []),
    "itw": ("itw", "release_in_the_wild/meta.csv", "release_in_the_wild", []),
    "la21": ("asvspoof2021", "keys/LA/CM/trial_metadata.txt", "ASVspoof2021_LA_eval",
             ["--subset", "all"]),
    "df21": ("asvspoof2021", "keys/DF/CM/trial_metadata.txt", "ASVspoof2021_DF_eval",
             ["--subset", "all"]),
    "as5_eval": ("asvspoof5", "ASVspoof5_protocols/ASVspoof5.eval.track_1.tsv", "flac_E_eval",
                 []),
}
EVAL_SETS = {"la19": "la19_eval", "itw": "itw", "la21": "la21", "df21": "df21",
             "as5": "as5_eval"}
# Columns of the seeds table: EER (%) of the eval sets, results.json's pooled and mean EER,
# the pooled min t-DCF of the sets with ASV scores, and ASVspoof 5's primary metric, minDCF
# (costs in [0, 1], not in %).
COLUMNS = {"la19": "LA19", "itw": "ITW", "la21": "LA21", "df21": "DF21", "as5": "AS5",
           "pooled": "pooled", "mean": "mean", "la19_tdcf": "LA19 min t-DCF",
           "la21_tdcf": "LA21 min t-DCF", "as5_mindcf": "AS5 minDCF"}
DIGITS = {"la19_tdcf": 4, "la21_tdcf": 4, "as5_mindcf": 4}  # EERs get 2
# The synthetic corpus ships ASV scores in the official layouts (for min t-DCF).
ASV_SCORES = {"la19": "LA/ASVspoof2019_LA_asv_scores/ASVspoof2019.LA.asv.eval.gi.trl.scores.txt",
              "la21": "keys/LA/ASV"}
# --size tiny (tests): a few utterances per set, so everything is smaller and shorter.
TINY_STAGE1 = ["--data.batch_size", "4", "--data.crop_seconds", "1.0", "--optim.epochs", "2",
               "--data.shuffle_buffer", "8"]
# Stage 2 on a few hundred embeddings: the study's lr 1e-4 would barely move the classifier.
STAGE2 = ["--linear.lr", "1e-2", "--linear.patience", "30"]
EMBED = ["--embed.seconds", "4"]  # synthetic utterances last 1-4 s


class DemoError(RuntimeError):
    """A step failed; the message names the command and where its log is."""


def stage1_config() -> Path:
    """The packaged Stage 1 settings of the demo (sccl/configs/demo_stage1.yaml)."""
    return Path(str(resources.files("sccl") / "configs" / "demo_stage1.yaml"))


def launcher() -> list[str]:
    """``accelerate launch`` of this interpreter's environment."""
    exe = Path(sys.executable).parent / "accelerate"
    return [str(exe), "launch"] if exe.is_file() else [sys.executable, "-m",
                                                       "accelerate.commands.launch"]


def launch(script: str, args: list[str], procs: int, port: int) -> list[str]:
    flags = ["--num_processes", str(procs)] + (["--multi_gpu"] if procs > 1 else [])
    return [*launcher(), *flags, "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(port),
            str(Path(sccl.__file__).parent / script), *args]


def run_step(name: str, cmd: list[str], log_dir: Path, env: dict) -> float:
    """Run ``cmd`` with its output teed to LOG_DIR/<name>.log; DemoError if it fails."""
    print(f"\n== {name}\n$ {' '.join(cmd)}", flush=True)
    log_path = log_dir / f"{name}.log"  # seed-<s>/stage1.log for a seeded run
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if _worth_showing(line):
                print("   " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        raise DemoError(f"step '{name}' failed (exit {rc}); see {log_path}")
    took = time.perf_counter() - t0
    print(f"   ({took:.0f} s)", flush=True)
    return took


def _worth_showing(line: str) -> bool:
    """Progress lines only: the full output is in the step's log file."""
    keys = ("epoch ", "Stage 2:", "embedded", "scored", "WARNING", "error", "samples (",
            "wrote", "finished", "exported")
    return any(k in line for k in keys) and "[WARNING]" not in line


def stage1_done(run: Path) -> bool:
    from sccl.checkpoint import stage1_finished

    return stage1_finished(run) and (run / "stage1" / "best" / "model.safetensors").is_file()


def stage2_done(run: Path) -> bool:
    from sccl.linear import RunMismatchError, load_stage2

    try:
        load_stage2(run)
    except (RunMismatchError, OSError, ValueError):
        return False
    export = run / "export"  # an export older than its integrity record is made again
    return (export / "config.json").is_file() and (export / "integrity.json").is_file()


def eval_done(run: Path, names: list[str]) -> bool:
    """results.json newer than Stage 2, for these sets, with min t-DCF where ASV scores exist."""
    res, meta = run / "eval" / "results.json", run / "stage2" / "meta.json"
    if not res.is_file() or res.stat().st_mtime < meta.stat().st_mtime:
        return False
    sets = json.loads(res.read_text()).get("sets", {})
    return sorted(sets) == sorted(names) and all(sets[n].get("min_tdcf") for n in ASV_SCORES)


Step = tuple[str, list[str], bool]  # (step name, command, already done)


def data_steps(args: argparse.Namespace) -> list[Step]:
    """Synthetic corpus and the shard builds: done once, shared by every seed."""
    corpus, shards = args.out / "corpus", args.out / "shards"
    py = sys.executable
    done = json.loads((corpus / "synth.json").read_text()).get("complete", False) \
        if (corpus / "synth.json").is_file() else False
    steps = [("synth", [py, "-m", "shards", "synth", "--out", str(corpus), "--size", args.size,
                        "--workers", str(args.procs)], done)]
    for name, (fmt, proto, audio, extra) in SETS.items():
        cmd = [py, "-m", "shards", "build", "--format", fmt, "--protocol", str(corpus / proto),
               "--audio-dir", str(corpus / audio), "--out", str(shards / name),
               "--shard-size", "4" if args.size == "tiny" else "200", "--no-progress", *extra]
        steps.append((f"build_{name}", cmd, (shards / name / "manifest.json").is_file()))
    return steps


def run_steps(args: argparse.Namespace, run: Path, seed: int | None, port: int) -> list[Step]:
    """Stage 1, Stage 2 and evaluation into ``run``; ``seed`` None keeps the config's seeds."""
    shards = args.out / "shards"
    seeded = [] if seed is None else ["--run.seed", str(seed), "--data.seed", str(seed)]
    s1 = ["--config", str(stage1_config()), "--run.dir", str(run),
          "--data.train_shards", str(shards / "la19_train"),
          "--data.dev_shards", str(shards / "la19_dev"), *seeded]
    s1 += TINY_STAGE1 if args.size == "tiny" else []
    s1 += ["--optim.epochs", str(args.epochs)] if args.epochs else []
    s2 = ["--run.dir", str(run), *EMBED, "--run.progress", "false", *STAGE2]
    s2 += [] if seed is None else ["--linear.seed", str(seed)]
    sets = ",".join(f"{k}={shards / v}" for k, v in EVAL_SETS.items())
    asv = ",".join(f"{k}={args.out / 'corpus' / v}" for k, v in ASV_SCORES.items())
    ev = ["--run.dir", str(run), "--eval.sets", sets, "--eval.asv_scores", asv, *EMBED,
          "--eval.tsne_points", "1000",
          "--eval.subset", "all" if args.size == "tiny" else "eval"]
    s1_done = stage1_done(run)
    s2_done = s1_done and stage2_done(run)
    return [("stage1", launch("train_supcon.py", s1, args.procs, port), s1_done),
            ("stage2", launch("train_linear.py", s2, args.procs, port + 1), s2_done),
            ("evaluate", launch("evaluate.py", ev, args.procs, port + 2),
             s2_done and eval_done(run, list(EVAL_SETS)))]


def run_dirs(args: argparse.Namespace) -> list[tuple[Path, int | None]]:
    """[(run dir, seed)]: OUT/run with the config's seeds, or OUT/seed-<s> per --seeds."""
    if args.seeds is None:
        return [(args.out / "run", None)]
    return [(args.out / f"seed-{s}", s) for s in args.seeds]


def seeded_runs(args: argparse.Namespace) -> list[tuple[int | None, list[Step]]]:
    """[(seed, its Stage 1 / Stage 2 / evaluation steps)], step names prefixed by the run."""
    out = []
    for i, (run, seed) in enumerate(run_dirs(args)):
        prefix = "" if seed is None else f"seed-{seed}/"
        # Distinct ports per run: a port just released can linger in TIME_WAIT.
        steps = run_steps(args, run, seed, args.port + 3 * i)
        out.append((seed, [(prefix + name, cmd, done) for name, cmd, done in steps]))
    return out


def plan(args: argparse.Namespace) -> list[Step]:
    """Every step in order: the data once, then Stage 1 / Stage 2 / evaluation per run."""
    return data_steps(args) + [step for _, steps in seeded_runs(args) for step in steps]


def seed_eers(results: dict) -> dict[str, float]:
    """One run's results.json -> {column: EER in % or min t-DCF} for the seeds table."""
    row = {k: 100 * results["sets"][k]["eer"] for k in EVAL_SETS}
    row["pooled"] = 100 * results["pooled_eer"]["eer"]
    row["mean"] = 100 * results["mean_eer"]["eer"]
    for k in ASV_SCORES:
        row[f"{k}_tdcf"] = results["sets"][k]["min_tdcf"]["pooled"]
    row["as5_mindcf"] = results["sets"]["as5"]["min_dcf"]
    return row


def summarise_seeds(rows: dict[int, dict[str, float]]) -> dict:
    """Per-seed EERs (%) -> mean, sample std (n - 1; None for one seed) and spread (max - min)
    of every column."""
    if not rows:
        raise ValueError("no seeds to summarise")
    out: dict = {"seeds": sorted(rows), "per_seed": {str(s): rows[s] for s in sorted(rows)},
                 "mean": {}, "std": {}, "spread": {}}
    for col in COLUMNS:
        values = [rows[s][col] for s in sorted(rows)]
        out["mean"][col] = statistics.fmean(values)
        out["std"][col] = statistics.stdev(values) if len(values) > 1 else None
        out["spread"][col] = max(values) - min(values)
    return out


def seeds_markdown(summary: dict) -> str:
    """The seeds table: one row per seed, then mean +- std and spread (EER in %)."""
    head = ["seed", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(COLUMNS)]
    def num(col: str, value: float) -> str:
        return f"{value:.{DIGITS.get(col, 2)}f}"

    for seed in summary["seeds"]:
        row = summary["per_seed"][str(seed)]
        lines.append(f"| {seed} | " + " | ".join(num(c, row[c]) for c in COLUMNS) + " |")

    def pm(col: str) -> str:
        std = summary["std"][col]
        return num(col, summary["mean"][col]) + ("" if std is None else f" +- {num(col, std)}")

    lines.append("| mean +- std | " + " | ".join(pm(c) for c in COLUMNS) + " |")
    lines.append("| spread (max - min) | "
                 + " | ".join(num(c, summary["spread"][c]) for c in COLUMNS) + " |")
    n = len(summary["seeds"])
    return ("\n".join(lines) + f"\n\nEER in % (chance is 50 %); pooled min t-DCF (with the "
            "corpus's synthetic ASV scores) and minDCF: normalised costs, 1 = no better than "
            f"no countermeasure; {n} seed{'s' * (n > 1)}; std is the sample standard deviation "
            "(n - 1).\n")


def write_seeds(args: argparse.Namespace, walls: dict[int | None, float]) -> str:
    """Collect every seed's results.json into OUT/seeds.json and OUT/seeds.md; the table."""
    rows = {seed: seed_eers(json.loads((run / "eval" / "results.json").read_text()))
            for run, seed in run_dirs(args)}
    summary = summarise_seeds(rows)
    # Steps skipped as already done cost nothing here: a rerun records only what it ran.
    summary["seconds_this_call"] = {str(s): round(t, 1) for s, t in walls.items()}
    summary["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "processor": platform.processor() or platform.machine()}
    summary["size"] = args.size
    table = seeds_markdown(summary)
    atomic_write_json(args.out / "seeds.json", summary)
    atomic_write_text(args.out / "seeds.md", "# sccl-demo over seeds\n\n" + table)
    return table


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a single number N -> the first N seeds [0, ..., N-1]."""
    try:
        if "," not in text:
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds: expected a count N >= 1 or a list like 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds: expected distinct seeds >= 0; got {text!r}")
    return seeds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sccl-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("sccl-demo"), help="output directory")
    p.add_argument("--size", choices=("default", "tiny"), default="default",
                   help="synthetic corpus size (tiny: seconds, for tests)")
    p.add_argument("--seeds", type=parse_seeds, default=None,
                   help="run Stage 1/2/eval per seed (a list like 0,1,2, or a count N = seeds "
                        "0..N-1; one seed S alone: 'S,') into OUT/seed-<s> and report mean +- "
                        "std in OUT/seeds.md; unset: one run in OUT/run with the config's seeds")
    p.add_argument("--epochs", type=int, default=0, help="Stage 1 epochs (0 = the config's)")
    p.add_argument("--procs", type=int, default=2, help="processes per stage")
    p.add_argument("--port", type=int, default=29517,
                   help="first rendezvous port (3 per run are used)")
    p.add_argument("--fresh", action="store_true", help="delete the run dir(s) first (keeps "
                   "corpus and shards)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    if args.fresh:
        for run, _ in run_dirs(args):
            shutil.rmtree(run, ignore_errors=True)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    t0, logs = time.perf_counter(), args.out / "logs"
    walls: dict[int | None, float] = {}
    try:
        execute(data_steps(args), logs, env)
        for seed, steps in seeded_runs(args):
            walls[seed] = execute(steps, logs, env)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report(args, walls, time.perf_counter() - t0, logs)
    return 0


def execute(steps: list[Step], logs: Path, env: dict) -> float:
    """Run the steps not done yet, in order -> seconds they took."""
    took = 0.0
    for name, cmd, done in steps:
        if done:
            print(f"\n== {name}: already done, skipped", flush=True)
        else:
            took += run_step(name, cmd, logs, env)
    return took


def report(args: argparse.Namespace, walls: dict[int | None, float], took: float,
           logs: Path) -> None:
    """Print the results table (one run) or the seeds table, and where things are."""
    run = run_dirs(args)[0][0]
    if args.seeds is None:
        print("\n" + (run / "eval" / "results.md").read_text())
    else:
        print("\n" + write_seeds(args, walls) + f"\n(also in {args.out / 'seeds.md'})")
    print(f"demo finished in {took:.0f} s; logs in {logs}")
    eval_dir = run / "eval"
    print(f"plots: {', '.join(str(p) for p in sorted((eval_dir / 'plots').glob('*.png')))}")
    print(f"score audio with: sccl-score --run {run} FILES_OR_DIRS")


if __name__ == "__main__":
    raise SystemExit(main())
