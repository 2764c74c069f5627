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
    assert study.config_changes(runs / "mamba2", doubled["mamba2"]) == ["train.checkpoint_every: 3 -> 6", "train.max_steps: 3 -> 6"]

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
