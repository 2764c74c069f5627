"""The training loop: exact resume, several processes, atomic checkpoints, divergence guard, learning."""

import json
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hnet.training.checkpoint as checkpoint_module
import hnet.training.step as step_module
from hnet.cli import main
from hnet.config import RunConfig
from hnet.models import latest_checkpoint
from hnet.training import TrainingError, train

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / ".." / "shared" / "data" / "text" / "tinyshakespeare.txt"
SAMPLE = REPO / "hnet" / "samples" / "tinyshakespeare.txt"  # bundled: there whether or not ../shared is


def tiny_run_config(tmp_path, **train_changes) -> dict:
    model = {
        "arch_layout": ["m1", ["T1"], "m1"], "d_model": [32, 64], "d_intermediate": [0, 128], "vocab_size": 256,
        "ssm_cfg": {"chunk_size": 16, "d_conv": 4, "d_state": 8, "expand": 2},
        "attn_cfg": {"num_heads": [1, 2], "rotary_emb_dim": [16, 16], "window_size": [-1, -1]},
    }
    data = {"path": "package:tinyshakespeare.txt", "max_bytes": 40000, "seq_len": 64,
            "cache_dir": str(tmp_path / "cache")}
    train_cfg = {"batch_size": 4, "max_steps": 6, "lr": 3e-3, "eval_every": 3, "eval_batches": 2, "log_every": 1,
                 "checkpoint_every": 3, "keep_checkpoints": 2, "ratio_targets": [4.0]}
    train_cfg.update(train_changes)
    return {"model": model, "data": data, "train": train_cfg}


def write_config(tmp_path, data: dict, name="run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_resume_is_bit_exact(tmp_path):
    config = RunConfig.from_dict(tiny_run_config(tmp_path))
    train(config, tmp_path / "straight", progress=False)
    half = RunConfig.from_dict(tiny_run_config(tmp_path))
    half.train.checkpoint_every = 3
    train(half, tmp_path / "resumed", progress=False)  # writes step 3 and step 6
    # Throw away the end, then resume from step 3.
    import shutil

    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step_000006")
    train(half, tmp_path / "resumed", resume=True, progress=False)
    snapshots = sorted(p.name for p in (tmp_path / "straight" / "boundaries").iterdir())
    assert snapshots == ["step_000003.html", "step_000006.html"]  # a validation snippet at every evaluation
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_directory_is_not_overwritten(tmp_path):
    path = write_config(tmp_path, tiny_run_config(tmp_path, max_steps=3))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", str(path), "--out", str(out)]) == 2  # neither --resume nor --overwrite
    assert (out / "metrics.jsonl").read_text() == before
    assert main(["train", str(path), "--out", str(tmp_path / "fresh"), "--resume"]) == 2
    assert main(["train", str(path), "--out", str(out), "--overwrite", "--max-steps", "2"]) == 0
    assert latest_checkpoint(out).name == "step_000002"


def test_bad_config_names_field_and_file_and_writes_nothing(tmp_path, capsys):
    data = tiny_run_config(tmp_path)
    data["train"]["schedule"] = "linear"
    path = write_config(tmp_path, data, "bad.json")
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "'train.schedule'" in err and "'linear'" in err
    assert not (tmp_path / "run").exists()
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "train.schedule=wsd", "--set", "data.path=nope.txt"]) == 2
    assert "nope.txt" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the data is checked before the run directory is made


def test_resume_with_another_model_is_refused_and_changes_nothing(tmp_path, capsys):
    path = write_config(tmp_path, tiny_run_config(tmp_path, max_steps=3))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(out), "--resume", "--set", "model.d_model=[32,128]",
                 "--set", "train.grad_clip=0.5", "--max-steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "model.d_model ([32, 64] -> [32, 128])" in err and "train.grad_clip (1.0 -> 0.5)" in err
    assert "train.max_steps" not in err.split("differs")[1].split(";")[0]  # a field that may change is not listed
    assert snapshot(out) == before  # run.json above all: compare reads the parameter count from it


