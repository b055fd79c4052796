"""End-to-end Stage 1 runs on the tiny synthetic corpus (CPU, tiny encoder, 1 s crops).

Every run is a subprocess, as a user would start it: `python -m sccl.train_supcon` for one
process, `accelerate launch` (gloo) for two, and DeepSpeed ZeRO-2 on two CPU processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sccl
from sccl.config import parse_config
from sccl.memory import EmbeddingQueue
from sccl.model import SupConModel
from sccl.train_supcon import TrainConfig, main
from tests.corpus import la19_shards

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
       "TOKENIZERS_PARALLELISM": "false"}
ENV.pop("ACCELERATE_USE_CPU", None)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return la19_shards(tmp_path_factory.mktemp("la19"))


def tiny_config(tmp_path: Path, corpus: dict, **sections) -> str:
    """A YAML config for the tiny preset (4 bona fide + 6 spoof train samples)."""
    cfg = {
        "data": {"train_shards": str(corpus["train"]), "dev_shards": str(corpus["dev"]),
                 "crop_seconds": 1.0, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 16,
                 "rawboost": False, "train_crop": "random"},
        "model": {"encoder": "tiny", "proj_dim": 32},
        "optim": {"epochs": 2, "encoder_lr": 3e-4, "head_lr": 3e-3},
        "run": {"log_every": 1, "progress": False, "tensorboard": False},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.json')))}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def command(config: str, run_dir: Path, *args: str, launch: str | None = None) -> list[str]:
    train = ["--config", config, "--run.dir", str(run_dir), *args]
    if launch is None:
        return [sys.executable, "-m", "sccl.train_supcon", *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "launch" / launch), "--num_processes", "2", "--main_process_port",
            free_port(), str(REPO / "sccl" / "train_supcon.py"), *train]


def run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def log_lines(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training step records, epoch records) of a run's log.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "stage1" / "log.jsonl").read_text().splitlines()]
    return [x for x in lines if "event" not in x], [x for x in lines if x.get("event") == "epoch"]


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run_dir / "stage1" / which / "model.safetensors")


def test_loss_goes_down_on_one_process(corpus, tmp_path):
    # The dev loss is measured on the training shards (deterministic head crops), so it
    # tracks how well the model fits its data: it must fall epoch after epoch.
    cfg = tiny_config(tmp_path, corpus, data={"dev_shards": str(corpus["train"]),
                                              "batch_size": 8, "train_crop": "head"},
                      optim={"epochs": 8, "patience": 0}, run={"tensorboard": True})
    run_dir = tmp_path / "run"
    proc = run(command(cfg, run_dir))
    check_ok(proc)
    steps, epochs = log_lines(run_dir)
    dev = [e["dev_loss"] for e in epochs]
    assert len(dev) == 8 and dev[-1] < dev[0] - 0.02 and dev[-1] == min(dev), dev
    assert all(e["corrupt_count"] == e["short_count"] == e["codec_failures"] == 0 for e in epochs)
    assert [s["global_step"] for s in steps] == list(range(1, 9))
    first = steps[0]
    assert {"loss", "lr", "queue_fill", "samples_per_s", "epoch", "world_size"} <= set(first)
    assert first["lr"] == {"encoder": 3e-4, "head": 3e-3} and first["world_size"] == 1
    stage = run_dir / "stage1"
    assert json.loads((stage / "best" / "info.json").read_text())["epoch"] == 8
    model = SupConModel.from_pretrained(stage / "best")  # Stage 2's way in
    assert model.cfg.proj_dim == 32
    # the resolved config, reloadable
    saved = parse_config(TrainConfig, ["--config", str(stage / "config.yaml")])
    assert saved.optim.epochs == 8 and saved.data.batch_size == 8
    assert (stage / "config.yaml").read_text().startswith("# sccl Stage 1 config; git ")
    assert json.loads((stage / "run_info.json").read_text())["world_size"] == 1
    assert list((stage / "tb").rglob("events.out.tfevents.*"))
    assert [p.name for p in sorted((stage / "checkpoints").iterdir())] == [
        "step-00000007", "step-00000008"]  # keep_checkpoints = 2
    assert "git " in proc.stdout and "loss:" in proc.stdout  # config printed once
    # A finished run asked to resume does nothing.
    again = run(command(cfg, run_dir))
    check_ok(again)
    assert "already finished" in again.stdout


@pytest.mark.dist
def test_two_processes_queue_and_resume_after_sigterm(corpus, tmp_path):
    # 2 ranks x 2 rows, gathered-batch contrast and a global queue from the first step.
    cfg = tiny_config(tmp_path, corpus, loss={"queue_size": 12, "gather_batch": True},
                      run={"rank_checksums": True})
    full, cut = tmp_path / "full", tmp_path / "cut"
    proc = run(command(cfg, full, launch="cpu_2proc.yaml"))
    check_ok(proc)
    steps, epochs = log_lines(full)
    assert [s["global_step"] for s in steps] == [1, 2, 3, 4] and len(epochs) == 2
    assert all(s["world_size"] == 2 for s in steps)
    assert [s["queue_fill"] for s in steps] == [4, 8, 12, 12]  # 4 gathered rows per step
    for s in steps:  # every rank holds the same queue, and DDP keeps the weights equal
        assert s["queue_checksums"][0] == s["queue_checksums"][1], s
        assert s["weight_checksums"][0] == s["weight_checksums"][1], s
    assert len({s["queue_checksums"][0] for s in steps}) == 4

    # Rank 0 alone gets SIGTERM after step 3 (mid epoch 2): both ranks checkpoint and exit 0.
    stopped = run(command(cfg, cut, "--run.stop_after_steps", "3", launch="cpu_2proc.yaml"))
    check_ok(stopped)
    assert "stopped by a signal at step 3" in stopped.stdout
    ckpts = sorted(p.name for p in (cut / "stage1" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000003"]
    state = json.loads((cut / "stage1/checkpoints/step-00000003/trainer_state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["finished"]) == (2, 1, False)

    # A requeue onto one process is refused with one line; the checkpoint stays as it was.
    fewer = run(command(cfg, cut))
    errors = [x for x in fewer.stderr.splitlines() if x.startswith("error")]
    assert fewer.returncode == 2 and "Traceback" not in fewer.stderr, fewer.stderr
    assert len(errors) == 1 and "was written by 2 processes, this run has 1" in errors[0]
    assert sorted(p.name for p in (cut / "stage1" / "checkpoints").iterdir()) == ckpts

    resumed = run(command(cfg, cut, launch="cpu_2proc.yaml"))  # the same command again
    check_ok(resumed)
    assert "resuming from" in resumed.stdout
    steps_cut, _ = log_lines(cut)
    assert [s["global_step"] for s in steps_cut] == [1, 2, 3, 4]
    assert [s["queue_checksums"] for s in steps_cut] == [s["queue_checksums"] for s in steps]
    assert [s["loss"] for s in steps_cut] == pytest.approx([s["loss"] for s in steps], abs=1e-6)
    a, b = weights(full), weights(cut)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.dist
def test_deepspeed_zero2_on_two_cpu_processes(corpus, tmp_path):
    # The first DeepSpeed run on a machine JIT-compiles its shared-memory comm op (minutes).
    pytest.importorskip("deepspeed")
    cfg = tiny_config(tmp_path, corpus, data={"dev_shards": str(corpus["train"]),
                                              "batch_size": 8, "train_crop": "head"},
                      optim={"epochs": 4, "patience": 0, "grad_clip": 1.0, "encoder_lr": 1e-3,
                             "head_lr": 1e-2, "clip_scope": "all"},
                      loss={"gather_batch": True}, run={"rank_checksums": True})
    run_dir = tmp_path / "ds"
    proc = run(command(cfg, run_dir, launch="deepspeed_zero2.yaml"), timeout=300)
    check_ok(proc)
    info = json.loads((run_dir / "stage1" / "run_info.json").read_text())
    assert info["distributed_type"] == "DistributedType.DEEPSPEED" and info["world_size"] == 2
    steps, epochs = log_lines(run_dir)
    assert len(steps) == 4 and all(s["world_size"] == 2 for s in steps)
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    assert all(0 < s["grad_norm"] for s in steps)  # DeepSpeed's own global norm
    assert all(len(set(s["weight_checksums"])) == 1 for s in steps)  # replicas stay equal
    assert len({s["weight_checksums"][0] for s in steps}) == 4  # and they do train
    dev = [e["dev_loss"] for e in epochs]
    assert dev[-1] < dev[0] - 0.01, dev
    ckpt = run_dir / "stage1" / "checkpoints" / "step-00000004"
    assert list(ckpt.rglob("*optim_states.pt"))  # a real (ZeRO-sharded) DeepSpeed checkpoint
    assert SupConModel.from_pretrained(run_dir / "stage1" / "last").cfg.encoder == "tiny"


def test_nonfinite_losses_stop_with_checkpoint_intact(corpus, tmp_path):
    cfg = tiny_config(tmp_path, corpus)
    run_dir = tmp_path / "nan"
    check_ok(run(command(cfg, run_dir, "--run.stop_after_steps", "1")))
    ckpt = run_dir / "stage1" / "checkpoints" / "step-00000001"
    before = (ckpt / "trainer_state.json").read_text()
    # An absurd temperature turns every loss into NaN: steps are skipped, then the run stops.
    proc = run(command(cfg, run_dir, "--loss.temperature", "1e-40",
                       "--run.max_consecutive_nonfinite", "2",
                       "--run.allow_config_change", "true"))  # a resume: the change is asked for
    assert proc.returncode == 3, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 consecutive steps" in errors[0]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (run_dir / "stage1" / "checkpoints").iterdir()] == [ckpt.name]
    assert (ckpt / "trainer_state.json").read_text() == before


@pytest.fixture
def fresh_accelerate_state():
    """main() runs in this process here: forget Accelerate's process-wide state afterwards."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--loss.temprature", "0.1"], "did you mean '--loss.temperature'"),
        (["--optim.epochs", "two"], "--optim.epochs: expected an integer"),
        (["--run.dir", ""], "run.dir is required"),
        (["--data.train_shards", "{empty}"], "manifest.json is missing"),
        (["--model.encoder", "{tmp}/no_such_model"], "could not load encoder"),
    ],
    ids=["unknown key", "bad type", "no run dir", "empty shard dir", "missing model"],
)
def test_bad_input_exits_2_with_one_line(corpus, tmp_path, capsys, fresh_accelerate_state,
                                         args, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", tmp=tmp_path) for a in args]
    cfg = tiny_config(tmp_path, corpus)
    assert main(["--config", cfg, "--run.dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # no run directory left behind


def test_resume_refuses_training_changes_and_keeps_every_start(corpus, tmp_path, capsys,
                                                                fresh_accelerate_state):
    cfg = tiny_config(tmp_path, corpus)
    run_dir = tmp_path / "run"
    stage = run_dir / "stage1"
    args = ["--config", cfg, "--run.dir", str(run_dir)]

    def written() -> dict[str, bytes]:
        return {n: (stage / n).read_bytes()
                for n in ("config.yaml", "config_history.jsonl", "run_info.json")}

    assert main([*args, "--run.stop_after_steps", "1"]) == 0  # a checkpoint at step 1
    before = written()
    changed = ["--loss.temperature", "0.1", "--optim.head_lr", "1e-3"]
    capsys.readouterr()
    assert main([*args, *changed]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[1:] == ["  loss.temperature: 0.3 -> 0.1",
                                    "  optim.head_lr: 0.003 -> 0.001"], err
    assert err.startswith(f"error: {stage / 'config.yaml'}: resuming from step-00000001 with 2")
    assert "Traceback" not in err and written() == before
    assert main([*args, *changed, "--run.allow_config_change", "true"]) == 0  # to the end
    history = [json.loads(x) for x in (stage / "config_history.jsonl").read_text().splitlines()]
    assert [(h["global_step"], h["world_size"]) for h in history] == [(0, 1), (1, 1)]
    assert {"loss.temperature: 0.3 -> 0.1", "optim.head_lr: 0.003 -> 0.001",
            "run.stop_after_steps: 1 -> 0"} <= set(history[1]["changes"])
    assert parse_config(TrainConfig, ["--config", str(stage / "config.yaml")]).loss.temperature \
        == 0.1
    # A finished run: refused in the same way, and "nothing to do" writes nothing.
    finished = written()
    other = ["--data.train_shards", str(corpus["dev"])]
    assert main([*args, *changed, *other]) == 2
    assert "\n  data.train_shards: " in capsys.readouterr().err
    assert main([*args, *other, "--run.allow_config_change", "true"]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert written() == finished


def test_read_only_run_dir_exits_2_with_one_line(corpus, tmp_path, capsys,
                                                 fresh_accelerate_state):
    from tests.mounts import read_only

    place = tmp_path / "ro"
    place.mkdir()
    with read_only(place):
        code = main(["--config", tiny_config(tmp_path, corpus), "--run.dir", str(place / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {place / 'run'}"), err
    assert "read-only file system" in errors[0], err


def test_full_disk_exits_2_naming_it_and_the_rerun_resumes_exactly(corpus, tmp_path, capsys,
                                                                   fresh_accelerate_state):
    from tests.mounts import fill, small_disk

    cfg = tiny_config(tmp_path, corpus)
    assert main(["--config", cfg, "--run.dir", str(tmp_path / "full")]) == 0
    with small_disk(tmp_path / "disk", "4m") as disk:
        run_dir = disk / "run"
        args = ["--config", cfg, "--run.dir", str(run_dir)]
        assert main([*args, "--run.stop_after_steps", "1"]) == 0  # step-1 (about 650 kB)
        # Room for best/ and last/ (about 190 kB each), not for the next checkpoint's 620 kB.
        fill(disk, leave=500_000)
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        errors = [x for x in err.splitlines() if x.startswith("error")]
        assert len(errors) == 1 and "no space left on the device" in errors[0], err
        assert str(run_dir / "stage1") in errors[0] and "Traceback" not in err, err
        ckpts = run_dir / "stage1" / "checkpoints"
        assert [p.name for p in ckpts.iterdir()] == ["step-00000001"]  # no .tmp-* left
        assert not (run_dir / "stage1" / ".lock").exists()
        (disk / ".filler").unlink()  # space freed: the same command resumes
        assert main(args) == 0
        cut = weights(run_dir)
    full = weights(tmp_path / "full")
    assert cut.keys() == full.keys()
    for name in full:
        torch.testing.assert_close(cut[name], full[name], rtol=0, atol=1e-6, msg=name)


class RecordingQueue(EmbeddingQueue):
    """The loop's queue, recording each read and write with the fill it saw."""

    events: list = []

    def get(self):
        self.events.append(("read", len(self)))
        return super().get()

    def enqueue(self, z, labels):
        super().enqueue(z, labels)
        self.events.append(("enqueue", len(self)))


def test_queue_gets_a_window_only_after_its_optimizer_step(corpus, tmp_path, monkeypatch,
                                                           fresh_accelerate_state):
    """With gradient accumulation, micro-batches of one window all read the queue as it was
    at the window's start; the window is enqueued after its optimizer step, and a window
    skipped for a NaN/inf loss never reaches the queue."""
    from sccl import train_supcon

    def step(*args):
        ok = optimizer_step(*args)
        RecordingQueue.events.append(("step", ok))
        return ok

    optimizer_step = train_supcon.optimizer_step
    monkeypatch.setattr(train_supcon, "EmbeddingQueue", RecordingQueue)
    monkeypatch.setattr(train_supcon, "optimizer_step", step)
    monkeypatch.setattr(RecordingQueue, "events", [])
    cfg = tiny_config(tmp_path, corpus, optim={"grad_accum_steps": 2, "patience": 0},
                      loss={"queue_size": 64})
    assert main(["--config", cfg, "--run.dir", str(tmp_path / "run")]) == 0
    # 2 windows of 2 micro-batches of 4 rows (one per epoch)
    assert RecordingQueue.events == [("read", 0), ("read", 0), ("step", True), ("enqueue", 4),
                                     ("enqueue", 8), ("read", 8), ("read", 8), ("step", True),
                                     ("enqueue", 12), ("enqueue", 16)]
    RecordingQueue.events.clear()
    assert main(["--config", cfg, "--run.dir", str(tmp_path / "nan"), "--loss.temperature",
                 "1e-40", "--run.max_consecutive_nonfinite", "2"]) == 3
    assert RecordingQueue.events == [("read", 0), ("read", 0), ("step", False), ("read", 0),
                                     ("read", 0), ("step", False)]


def test_best_weights_come_from_the_first_queue_epoch(corpus, tmp_path):
    # Zero learning rates: the dev loss is the same every epoch, so under the old rule the
    # first epoch (no queue yet) would stay the best one.
    cfg = tiny_config(tmp_path, corpus, optim={"encoder_lr": 0.0, "head_lr": 0.0, "epochs": 2,
                                               "patience": 1},
                      loss={"queue_size": 8, "queue_start_epoch": 2})
    new, old = tmp_path / "new", tmp_path / "old"
    proc = run(command(cfg, new))
    check_ok(proc)
    _, epochs = log_lines(new)
    assert epochs[0]["dev_loss"] == epochs[1]["dev_loss"]  # flat
    info = json.loads((new / "stage1" / "best" / "info.json").read_text())
    assert (info["epoch"], info["queue_active"], info["selection_from"]) == (2, True, 2)
    lines = [json.loads(x) for x in (new / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if x.get("event") == "selection_reset"] == [2]
    assert "epoch 2: first epoch with the queue" in proc.stdout
    check_ok(run(command(cfg, old, "--optim.select_after_queue_start", "false")))
    info = json.loads((old / "stage1" / "best" / "info.json").read_text())
    assert (info["epoch"], info["queue_active"]) == (1, False)


@pytest.mark.dist
def test_second_run_on_the_same_dir_exits_2_naming_the_holder(corpus, tmp_path):
    import signal
    import time

    cfg = tiny_config(tmp_path, corpus, optim={"epochs": 500, "patience": 0})
    run_dir = tmp_path / "run"
    first = subprocess.Popen(command(cfg, run_dir), cwd=REPO, env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = run_dir / "stage1" / "log.jsonl"
    while first.poll() is None and not (log.exists() and log.read_text().strip()):
        time.sleep(0.1)
    second = run(command(cfg, run_dir, launch="cpu_2proc.yaml"), timeout=120)  # 2 ranks
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    assert second.returncode != 0
    # once by each rank that printed it before torchrun stopped it: "error: ..." by rank 0,
    # "error (rank 1): ..." by rank 1
    errors = [x for x in second.stderr.splitlines() if x.startswith("error")]
    assert 1 <= len(errors) == len({x.split(":")[0] for x in errors}) <= 2, second.stderr[-3000:]
    assert all("in use" in x and f"held by pid {first.pid}" in x for x in errors), errors
    steps = [s["global_step"] for s in log_lines(run_dir)[0]]
    assert steps == list(range(1, len(steps) + 1))  # one writer: nothing interleaved


def test_fresh_run_starts_a_fresh_log_and_saves_absolute_paths(corpus, tmp_path):
    cfg = tiny_config(tmp_path, corpus, optim={"epochs": 1})
    rel = os.path.relpath(corpus["train"], tmp_path)
    stage = tmp_path / "run" / "stage1"
    stage.mkdir(parents=True)
    (stage / "log.jsonl").write_text('{"global_step": 99, "loss": 1.0}\n')  # an older run's
    proc = subprocess.run([sys.executable, "-m", "sccl.train_supcon", "--config", cfg,
                           "--run.dir", "run", "--data.train_shards", rel], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=240)
    check_ok(proc)
    assert [s["global_step"] for s in log_lines(tmp_path / "run")[0]] == [1, 2]
    saved = parse_config(TrainConfig, ["--config", str(stage / "config.yaml")])
    assert saved.run.dir == str(tmp_path / "run")
    assert saved.data.train_shards == str(corpus["train"].resolve())
    assert not (stage / ".lock").exists()


def test_loader_counts_sum_what_the_loaders_replaced_or_left_unaugmented():
    from types import SimpleNamespace

    from sccl.train_supcon import loader_counts

    loader = SimpleNamespace(corrupt_count=1, short_count=2, codec_failures=3)
    assert loader_counts(loader, torch.device("cpu")) == {  # one process: its own counts
        "corrupt_count": 1, "short_count": 2, "codec_failures": 3}


def test_no_library_module_shadows_the_standard_library():
    # `accelerate launch sccl/train_supcon.py` puts sccl/ first on sys.path, where a module
    # named like a standard one (queue.py once) would replace it for every library.
    names = {p.stem for p in Path(sccl.__file__).parent.glob("*.py")}
    assert not names & set(sys.stdlib_module_names)


def test_train_supcon_runs_as_a_file():
    out = subprocess.run([sys.executable, "sccl/train_supcon.py", "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--loss.queue_size int (default 0)" in out.stdout


@pytest.mark.parametrize(("kind", "precision", "scope", "accum", "refused"), [
    ("DEEPSPEED", "no", "head", 1, "cannot be honoured under DeepSpeed"),  # ZeRO-2 and ZeRO-3
    ("DEEPSPEED", "no", "all", 2, "grad_accum_steps > 1 is not supported under DeepSpeed"),
    ("FSDP", "fp16", "head", 1, "not supported under FSDP"),
    ("FSDP", "bf16", "head", 1, None),  # FSDP2 clips the head's gradient shards
    ("FSDP", "fp16", "all", 1, None),
    ("FSDP", "bf16", "head", 2, "grad_accum_steps > 1 is not supported under FSDP"),
    ("MULTI_GPU", "bf16", "head", 2, None),  # DDP drops a bad micro-batch from its window
])
def test_check_config_refuses_what_a_strategy_cannot_do(corpus, tmp_path, kind, precision, scope,
                                                        accum, refused):
    from types import SimpleNamespace

    from sccl.config import ConfigError
    from sccl.train_supcon import check_config

    cfg = parse_config(TrainConfig, ["--config", tiny_config(tmp_path, corpus),
                                     "--optim.clip_scope", scope,
                                     "--optim.grad_accum_steps", str(accum)])
    acc = SimpleNamespace(distributed_type=kind, mixed_precision=precision, num_processes=2,
                          process_index=0, is_main_process=True)
    if refused is None:
        assert check_config(cfg, acc) == 2  # batches per epoch
    else:
        with pytest.raises(ConfigError, match=refused):
            check_config(cfg, acc)
