import importlib.util
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers (golden.py) import as plain modules
if not torch.cuda.is_available():
    # Triton reads this when its kernels are defined; some torch modules import triton early.
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton"):
    import triton_launches  # every launch recorded, for test_triton_compiles.py

    triton_launches.record()


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Decoding tiny models is hundreds of small ops per byte: a second thread only adds synchronisation,
    which stalls badly when other processes share the cores (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_trained_hnet(tmp_path_factory):
    """A tiny H-Net run trained a few steps on the bundled sample (once per session): the run directory, for
    the tests that evaluate, export and compare a run as a user would. A test that writes into a run (eval/,
    lm_eval/) copies it first (shutil.copytree), so that no test sees another's results."""
    import json

    from hnet.cli import main
    from tiny_runs import tiny_hnet

    root = tmp_path_factory.mktemp("tiny_trained_hnet")
    config = tiny_hnet(root, max_steps=4, eval_every=4, checkpoint_every=4)
    (root / "config.json").write_text(json.dumps(config))
    assert main(["train", str(root / "config.json"), "--out", str(root / "run")]) == 0
    return root / "run"


def pytest_collection_modifyitems(items):
    """test_triton_compiles.py last: it compiles the launches of every test before it."""
    items.sort(key=lambda item: item.path.name == "test_triton_compiles.py")