def test_resume_applies_max_steps_and_records_the_change(tmp_path):
    path = write_config(tmp_path, tiny_run_config(tmp_path, max_steps=3))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-steps", "6", "--set", "train.log_every=2"]) == 0
    assert latest_checkpoint(out).name == "step_000006"
    events = [r for r in records(out) if "event" in r]
    assert events == [dict(events[0], step=3, event="resume",
                           changed={"train.log_every": [1, 2], "train.max_steps": [3, 6]})]
    assert json.loads((out / "run.json").read_text())["train"]["max_steps"] == 6


def test_a_new_lr_on_resume_needs_the_flag_and_is_then_what_the_optimizer_uses(tmp_path, capsys):
    path = write_config(tmp_path, tiny_run_config(tmp_path))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    first = {r["step"]: r["lr"] for r in records(out) if "lr" in r}
    shutil.rmtree(out / "checkpoints" / "step_000006")
    before = snapshot(out)
    assert main(["train", str(path), "--out", str(out), "--resume", "--set", "train.lr=0.006"]) == 2
    err = capsys.readouterr().err
    assert "train.lr (0.003 -> 0.006)" in err and "--allow-lr-change" in err
    assert snapshot(out) == before
    assert main(["train", str(path), "--out", str(out), "--resume", "--set", "train.lr=0.006", "--allow-lr-change"]) == 0
    resumed = {r["step"]: r["lr"] for r in records(out)[len(first) + 3:] if "lr" in r}  # after the 3 evals/event
    assert sorted(resumed) == [4, 5, 6]
    for step, lr in resumed.items():
        assert lr == pytest.approx(2 * first[step]), step
    assert json.loads((out / "run.json").read_text())["train"]["lr"] == 0.006


def test_crash_mid_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    config = RunConfig.from_dict(tiny_run_config(tmp_path))
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        if "step_000006" in str(path):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError):
        train(config, tmp_path / "run", progress=False)
    last = latest_checkpoint(tmp_path / "run")
    assert last.name == "step_000003"
    assert {p.name for p in last.iterdir()} == {"config.json", "model.safetensors", "optimizer.pt", "state.json"}
    monkeypatch.undo()
    train(config, tmp_path / "run", resume=True, progress=False)  # and it resumes from there
    assert latest_checkpoint(tmp_path / "run").name == "step_000006"


def test_a_full_disk_names_the_file_and_the_last_complete_checkpoint(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, tiny_run_config(tmp_path))
    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, file, *a, **k):
        if "step_000006" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, file, *a, **k)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    assert main(["train", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"hnet train: error: no space left on device while writing {out / 'checkpoints' / 'step_000006' / 'optimizer.pt'}; "
                        f"the last complete checkpoint is step 3 ({out / 'checkpoints' / 'step_000003'})\n") in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000003"]  # no partial folder left


def test_resume_falls_back_past_a_truncated_checkpoint_and_readers_name_it(tmp_path, capsys):
    path = write_config(tmp_path, tiny_run_config(tmp_path))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    broken = out / "checkpoints" / "step_000006" / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:-100])
    capsys.readouterr()
    for argv in (["eval", str(out), "--data", str(SAMPLE)], ["generate", str(out), "--prompt", "To"],
                 ["inspect", str(out), "--text", "To be"]):
        before = snapshot(out)
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(broken) in err and "truncated" in err, err
        assert "intact checkpoints: step_000003" in err
        assert snapshot(out) == before
    optimizer = out / "checkpoints" / "step_000003" / "optimizer.pt"
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-steps", "9"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {broken} has" in err and "skipping checkpoint step_000006" in err
    assert [r["step"] for r in records(out) if r.get("event") == "resume"] == [3]  # it went on from step 3
    assert latest_checkpoint(out).name == "step_000009" and not optimizer.exists()  # keep 2: 6 (rewritten), 9
    newest = out / "checkpoints" / "step_000009" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[:-100])  # readers do not read the optimizer state: no matter to them
    assert main(["generate", str(out), "--prompt", "To", "--max-new-bytes", "4"]) == 0


