"""scripts/routing_study.py end to end at tiny size: two arms in parallel processes, then the report."""

import json
import shutil

import pytest
from tiny_runs import load_script


def load_study():
    return load_script("routing_study")


@pytest.mark.slow
def test_arms_train_in_parallel_and_the_report_reads_them(tmp_path, capsys):
    study = load_study()
    runs = tmp_path / "runs"
    study.train_arms(["base", "alpha0.1"], runs, study.EVALS * 8 * 128, 2, {}, dry_run=True)
    for arm in ("base", "alpha0.1"):
        config = json.loads((runs / arm / "arm.json").read_text())
        assert config["train"]["max_steps"] == study.EVALS and not (runs / arm / "run" / "checkpoints").exists()
        assert study.finished(runs / arm, config)
    assert json.loads((runs / "alpha0.1" / "arm.json").read_text())["train"]["ratio_loss_weight"] == 0.1
    budget, base = study.EVALS * 8 * 128, json.loads((runs / "base" / "arm.json").read_text())
    wide = study.arm_config("batch4x", budget, {}, dry_run=True)
    assert wide["train"]["batch_size"] == 4 * base["train"]["batch_size"]  # 4x the sequences a step
    assert wide["train"]["max_steps"] == max(study.EVALS, base["train"]["max_steps"] // 4)  # the same bytes
    study.train_arms(["base"], runs, study.EVALS * 8 * 128, 1, {}, dry_run=True)  # finished: skipped
    assert "base: finished earlier, skipped" in capsys.readouterr().out

    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n<!-- section: routing -->\nold\n<!-- section: dna -->\nkept\n")
    study.write_report(runs, doc, "routing_study.py --dry-run", "What the figures show.")
    text = doc.read_text()
    assert "\nold\n" not in text and text.endswith("What the figures show.\n\n<!-- section: dna -->\nkept\n")
    rows = [line for line in text.splitlines() if line.startswith(("| base |", "| alpha0.1 |"))]
    assert len(rows) == 2 and all("| 0.00819M |" in r for r in rows)  # 8 steps of 8 x 128 bytes
    for name in ("f1_vs_bytes.png", "bpb_vs_bytes.png", "near_threshold_vs_bytes.png"):
        assert (tmp_path / "routing" / name).read_bytes()[:4] == b"\x89PNG"

    # a second study at another budget: its arms join the table, an arm seen before named by its budget
    other = tmp_path / "other"
    shutil.copytree(runs / "base", other / "base")
    config = json.loads((other / "base" / "arm.json").read_text())
    config["train"]["max_steps"] *= 2
    (other / "base" / "arm.json").write_text(json.dumps(config))
    study.write_report([runs, other], doc, "routing_study.py --report", None)
    rows = [line.split(" | ")[0] for line in doc.read_text().splitlines() if line.startswith("| base")]
    assert rows == ["| base", "| base@0.0164M"]


def test_an_unknown_arm_is_refused(capsys):
    with pytest.raises(SystemExit):
        load_study().main(["--arms", "base,alpha9"])
    assert "unknown arm(s) alpha9" in capsys.readouterr().err
