"""The package as a user installs it: a wheel, installed away from the repository, run in an empty folder.
The presets and samples must come with it, and a preset must be found by name from any directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hnet.config import PRESETS_DIR, RunConfig, find_config

REPO = Path(__file__).resolve().parents[1]


def test_a_preset_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("text/hnet_1stage_tiny") == find_config("text/hnet_1stage_tiny.json") == \
        PRESETS_DIR / "text" / "hnet_1stage_tiny.json"
    assert RunConfig.from_json("text/hnet_1stage_tiny").data.path == "package:tinyshakespeare.txt"
    # a preset's relative data path is the package's neighbour, not the working directory's
    small = RunConfig.from_json("text/hnet_1stage_small").data.path
    assert Path(small) == REPO / ".." / "shared" / "data" / "large" / "text" / "books_en.jsonl.gz"
    with pytest.raises(ValueError, match=r"text/nope: config file does not exist, and it is not a preset name"):
        find_config("text/nope")


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_trains_a_preset_by_name_in_an_empty_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the repository
    shutil.copytree(REPO / "hnet", source / "hnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("hnet_lm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hnet/configs/text/hnet_1stage_tiny.json" in names and "hnet/samples/tinyshakespeare.txt" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HNET_CACHE=str(tmp_path / "cache"))  # torch etc. from this venv

    def hnet(*args):
        return subprocess.run([sys.executable, "-m", "hnet.cli", *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=120)

    where = subprocess.run([sys.executable, "-c", "import hnet; print(hnet.__file__)"], cwd=empty, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the installed copy, not the repository
    done = hnet("train", "text/hnet_1stage_tiny", "--out", "run", "--max-steps", "1", "--set", "train.eval_batches=1",
                "--set", "data.max_bytes=20000")
    assert done.returncode == 0, done.stderr
    assert (empty / "run" / "checkpoints" / "step_000001" / "model.safetensors").is_file()
    missing = hnet("train", "text/no_such_preset", "--out", "run2")
    assert missing.returncode == 2 and "text/no_such_preset: config file does not exist" in missing.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["run"]


def test_ci_installs_what_the_readme_test_command_installs():
    """CI runs the README's test command; both install the `test` extra, which brings lm-eval for the harness tests."""
    import re
    import tomllib

    readme_extras = re.findall(r"-e '\.\[([\w,]+)\]' && \.venv/bin/python -m pytest", (REPO / "README.md").read_text())
    ci_extras = re.findall(r"install -q -e '\.\[([\w,]+)\]'", (REPO / ".ci" / "run").read_text())
    assert readme_extras == ci_extras == ["test"]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r for r in extras["test"] if r.startswith("lm_eval")] == extras["eval"]
