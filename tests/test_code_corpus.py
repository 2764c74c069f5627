"""scripts/code_corpus.py on a small fake tree: whole packages to one side, duplicates and empty or huge
files left out, a manifest that adds up, and a corpus the data pipeline reads as train / validation."""

import json

from hnet.config import DataConfig
from hnet.data import read_split
from tiny_runs import load_script


def fake_site_packages(root):
    files = {
        "alpha/__init__.py": b"",  # empty: left out
        "alpha/core.py": b"def core():\n    return 1\n" * 40,
        "alpha/sub/helpers.py": b"import os\n" * 50,
        "alpha/__pycache__/core.cpython-311.py": b"cached = 1\n",  # never a source
        "beta/__init__.py": b"BETA = 2\n" * 30,
        "beta/util.py": b"def util(x):\n    return x\n" * 30,
        "gamma.py": b"print('gamma')\n" * 60,
        "delta/copy_of_core.py": b"def core():\n    return 1\n" * 40,  # alpha/core.py again: left out
        "delta/own.py": b"class Delta:\n    pass\n" * 45,
        "epsilon/big.py": b"x = 1\n" * 400,  # over --max-file-bytes
        "epsilon/small.py": b"y = 2\n" * 70,
        "zeta/zeta.py": b"z = 3\n" * 80,
        "beta-1.0.dist-info/RECORD.py": b"not a package\n",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_code_corpus_splits_by_package_and_lists_what_it_took(tmp_path, capsys):
    fake_site_packages(tmp_path / "site")
    out = tmp_path / "code"
    script = load_script("code_corpus")
    args = ["--out", str(out), "--root", str(tmp_path / "site"), "--held-out", "beta", "--val-fraction", "0.2",
            "--max-file-bytes", "2000"]
    manifest = script.main(args)
    assert "heldout: 1 packages, 2 files" in capsys.readouterr().out

    assert manifest["held_out"] == ["beta"]
    assert manifest["skipped"] == {"duplicate_files": 1, "empty_files": 1, "too_large_files": 1,
                                   "packages_in_an_earlier_root": 0}
    by_name = {p["package"]: p for p in manifest["packages"]}
    assert sorted(by_name) == ["alpha", "beta", "delta", "epsilon", "gamma", "zeta"]
    assert sorted(by_name["alpha"]["files"]) == ["alpha/core.py", "alpha/sub/helpers.py"]
    assert list(by_name["delta"]["files"]) == ["delta/own.py"] and list(by_name["epsilon"]["files"]) == ["epsilon/small.py"]
    assert by_name["beta"]["split"] == "heldout"
    assert {p["split"] for p in manifest["packages"]} == {"train", "validation", "heldout"}

    # every file copied once, under its side, named after its package; the manifest adds up to the folders
    for side in ("train", "validation", "heldout"):
        copied = sorted(p.name for p in (out / side).iterdir())
        listed = sorted(name for p in manifest["packages"] if p["split"] == side for name in p["files"].values())
        assert copied == listed
        assert manifest["splits"][side]["bytes"] == sum((out / side / name).stat().st_size for name in copied)
        assert manifest["splits"][side]["files"] == len(copied)
        for package in (p for p in manifest["packages"] if p["split"] == side):
            assert all(name.split(".", 1)[1].startswith(package["package"] + ".") for name in package["files"].values())
    assert (out / "train" / by_name["alpha"]["files"]["alpha/sub/helpers.py"]).read_bytes() == b"import os\n" * 50
    assert json.loads((out / "manifest.json").read_text()) == manifest

    # the data pipeline reads it as a corpus split by its maker; the same call gives the same corpus
    train, val = read_split(DataConfig(path=str(out / "train"), val_path=str(out / "validation")))
    assert sum(len(d.text) for d in train) == manifest["splits"]["train"]["bytes"]
    assert sum(len(d.text) for d in val) == manifest["splits"]["validation"]["bytes"]
    assert script.main(args) == manifest
