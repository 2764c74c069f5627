"""The package's layers import downward only (../shared/ARCHITECTURE.md, "Rules of the house"): read from
the source, so an upward import fails here before it becomes a cycle or a hidden dependency."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hnet"

# what each subpackage must not import (its consumers, and for the model's parts, data and tooling)
CONSUMERS = {"hnet.training", "hnet.eval", "hnet.generation", "hnet.analysis", "hnet.cli"}
FORBIDDEN = {
    "ops": {"hnet.layers", "hnet.chunking", "hnet.models", "hnet.data", *CONSUMERS},
    "layers": {"hnet.chunking", "hnet.models", "hnet.data", *CONSUMERS},
    "chunking": {"hnet.models", "hnet.data", *CONSUMERS},
    "models": {"hnet.data", *CONSUMERS - {"hnet.generation"}},  # model.generate() imports generation on use
    "data": {"hnet.layers", "hnet.chunking", "hnet.models", *CONSUMERS},
    "analysis": {"hnet.training", "hnet.eval", "hnet.generation", "hnet.cli"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_upward_imports():
    upward = []
    for sub, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            for name in imported_modules(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    upward.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not upward, "\n".join(upward)


def test_layers_know_no_hnet_config():
    for path in sorted((PACKAGE / "layers").rglob("*.py")):
        assert "hnet.config" not in imported_modules(path), path


def test_only_the_command_line_imports_the_harness_adapter():
    """hnet.eval.harness imports lm_eval, an optional extra: the package imports it only where `hnet lm-eval`
    runs, so everything else works without lm-eval installed."""
    importers = [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name != "harness.py" and any(name == "hnet.eval.harness" or name == "lm_eval"
                                                      or name.startswith("lm_eval.") for name in imported_modules(path))]
    assert importers == ["hnet/cli.py"], importers


def test_importing_the_package_does_not_import_lm_eval():
    import subprocess
    import sys

    code = "import sys, hnet, hnet.eval, hnet.cli, hnet.generation; sys.exit('lm_eval' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent).returncode == 0
