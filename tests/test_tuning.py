"""The launch-configuration picker: the fastest candidate wins and is kept; a candidate the GPU cannot run
is passed over; small problems, the interpreter and HNET_TUNE=0 take the default untimed."""

import pytest
import torch

tuning = pytest.importorskip("hnet.ops.triton.tuning")


@pytest.fixture
def picker(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("HNET_TUNE", raising=False)
    monkeypatch.setattr(tuning, "_chosen", {})
    monkeypatch.setattr(tuning, "_timings", {})
    costs = {1: 3.0, 2: 1.0, 3: 2.0}
    timed = []

    def fake_bench(fn, warmup, rep):
        fn()
        timed.append(launched[-1])
        if launched[-1] == 4:
            raise tuning.OutOfResources(300000, 232448, "shared memory")
        if launched[-1] == 5:
            raise tuning.CompilationError("src", None, "an op this Triton does not have")
        return costs[launched[-1]]

    launched = []
    monkeypatch.setattr(tuning, "do_bench", fake_bench)
    return launched, timed


def test_fastest_candidate_is_chosen_once_and_kept(picker):
    launched, timed = picker
    candidates = [dict(size=1), dict(size=4), dict(size=2), dict(size=5), dict(size=3), dict(size=2)]
    result = tuning.launch_fastest("k", ("shape",), 1 << 20, candidates, lambda size: launched.append(size) or size)
    # duplicates timed once; the one out of resources and the one that does not compile passed over
    assert result == 2 and timed == [1, 4, 2, 5, 3]
    launched.clear()
    assert tuning.launch_fastest("k", ("shape",), 1 << 20, candidates, lambda size: launched.append(size) or size) == 2
    assert launched == [2] and timed == [1, 4, 2, 5, 3]  # the second call launches the kept choice, untimed
    assert "size': 2" in tuning.tuning_report()[0]


@pytest.mark.parametrize("why", ["small", "interpreter", "switched off"])
def test_default_untimed(picker, monkeypatch, why):
    launched, timed = picker
    if why == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    if why == "switched off":
        monkeypatch.setenv("HNET_TUNE", "0")
    positions = 100 if why == "small" else 1 << 20
    assert tuning.launch_fastest("k", (), positions, [dict(size=1), dict(size=2)], lambda size: size) == 1
    assert timed == []


def test_default_that_cannot_run_is_an_error(picker):
    launched, _ = picker
    with pytest.raises(tuning.OutOfResources):
        tuning.launch_fastest("k", (), 1 << 20, [dict(size=4), dict(size=2)], lambda size: launched.append(size))


def test_verbose_prints_each_timed_candidate(picker, monkeypatch, capsys):
    launched, _ = picker
    monkeypatch.setenv("HNET_TUNE_VERBOSE", "1")
    tuning.launch_fastest("k", ("shape",), 1 << 20, [dict(size=1), dict(size=4), dict(size=2)],
                          lambda size: launched.append(size) or size)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": first")[0] for line in lines] == [f"tuning k ('shape',) {{'size': {s}}}" for s in (1, 4, 2)]
    assert lines[0].endswith("3000 us") and lines[1].endswith("inf us") and "first launch" in lines[2]


def test_sixteen_bit_inputs_time_only_four_warp_candidates():
    candidates = [dict(size=1, num_warps=4), dict(size=2, num_warps=8), dict(size=3), dict(size=4, num_warps=8)]
    assert tuning.for_dtype(candidates, torch.bfloat16) == [dict(size=1, num_warps=4), dict(size=3)]  # default first
    assert tuning.for_dtype(candidates, torch.float32) == candidates
