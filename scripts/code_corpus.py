"""A code corpus from the Python sources installed on this machine, split by package.

    python scripts/code_corpus.py --out .data/code                    # the standard library + site-packages
    python scripts/code_corpus.py --out .data/code --root DIR ... --held-out NAME

Every top-level package (a folder holding .py files) or top-level module of each root is one package:
of the standard library as `stdlib.NAME`, of site-packages as `NAME`. A package found in two roots is
taken from the first; a file whose bytes were taken already (vendored copies, two environments) is left
out, as are empty files and files over --max-file-bytes (generated tables). Whole packages go to one side:

  heldout/      one package no run trains or validates on (--held-out, else one drawn by --seed among
                those holding 0.5-2% of the bytes): an out-of-distribution test, `hnet eval RUN --data OUT/heldout`
  validation/   packages drawn in an order shuffled by --seed until they hold --val-fraction of the bytes
                (a package larger than 1.5x what is still wanted is passed over, so no giant decides it)
  train/        the rest

Each file is copied as one document (the `text` source reads a folder, one document a file) under a flat
name, `NNNNNN.PACKAGE.path.inside.py`, numbered in an order shuffled by --seed, so that the first
validation batches of an evaluation mix packages. OUT/manifest.json lists the roots, the split, and every
package taken: its root, side, files (source path -> copied name) and bytes; and what was left out.
A run reads it as `data.path: OUT/train, data.val_path: OUT/validation` (the `code` presets do).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SKIPPED_DIRS = {"__pycache__", "site-packages", "dist-packages", "lib-dynload"}
HELD_OUT_SHARE = (0.005, 0.02)  # the share of all bytes a drawn held-out package holds
SPLITS = ("train", "validation", "heldout")


@dataclass
class Package:
    name: str
    root: Path
    files: list[Path] = field(default_factory=list)  # kept, in sorted order
    nbytes: int = 0


def default_roots() -> list[Path]:
    paths = [sysconfig.get_paths()["stdlib"], *site.getsitepackages(), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        paths.append(site.getusersitepackages())
    roots = []
    for p in map(Path, paths):
        if p.is_dir() and p.resolve() not in [r.resolve() for r in roots]:
            roots.append(p)
    return roots


def top_level(root: Path) -> list[tuple[str, Path]]:
    """(name, path) of the packages and modules directly under `root`."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in SKIPPED_DIRS or entry.name.endswith((".dist-info", ".egg-info")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found.append((entry.name, entry))
        elif entry.is_file() and entry.suffix == ".py":
            found.append((entry.stem, entry))
    return found


def python_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.py") if p.is_file() and not p.is_symlink()
                  and not any(part in SKIPPED_DIRS or part.startswith(".") for part in p.relative_to(path).parts[:-1]))


def collect(roots: list[Path], max_file_bytes: int) -> tuple[list[Package], dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    packages, seen_names, seen_bytes = [], set(), set()
    skipped = {"duplicate_files": 0, "empty_files": 0, "too_large_files": 0, "packages_in_an_earlier_root": 0}
    for root in roots:
        prefix = "stdlib." if root.resolve() == stdlib else ""
        for name, path in top_level(root):
            name = prefix + name
            if name in seen_names:
                skipped["packages_in_an_earlier_root"] += 1
                continue
            package = Package(name, root)
            for file in python_files(path):
                size = file.stat().st_size
                if size == 0 or size > max_file_bytes:
                    skipped["empty_files" if size == 0 else "too_large_files"] += 1
                    continue
                digest = hashlib.sha256(file.read_bytes()).digest()
                if digest in seen_bytes:
                    skipped["duplicate_files"] += 1
                    continue
                seen_bytes.add(digest)
                package.files.append(file)
                package.nbytes += size
            if package.files:
                seen_names.add(name)
                packages.append(package)
    return packages, skipped


def split_packages(packages: list[Package], val_fraction: float, seed: int, held_out: str | None) -> dict[str, list[Package]]:
    total = sum(p.nbytes for p in packages)
    rng = np.random.default_rng(seed)
    if held_out is not None:
        chosen = [p for p in packages if p.name == held_out]
        if not chosen:
            raise SystemExit(f"--held-out {held_out}: no such package among the {len(packages)} found")
    else:
        low, high = HELD_OUT_SHARE
        candidates = [p for p in packages if low * total <= p.nbytes <= high * total]
        chosen = [candidates[rng.integers(len(candidates))]] if candidates else []
    rest = [p for p in packages if p not in chosen]
    target, validation = val_fraction * total, []
    for i in rng.permutation(len(rest)).tolist():
        wanted = target - sum(p.nbytes for p in validation)
        if wanted <= 0:
            break
        if rest[i].nbytes <= 1.5 * wanted:
            validation.append(rest[i])
    train = [p for p in rest if p not in validation]
    if not train or not validation:
        raise SystemExit(f"{len(packages)} packages cannot give both a training and a validation side; give more roots")
    return {"train": train, "validation": validation, "heldout": chosen}


def write_corpus(out: Path, sides: dict[str, list[Package]], seed: int, manifest: dict) -> dict:
    """Copy every side's files under their flat names (see the module docstring) and write the manifest."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed + 1)
    listed = []
    for side in SPLITS:
        folder = tmp / side
        folder.mkdir(parents=True)
        files = [(package, file) for package in sides[side] for file in package.files]
        names = {}
        for number, i in enumerate(rng.permutation(len(files)).tolist()):
            package, file = files[i]
            inside = file.relative_to(package.root)
            name = f"{number:06d}.{package.name}.{'.'.join(inside.parts[1:] if len(inside.parts) > 1 else inside.parts)}"
            shutil.copyfile(file, folder / name)
            names[file] = name
        for package in sides[side]:
            listed.append({"package": package.name, "root": str(package.root), "split": side, "bytes": package.nbytes,
                           "files": {str(f.relative_to(package.root)): names[f] for f in package.files}})
        manifest["splits"][side] = {"packages": len(sides[side]), "files": len(files),
                                    "bytes": sum(p.nbytes for p in sides[side])}
    manifest["packages"] = listed
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # whole or not at all
    return manifest


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python scripts/code_corpus.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--root", action="append", type=Path, help="a folder of packages (repeatable); "
                        "default: this Python's standard library and site-packages")
    parser.add_argument("--held-out", help="the package kept out of training and validation")
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-file-bytes", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction {args.val_fraction}: must be in (0, 1)")
    roots = args.root or default_roots()
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        parser.error(f"--root: not a folder: {', '.join(missing)}")
    packages, skipped = collect(roots, args.max_file_bytes)
    sides = split_packages(packages, args.val_fraction, args.seed, args.held_out)
    manifest = {"python": sys.version.split()[0], "roots": [str(r) for r in roots], "seed": args.seed,
                "val_fraction": args.val_fraction, "max_file_bytes": args.max_file_bytes,
                "held_out": [p.name for p in sides["heldout"]], "skipped": skipped, "splits": {}}
    manifest = write_corpus(args.out, sides, args.seed, manifest)
    for side, numbers in manifest["splits"].items():
        print(f"{side}: {numbers['packages']} packages, {numbers['files']:,} files, {numbers['bytes']:,} bytes")
    print(f"held out: {', '.join(manifest['held_out']) or 'none'}; left out: "
          + ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in skipped.items()) + f"; wrote {args.out}/manifest.json")
    return manifest


if __name__ == "__main__":
    main()
