"""The learning-rate multipliers, against values worked out by hand. LambdaLR asks for step s before the
optimizer's step s + 1: the first step warms up from 1/warmup (not 0) and the last one reaches the floor."""

import math

import pytest

from hnet.training.schedule import lr_multiplier

# 50 steps: warmup 0.2 -> 10 steps; wsd decays over the last 0.2 -> 10 steps; cosine over the 40 after warmup.
STEPS, WARMUP, DECAY, FLOOR = 50, 0.2, 0.2, 0.1


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_linear_warmup(schedule):
    got = [lr_multiplier(s, STEPS, schedule, WARMUP, DECAY, FLOOR) for s in range(10)]
    assert got == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], abs=1e-12)
    # no warmup asked for: still one step of it, at the full rate
    assert lr_multiplier(0, STEPS, schedule, 0.0, DECAY, FLOOR) == 1.0


def test_cosine_from_one_down_to_the_floor():
    def at(step):
        return lr_multiplier(step, STEPS, "cosine", WARMUP, DECAY, FLOOR)

    # step s after warmup is (s - 9) / 40 of the way down; the value is 0.1 + 0.9 (1 + cos(pi x)) / 2
    assert at(9) == 1.0  # the end of the warmup: the top of the cosine
    assert at(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 40)), abs=1e-12)  # 0.99861...
    assert at(19) == pytest.approx(0.1 + 0.9 * (0.5 + math.sqrt(2) / 4), abs=1e-12)  # a quarter: 0.86820
    assert at(29) == pytest.approx(0.55, abs=1e-12)  # halfway: the middle of 1 and the floor
    assert at(39) == pytest.approx(0.1 + 0.9 * (0.5 - math.sqrt(2) / 4), abs=1e-12)  # three quarters: 0.23180
    assert at(49) == pytest.approx(FLOOR, abs=1e-12)  # the last step
    assert at(60) == pytest.approx(FLOOR, abs=1e-12)  # past the end it stays there
    assert all(at(s) > at(s + 1) for s in range(9, 49))
    assert lr_multiplier(29, STEPS, "cosine", WARMUP, DECAY) == pytest.approx(0.5, abs=1e-12)  # floor 0 by default


def test_wsd_holds_then_decays_linearly_to_the_floor():
    def at(step):
        return lr_multiplier(step, STEPS, "wsd", WARMUP, DECAY, FLOOR)

    assert [at(s) for s in range(9, 40)] == [1.0] * 31  # stable from the end of the warmup to step 40
    # the last 10 steps: 1 - 0.9 k / 10 for k = 1 .. 10
    assert [at(s) for s in range(40, 50)] == pytest.approx([0.91, 0.82, 0.73, 0.64, 0.55, 0.46, 0.37, 0.28, 0.19, 0.1], abs=1e-12)
    assert at(60) == pytest.approx(FLOOR, abs=1e-12)
    assert lr_multiplier(49, STEPS, "wsd", WARMUP, 0.0, FLOOR) == 1.0  # no decay: the rate stays up
