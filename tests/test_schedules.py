"""Weight / temperature schedules produce the documented values."""

import math

import pytest

from torchrec_kd.config import ScheduleConfig
from torchrec_kd.losses.schedules import check_schedule, schedule_value


@pytest.mark.parametrize("kind, start, expected", [
    ("constant", 5.0, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
    ("linear", 1.0, [1.0, 1.25, 1.5, 1.75, 2.0, 2.0]),
    ("warmup", 9.0, [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]),
    ("cosine", 1.0, [1.0, 1 + 0.5 * (1 - math.cos(math.pi / 4)), 1.5, 1 + 0.5 * (1 - math.cos(3 * math.pi / 4)), 2.0, 2.0]),
])
def test_documented_values(kind, start, expected):
    cfg = ScheduleConfig(kind=kind, start=start, steps=4)
    assert [schedule_value(cfg, 2.0, s) for s in range(6)] == pytest.approx(expected)


def test_delay_holds_the_start_and_cosine_midpoint():
    cfg = ScheduleConfig(kind="linear", start=0.0, steps=2, delay=3)
    assert [schedule_value(cfg, 1.0, s) for s in range(7)] == pytest.approx([0, 0, 0, 0, 0.5, 1, 1])
    assert schedule_value(ScheduleConfig(kind="cosine", start=1.0, steps=10), 0.0, 5) == pytest.approx(0.5)


@pytest.mark.parametrize("cfg, field", [(ScheduleConfig(kind="linear", steps=0), "steps"),
                                        (ScheduleConfig(kind="warmup", steps=3, delay=-1), "delay"),
                                        (ScheduleConfig(kind="cosine", steps=3, start=float("inf")), "start")])
def test_invalid_schedules_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=rf"x\.y\.{field}"):
        check_schedule(cfg, "x.y")