def test_a_deletion_cut_short_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    from hnet.models import checkpoint_problem, checkpoints

    config = RunConfig.from_dict(tiny_run_config(tmp_path, keep_checkpoints=1))
    real_rmtree = shutil.rmtree

    def killed_midway(folder, *a, **k):
        if "step_000003" in str(folder) and not k.get("ignore_errors"):
            next(p for p in Path(folder).iterdir() if p.name == "model.safetensors").unlink()
            raise KeyboardInterrupt  # the process dies between two files
        return real_rmtree(folder, *a, **k)

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", progress=False)
    monkeypatch.undo()
    remaining = checkpoints(tmp_path / "run")
    assert [c.name for c in remaining] == ["step_000006"] and checkpoint_problem(remaining[0]) is None


def test_resume_with_another_tokenizer_of_the_same_size_is_refused(tmp_path, capsys):
    from hnet.data import Document, train_bpe

    data = tiny_run_config(tmp_path, max_steps=3)
    del data["train"]["ratio_targets"]
    data.update(model_type="isotropic", model={
        "arch_layout": ["T1"], "d_model": [32], "d_intermediate": [64], "vocab_size": 400,
        "attn_cfg": {"num_heads": [2], "rotary_emb_dim": [16], "window_size": [-1]}})
    data["data"].update(tokenizer="bpe", vocab_size=400)
    path = write_config(tmp_path, data)
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    shakespeare = (REPO / "hnet" / "samples" / "tinyshakespeare.txt").read_bytes()[40000:80000]
    other = train_bpe([Document(shakespeare)], 400, tmp_path / "other")  # other text, the same size
    (out / "tokenizer" / "tokenizer.model").write_bytes(other.path.read_bytes())
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-steps", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer.model: not the tokenizer that" in err and "step_000003" in err, err
    assert snapshot(out) == before


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    path = write_config(tmp_path, tiny_run_config(tmp_path, max_steps=3))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    holder = subprocess.Popen(  # another training process, as far as the lock can tell
        [sys.executable, "-c", "import sys, time; from hnet.training.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(out)
        capsys.readouterr()
        for extra in (["--overwrite"], ["--resume", "--max-steps", "6"]):
            assert main(["train", str(path), "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and f"process {holder.pid} on host " in err, err
            assert "is training in this run directory" in err
            assert snapshot(out) == before  # --overwrite deleted nothing
    finally:
        holder.kill()  # dies holding the lock: the kernel frees it, the file still names it
        holder.wait()
    assert main(["train", str(path), "--out", str(out), "--resume", "--max-steps", "6"]) == 0
    assert f"taking over the lock of process {holder.pid} on host" in capsys.readouterr().err
    assert latest_checkpoint(out).name == "step_000006" and (out / ".lock").read_text() == ""


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    config = RunConfig.from_dict(tiny_run_config(tmp_path))
    real = step_module.forward_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(step_module, "forward_loss", poisoned)
    with pytest.raises(TrainingError, match="step 5"):
        train(config, tmp_path / "run", progress=False)
    assert latest_checkpoint(tmp_path / "run").name == "step_000003"


def launch_train(processes: int, config: Path, out: Path, *extra: str) -> None:
    """train.py in one process, or in several through accelerate (gloo on the CPU when there is no GPU)."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
                     "--dynamo_backend", "no", "--num_processes", str(processes)]
    result = subprocess.run([*launcher, str(REPO / "train.py"), str(config), "--out", str(out), *extra],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoints_move_between_them(tmp_path):
    """2 processes end where 1 ends (the same global batch, split differently); a checkpoint written by 2
    processes resumes in 1, and one written by 1 resumes in 2, ending where the uninterrupted runs end."""
    path = write_config(tmp_path, tiny_run_config(tmp_path, max_steps=6, checkpoint_every=3, decay_fraction=0.0))
    for n in (1, 2):
        launch_train(n, path, tmp_path / f"p{n}")
        first = json.loads((tmp_path / f"p{n}" / "metrics.jsonl").read_text().splitlines()[0])
        assert first["processes"] == n
    one, two = weights(tmp_path / "p1"), weights(tmp_path / "p2")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=1e-4), key

    for written, resumed_in in ((2, 1), (1, 2)):
        moved = tmp_path / f"written_by_{written}_resumed_in_{resumed_in}"
        shutil.copytree(tmp_path / f"p{written}", moved)
        shutil.rmtree(moved / "checkpoints" / "step_000006")
        launch_train(resumed_in, path, moved, "--resume")
        assert latest_checkpoint(moved).name == "step_000006"
        end, straight = weights(moved), weights(tmp_path / f"p{written}")
        for key in end:
            assert torch.allclose(end[key], straight[key], atol=1e-5, rtol=1e-4), (written, resumed_in, key)


@pytest.mark.slow
@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data is not beside the repo")
def test_200_steps_on_tinyshakespeare_learn(tmp_path):
    data = tiny_run_config(tmp_path, max_steps=200, eval_every=200, eval_batches=8, checkpoint_every=200,
                           log_every=50, lr=3e-3)
    data["data"].update(path=str(SHAKESPEARE), max_bytes=None, seq_len=128)
    result = train(RunConfig.from_dict(data), tmp_path / "run", progress=False)
    assert result.initial_val_bpb > 7.5
    assert result.val_bpb < 4.0, result.val_bpb


def test_quickstart_trains_and_compares(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)  # the preset paths are relative to the repository
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("hnet_1stage", "bpe_transformer", "transformer"):
        assert latest_checkpoint(tmp_path / "qs" / name).name == "step_000002"
        assert f"\n{name} " in out
    assert "validation bits per byte" in out and (tmp_path / "qs" / "report" / "report.md").is_file()


class _FirstStepReached(Exception):
    pass


def first_step_gradients(config: RunConfig, run_dir: Path) -> tuple[dict, list[int]]:
    """The loop's gradients at its first optimizer step (before the step; the run stops there; None for a
    parameter without one), and the label count of each micro-batch it ran."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    grads, label_counts, real = {}, [], step_module.forward_loss

    def counting(model, batch, *a, **k):
        label_counts.append(int((batch["labels"] != -100).sum()))
        return real(model, batch, *a, **k)

    def capture(optimizer, _args, _kwargs):
        for group in optimizer.param_groups:
            grads.update((n, None if p.grad is None else p.grad.clone()) for n, p in zip(group["names"], group["params"]))
        raise _FirstStepReached

    handle = register_optimizer_step_pre_hook(capture)
    step_module.forward_loss = counting
    try:
        with pytest.raises(_FirstStepReached):
            train(config, run_dir, progress=False)
    finally:
        handle.remove()
        step_module.forward_loss = real
    return grads, label_counts


def test_gradient_accumulation_gives_the_big_batch_gradients(tmp_path):
    """grad_accum micro-batches give the gradients of one batch of all their rows (the same rows: the loader
    deals them out in order), before clipping. The ratio loss is off: it is bilinear in each micro-batch's
    F and G and averaged over micro-batches (as the official training did), so with it the two differ by
    design. The cross-entropy is normalised per micro-batch, so they agree only when every micro-batch
    scores as many labels, which the test checks is so here."""
    changes = dict(max_steps=1, eval_batches=1, grad_clip=0.0, ratio_loss_weight=0.0)
    big, big_counts = first_step_gradients(RunConfig.from_dict(tiny_run_config(tmp_path, **changes)), tmp_path / "big")
    accumulated, counts = first_step_gradients(
        RunConfig.from_dict(tiny_run_config(tmp_path, grad_accum=4, **changes)), tmp_path / "accumulated")
    assert len(big_counts) == 1 and len(counts) == 4 and sum(counts) == big_counts[0] and len(set(counts)) == 1
    assert big.keys() == accumulated.keys() and all(g is not None for g in big.values())
    # Each parameter against its own largest gradient, floored at 1e-3 of the largest anywhere (a tensor of
    # tiny gradients loses digits to cancellation). float32 sums in another order left 2.1e-6; a skipped
    # micro-batch or a loss not divided by grad_accum is off by 1/4 or more.
    scale = max(g.abs().max().item() for g in big.values())
    worst = max(((accumulated[n] - g).abs().max() / max(g.abs().max().item(), 1e-3 * scale)).item() for n, g in big.items())
    assert worst < 1e-5, worst
