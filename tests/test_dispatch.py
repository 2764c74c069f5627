"""`kernel_path` sets one kernel path for a block and leaves HNET_REFERENCE as the user had it."""

import os

import pytest

from hnet.ops import dispatch


@pytest.mark.parametrize("before", [None, "0", "1"])
def test_kernel_path_restores_hnet_reference(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("HNET_REFERENCE", raising=False)
    else:
        monkeypatch.setenv("HNET_REFERENCE", before)
    with dispatch.kernel_path("reference"):
        assert dispatch.reference_requested()
    assert os.environ.get("HNET_REFERENCE") == before
    with dispatch.kernel_path("fast"):
        assert "HNET_REFERENCE" not in os.environ
    assert os.environ.get("HNET_REFERENCE") == before
    with pytest.raises(RuntimeError), dispatch.kernel_path("reference"):
        raise RuntimeError("a failing block")
    assert os.environ.get("HNET_REFERENCE") == before


def test_kernel_path_forces_triton_only_on_the_fast_path_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with dispatch.kernel_path("fast"):
        assert dispatch._forced
    with dispatch.kernel_path("reference"):
        assert not dispatch._forced
    monkeypatch.delenv("TRITON_INTERPRET")
    with dispatch.kernel_path("fast"):
        assert not dispatch._forced
    with pytest.raises(ValueError, match="expected one of 'fast', 'unfused', 'reference'"), dispatch.kernel_path("triton"):
        pass
