"""The headline study's script runs its whole grid at tiny size, so it cannot rot."""

import shutil

import pytest
import torch

from tiny_runs import load_script


def test_study_dry_run(tmp_path, capsys):
    study = load_script("study")
    args = ["--dry-run", "--runs-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    study.main(args)
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "<!-- section: text -->" in results and "| hnet_1stage_seed1 |" in results
    assert "Trained " in results and "Boundary statistics of `hnet_1stage`" in results
    for name in ("bpb_vs_bytes.png", "bpb_vs_flops.png", "bytes_per_chunk.png"):
        assert (tmp_path / "docs" / "text" / name).stat().st_size > 1000
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted([*study.GRID["text"], "hnet_1stage_seed1"])

    # Runs that travelled without their checkpoints still count as finished, and the section is
    # written again from their small files alone, the same as before.
    for checkpoints in runs.glob("*/checkpoints"):
        shutil.rmtree(checkpoints)
    study.main(args)
    assert capsys.readouterr().out.count("finished earlier, skipped") == 7
    assert (tmp_path / "docs" / "results.md").read_text() == results

    # a run trained with another budget is not a result of this grid
    doubled = study.run_configs("text", "tiny", 2 * 768, ["data.max_bytes=12000", f"data.cache_dir={tmp_path / 'cache'}"], True)
    assert not study.finished(runs / "mamba2", doubled["mamba2"])
    # (how often it checkpoints does not make it another run)
    assert study.config_changes(runs / "mamba2", doubled["mamba2"]) == ["train.max_steps: 3 -> 6"]

    # --report-only trains nothing: a run not there is named as missing, not trained
    shutil.rmtree(runs / "transformer")
    study.main([*args, "--report-only"])
    results = (tmp_path / "docs" / "results.md").read_text()
    assert "- transformer: not trained yet" in results and "| transformer |" not in results
    assert "--report-only" not in results and not (runs / "transformer").exists()


def test_study_goes_on_past_a_failed_run(tmp_path, monkeypatch):
    """A run that diverges and one that runs out of memory are listed with their error and left out of the
    table, and the grid goes on to the run after them. The grid is cut to those three runs (the whole grid
    trains in test_study_dry_run): the one after the failures is the only one that trains."""
    study = load_script("study")
    errors = {"hnet_2stage": "non-finite loss (nan) at step 3", "transformer": "CUDA out of memory. Tried to allocate 3.91 GiB."}
    real_train, real_run_configs = study.train, study.run_configs

    def train(config, run_dir, **kwargs):
        if run_dir.name in errors:
            run_dir.mkdir(parents=True)
            if run_dir.name == "hnet_2stage":
                raise study.TrainingError(errors[run_dir.name])
            raise torch.cuda.OutOfMemoryError(errors[run_dir.name] + "\nIf reserved but unallocated memory is large ...")
        return real_train(config, run_dir, **kwargs)

    def run_configs(*args, **kwargs):
        return {name: c for name, c in real_run_configs(*args, **kwargs).items() if name in (*errors, "mamba2")}

    monkeypatch.setattr(study, "train", train)
    monkeypatch.setattr(study, "run_configs", run_configs)
    study.main(["--dry-run", "--runs-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert list(run_configs("text", "tiny", 768, [], True)) == ["hnet_2stage", "transformer", "mamba2"]  # in grid order
    results = (tmp_path / "docs" / "results.md").read_text()
    for name, message in errors.items():
        assert f"- {name}: {message}\n" in results and f"| {name} |" not in results
        assert not study.finished(tmp_path / "runs" / name, real_run_configs("text", "tiny", 768, [], True)[name])
    assert "| mamba2 |" in results


@pytest.mark.parametrize("data, markers", [("dna", ['"rate_by_codon_position_in_orfs"']),
                                           ("protein", ["boundary rate by residue offset from the start",
                                                        "boundary rate by residue over the same records"])])
def test_study_dry_run_dna_and_protein(tmp_path, data, markers):
    study = load_script("study")
    study.main(["--dry-run", "--data", data, "--runs-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    results = (tmp_path / "docs" / "results.md").read_text()
    assert f"<!-- section: {data} -->" in results and all(marker in results for marker in markers)
    assert all(f"| {name} |" in results for name in [*study.GRID[data], "hnet_1stage_seed1"])


def test_the_processes_command_line_is_accelerate_launch_of_hnet_train(tmp_path):
    """What `--processes N` starts for each run (tests/test_fsdp.py and the slow test below run it)."""
    import sys

    from hnet.training.launch import MULTICAST_OFF, launch_env, train_command

    config, run = tmp_path / "c.json", tmp_path / "run"
    many = train_command(config, run, processes=8, resume=True, overrides=["train.max_steps=5"])
    assert many[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    launcher = many[3:many.index("hnet.cli") - 1]
    assert "--multi_gpu" in launcher and launcher[launcher.index("--num_processes") + 1] == "8"
    assert launcher[launcher.index("--num_machines") + 1] == "1"
    assert many[many.index("hnet.cli") - 1:] == ["-m", "hnet.cli", "train", str(config), "--out", str(run),
                                                 "--set=train.max_steps=5", "--resume"]
    assert train_command(config, run) == [sys.executable, "-m", "hnet.cli", "train", str(config), "--out", str(run),
                                          "--overwrite"]
    env = launch_env(tmp_path / "tmp", CUDA_VISIBLE_DEVICES="0")
    assert all(env[k] == v for k, v in MULTICAST_OFF.items()) and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["PYTHONUNBUFFERED"] == "1"


def test_the_scale_grid_trains_the_slowest_first_on_the_same_bytes():
    study = load_script("study")
    configs = study.run_configs("code", "scale", 2_000_000_000, [], False, checkpoints=4)
    assert list(configs) == ["hnet_2stage", "bpe_transformer", "hnet_1stage", "transformer", "mamba2", "hnet_space",
                             "hnet_1stage_seed1"]
    steps = 2_000_000_000 // (64 * 8192)
    assert {c.train.max_steps for c in configs.values()} == {steps}
    assert configs["hnet_1stage"].train.checkpoint_every == steps // 4
    assert configs["hnet_1stage"].data.val_path.endswith(".data/code/validation")


@pytest.mark.slow
def test_study_on_two_processes_reports_throughput_scaling_and_passes(tmp_path):
    """One cheap run of the grid on 2 gloo processes, then its one-process throughput run; the section's
    training table and the run's study.json hold processes, bytes/s, scaling efficiency and passes."""
    import json

    study = load_script("study")
    heldout = tmp_path / "heldout.txt"
    heldout.write_bytes(b"But soft, what light through yonder window breaks?\n" * 40)
    study.main(["--dry-run", "--processes", "2", "--only", "transformer", "--scaling-steps", "3",
                "--heldout", str(heldout), "--runs-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    info = json.loads((tmp_path / "runs" / "transformer" / "study.json").read_text())
    assert info["processes"] == 2 and info["bytes_per_s"] > 0 and info["bytes_per_s_1gpu"] > 0
    assert info["scaling_efficiency"] == pytest.approx(info["bytes_per_s"] / (2 * info["bytes_per_s_1gpu"]))
    assert 0 < info["passes"] < 1 and info["train_bytes"] > 0 and info["heldout_bpb"] > 0
    assert (tmp_path / "runs" / "transformer" / "eval" / "heldout.json").is_file()
    log = (tmp_path / "runs" / ".logs" / "transformer.log").read_text()
    assert "accelerate.commands.launch" in log.splitlines()[0] and "read it" in log
    results = (tmp_path / "docs" / "results.md").read_text()
    assert f"| transformer | 2 | {info['bytes_per_s']:,.0f} |" in results and f"| {info['heldout_bpb']:.4f} |" in results
    assert "- hnet_1stage: not trained yet" in results
    assert not list((tmp_path / "runs" / ".logs").glob(".tmp_*"))  # torchelastic's folders went with the runs


@pytest.mark.slow
def test_study_in_the_background_is_followed_and_looked_in_on(tmp_path, capsys):
    study = load_script("study")
    args = ["--dry-run", "--only", "mamba2", "--runs-dir", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
            "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    study.main([*args, "--background", "--follow", "300"])
    out = capsys.readouterr().out
    assert "started the grid in the background" in out and "mamba2: val bpb" in out and "read it" in out
    assert "--- the grid is not running; where each run stands:" in out and "  mamba2: finished;" in out
    assert "  transformer: not started" in out
    study.main([*args, "--follow", "0"])  # a later call looks in: the end of the log and the standing
    out = capsys.readouterr().out
    assert "mamba2: finished;" in out and "started the grid" not in out
