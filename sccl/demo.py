"""The one-command demo: the whole chain on the synthetic corpus, on CPU, in minutes.

    sccl-demo [--out sccl-demo] [--size default|tiny] [--epochs N] [--procs 2]

1. ``sccl-shards synth``: a synthetic corpus in the real datasets' layouts (OUT/corpus);
2. ``sccl-shards build`` for LA19 train and dev (split by label) and the eval sets LA19 eval,
   ITW, LA21 and DF21 (OUT/shards);
3. Stage 1 (``accelerate launch`` with 2 CPU processes, gloo): the tiny encoder with the
   settings of sccl/configs/demo_stage1.yaml (OUT/run/stage1);
4. Stage 2: frozen embeddings + linear classifier (OUT/run/stage2, OUT/run/export);
5. evaluation of the four eval sets: score files, results.md, plots (OUT/run/eval);
then prints the results table and where the plots are. Every command is printed before it
runs, so each step can be rerun by hand. A rerun skips the steps whose output is complete
(the corpus, each shard dir, a finished Stage 1, a Stage 2 that matches it); ``--fresh``
starts the run (not the corpus) again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import sccl

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
}
EVAL_SETS = {"la19": "la19_eval", "itw": "itw", "la21": "la21", "df21": "df21"}
# --size tiny (tests): a few utterances per set, so everything is smaller and shorter.
TINY_STAGE1 = ["--data.batch_size", "4", "--data.crop_seconds", "1.0", "--optim.epochs", "2",
               "--data.shuffle_buffer", "8"]


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
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_dir / f"{name}.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if _worth_showing(line):
                print("   " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc != 0:
        raise DemoError(f"step '{name}' failed (exit {rc}); see {log_dir / f'{name}.log'}")
    took = time.perf_counter() - t0
    print(f"   ({took:.0f} s)", flush=True)
    return took


def _worth_showing(line: str) -> bool:
    """Progress lines only: the full output is in the step's log file."""
    keys = ("epoch ", "Stage 2:", "embedded", "scored", "WARNING", "error", "samples (",
            "wrote", "finished", "exported")
    return any(k in line for k in keys) and "[WARNING]" not in line


def stage1_done(run: Path) -> bool:
    from sccl.runtime import list_checkpoints

    ckpts = list_checkpoints(run / "stage1" / "checkpoints")
    if not ckpts or not (run / "stage1" / "best" / "model.safetensors").is_file():
        return False
    return bool(json.loads((ckpts[-1] / "trainer_state.json").read_text()).get("finished"))


def stage2_done(run: Path) -> bool:
    from sccl.linear import RunMismatchError, load_stage2

    try:
        load_stage2(run)
    except (RunMismatchError, OSError, ValueError):
        return False
    return (run / "export" / "config.json").is_file()


def eval_done(run: Path, names: list[str]) -> bool:
    """results.json newer than Stage 2, for these sets."""
    res, meta = run / "eval" / "results.json", run / "stage2" / "meta.json"
    if not res.is_file() or res.stat().st_mtime < meta.stat().st_mtime:
        return False
    return list(json.loads(res.read_text()).get("sets", {})) == names


def plan(args: argparse.Namespace) -> list[tuple[str, list[str], bool]]:
    """[(step name, command, already done)] in order."""
    corpus, shards, run = args.out / "corpus", args.out / "shards", args.out / "run"
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
    s1 = ["--config", str(stage1_config()), "--run.dir", str(run),
          "--data.train_shards", str(shards / "la19_train"),
          "--data.dev_shards", str(shards / "la19_dev")]
    s1 += TINY_STAGE1 if args.size == "tiny" else []
    s1 += ["--optim.epochs", str(args.epochs)] if args.epochs else []
    seconds = ["--embed.seconds", "4"]  # synthetic utterances last 1-4 s
    steps.append(("stage1", launch("train_supcon.py", s1, args.procs, args.port),
                  stage1_done(run)))
    # A few hundred embeddings: the study's lr 1e-4 would barely move the classifier.
    s2 = ["--run.dir", str(run), *seconds, "--run.progress", "false", "--linear.lr", "1e-2",
          "--linear.patience", "30"]
    steps.append(("stage2", launch("train_linear.py", s2, args.procs, args.port + 1),
                  stage1_done(run) and stage2_done(run)))
    sets = ",".join(f"{k}={shards / v}" for k, v in EVAL_SETS.items())
    ev = ["--run.dir", str(run), "--eval.sets", sets, *seconds, "--eval.tsne_points", "1000",
          "--eval.subset", "all" if args.size == "tiny" else "eval"]
    steps.append(("evaluate", launch("evaluate.py", ev, args.procs, args.port + 2),
                  stage1_done(run) and stage2_done(run) and eval_done(run, list(EVAL_SETS))))
    return steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sccl-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("sccl-demo"), help="output directory")
    p.add_argument("--size", choices=("default", "tiny"), default="default",
                   help="synthetic corpus size (tiny: seconds, for tests)")
    p.add_argument("--epochs", type=int, default=0, help="Stage 1 epochs (0 = the config's)")
    p.add_argument("--procs", type=int, default=2, help="processes per stage (default 2)")
    p.add_argument("--port", type=int, default=29517, help="first rendezvous port (3 used)")
    p.add_argument("--fresh", action="store_true", help="delete OUT/run first (keeps the data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    if args.fresh:
        shutil.rmtree(args.out / "run", ignore_errors=True)
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    t0, logs = time.perf_counter(), args.out / "logs"
    try:
        for name, cmd, done in plan(args):
            if done:
                print(f"\n== {name}: already done, skipped", flush=True)
                continue
            run_step(name, cmd, logs, env)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    eval_dir = args.out / "run" / "eval"
    print("\n" + (eval_dir / "results.md").read_text())
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; logs in {logs}")
    print(f"plots: {', '.join(str(p) for p in sorted((eval_dir / 'plots').glob('*.png')))}")
    print(f"score audio with: sccl-score --run {args.out / 'run'} FILES_OR_DIRS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
