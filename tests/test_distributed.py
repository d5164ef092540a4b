"""Training under `torchrun` (gloo, CPU, two processes) on a tiny model and real audio: the same result
as one process with the same global batch, ranks that agree, and the failures a cluster produces."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from device_agent.diff import apply_diff
from device_agent.manifest import Utterance, write_manifest
from device_agent.model_format import load_model, save_model
from cli.main import cli
from diffing.data import load_examples
from diffing.diffs import config_for, learn_diff
from diffing.diffs.int8_domain import mean_loss
from diffing.train import TrainConfig, train
from device_agent.bundle import apply_bundle, decode_bundle
from tests.tiny import TINY_CONFIG, tiny_device_model

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "tests" / "data" / "fsdd" / "recordings"  # shipped: see its README
WORDS = "zero one two three four five six seven eight nine".split()
# augmentation off: with the same global batches, one and two processes take the same steps up to float rounding
TINY_RUN = {"model": TINY_CONFIG.to_json(), "max_frames": 400, "target_sparsity": 0.5, "prune_start": 0.0,
            "prune_end": 0.5, "qat_start": 0.5, "dev_utterances": 10, "spec_augment": False, "pred_dropout": 0.0,
            "epochs": 2, "threads": 1}


def _manifest(path: Path, pattern: str) -> Path:
    files = sorted(FSDD.glob(pattern))
    return write_manifest(path, [Utterance(p, WORDS[int(p.name[0])], 0.5, p.name.split("_")[1]) for p in files])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dist")
    _manifest(d / "train.jsonl", "*_lucas_[0-3].wav")
    _manifest(d / "adapt.jsonl", "*_jackson_[0-2].wav")
    (d / "tiny.json").write_text(json.dumps(TINY_RUN))
    save_model(tiny_device_model(), d / "base.otam")
    return d


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _torchrun(*args: str, nproc: int = 2, launch: tuple[str, ...] = ("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, f"--nproc-per-node={nproc}", "-m", "cli.main", *args]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)  # a safety net


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_on_two_processes_matches_one(data: Path) -> None:
    single = load_model(train(TrainConfig.from_json({**TINY_RUN, "train_manifest": str(data / "train.jsonl"),
                                                     "dev_manifest": str(data / "train.jsonl"),
                                                     "out_dir": str(data / "one")}), log=lambda _: None,
                              progress=False))
    done = _run(_torchrun("train", "--config", "tiny.json", "--train", "train.jsonl", "--dev", "train.jsonl",
                          "--out", "two"), data)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("exported two/model.otam") == 1  # one writer
    two = load_model(data / "two" / "model.otam")
    changed = sum(int((single.weights[n].q != two.weights[n].q).sum()) for n in single.weights)
    assert changed <= 0.02 * sum(w.q.size for w in single.weights.values())  # float rounding, not other steps
    one_hist, two_hist = (json.loads((data / run / "summary.json").read_text())["history"] for run in ("one", "two"))
    assert [h["step"] for h in two_hist] == [h["step"] for h in one_hist]
    for a, b in zip(one_hist, two_hist):  # the global batch's loss, and WER within noise
        assert abs(a["loss"] - b["loss"]) <= 0.01 * abs(a["loss"]) and abs(a["dev_wer"] - b["dev_wer"]) <= 0.1
    ckpt = torch.load(data / "two" / "last.pt", weights_only=False)
    assert ckpt["train_config"]["model"] == TINY_CONFIG.to_json() and ckpt["epoch"] == 2


@pytest.mark.parametrize("method,budget", [("sparse", "20%"), ("hashed", "40%")])  # byte budgets: the byte-exact
def test_diff_on_two_processes_agrees_across_ranks(data: Path, method: str, budget: str) -> None:  # selection, sizing
    base = load_model(data / "base.otam")
    single = learn_diff(base, data / "adapt.jsonl", config_for(method, budget=budget, epochs=3, threads=1))
    done = _run(_torchrun("diff", "train", "--method", method, "--budget", budget, "--base", "base.otam", "--data",
                          "adapt.jsonl", "--epochs", "3", "--threads", "1", "--out", f"{method}.otab"), data)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rank_target_hashes"] == [report["target_hash"]] * 2  # every rank holds the same diff
    updated = apply_bundle(decode_bundle((data / f"{method}.otab").read_bytes()), base)
    assert updated.content_hash() == report["target_hash"]
    assert report["bytes"] <= float(budget[:-1]) / 100 * (data / "base.otam").stat().st_size
    examples = load_examples(data / "adapt.jsonl", base.tokenizer, base.config.features, None, False)
    before, one, two = (mean_loss(m, examples) for m in (base, apply_diff(base, single), updated))
    assert two < before and abs(two - one) <= 0.25 * (before - one)  # within noise of one process


def test_cuda_without_a_gpu_is_refused_in_one_line(data: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is a valid choice here")
    result = CliRunner().invoke(cli, ["train", "--train", str(data / "train.jsonl"), "--out", str(data / "gpu"),
                                      "--device", "cuda"])
    assert result.exit_code == 4 and "--device cuda: no CUDA GPU is visible" in result.output, result.output
    assert not (data / "gpu" / "last.pt").exists()


def test_mismatched_configs_across_ranks_are_refused_at_start(data: Path) -> None:
    port = _free_port()
    nodes = [subprocess.Popen(_torchrun("train", "--config", "tiny.json", "--train", "train.jsonl", "--out",
                                        f"mismatch{rank}", "--lr", lr, nproc=1,
                                        launch=("--nnodes=2", f"--node-rank={rank}", "--master-addr=127.0.0.1",
                                                f"--master-port={port}")),
                              cwd=data, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank, lr in ((0, "0.002"), (1, "0.001"))]
    outputs = [node.communicate(timeout=1800) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode != 0
        assert "ranks 0 and 1 were started with different training settings or data (differing: lr)" in err
    assert not (data / "mismatch0" / "last.pt").exists()  # refused before any training


def _rank_pid(launcher: int, rank: int) -> int | None:
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


EPOCHS = 8


def test_a_dead_rank_fails_the_job_and_keeps_the_last_checkpoint(data: Path) -> None:
    job = subprocess.Popen(_torchrun("train", "--config", "tiny.json", "--train", "train.jsonl", "--epochs", str(EPOCHS),
                                     "--out", "killed"), cwd=data, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    ckpt_path = data / "killed" / "last.pt"
    deadline = time.monotonic() + 1800
    while not ckpt_path.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)  # a node lost mid-training
    _, err = job.communicate(timeout=1800)
    assert job.returncode != 0
    assert "another rank stopped" in err or "Signal 9 (SIGKILL) received by PID" in err, err[-2000:]
    ckpt = torch.load(ckpt_path, weights_only=False)  # the last complete epoch is intact ...
    assert 1 <= ckpt["epoch"] < EPOCHS and ckpt["train_config"]["epochs"] == EPOCHS
    # ... and the same command resumes from it, here on one process
    done = _run([sys.executable, "-m", "cli.main", "train", "--config", "tiny.json", "--train", "train.jsonl",
                 "--epochs", str(EPOCHS), "--out", "killed"], data)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from killed/last.pt at epoch {ckpt['epoch']}, step {ckpt['step']}" in done.stderr  # the log
    assert load_model(data / "killed" / "model.otam").config == TINY_CONFIG
