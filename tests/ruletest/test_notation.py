"""The expanding notation of input series and probes, read as promtool reads it."""

from __future__ import annotations

import math

import pytest

from rollbackd.backfill import SeriesKey
from rollbackd.ruletest import STALE, expand_probes, expand_values, parse_series


def test_increments_repeat_n_more_times_after_the_first_value() -> None:
    """`0+10x3` is four samples, as in promtool: the start and three steps."""
    assert expand_values("0+10x3") == [0.0, 10.0, 20.0, 30.0]


def test_negative_increments_count_down() -> None:
    """`10-2x3` and `-1-2x2` step downwards."""
    assert expand_values("10-2x3") == [10.0, 8.0, 6.0, 4.0]
    assert expand_values("-1-2x2") == [-1.0, -3.0, -5.0]


def test_a_repeated_value_and_plain_values_mix() -> None:
    """`1x2 5 7` is 1, 1, 1, 5, 7."""
    assert expand_values("1x2 5 7") == [1.0, 1.0, 1.0, 5.0, 7.0]


def test_gaps_count_exactly_n_and_stale_is_a_marker() -> None:
    """`_x2` is two missing samples (not three); `stale` is its own marker."""
    assert expand_values("1 _x2 stale 2") == [1.0, None, None, STALE, 2.0]
    assert expand_values("_") == [None]


def test_special_values_and_exponents() -> None:
    """Inf, -Inf, NaN and 1e3 read as numbers."""
    values = expand_values("Inf -Inf 1e3 NaN")
    assert values[:3] == [math.inf, -math.inf, 1000.0]
    assert isinstance(values[3], float)
    assert math.isnan(values[3])


@pytest.mark.parametrize("text", ["1+2", "x3", "abc", "1+x3", "0+300x", "ok"])
def test_unreadable_values_name_the_item(text: str) -> None:
    """An item the notation does not know is an error quoting it."""
    with pytest.raises(ValueError, match="cannot read"):
        expand_values(text)


def test_probe_schedules_follow_the_same_xn_rule() -> None:
    """`okx2 fail x1 _x2` is ok ok ok fail fail, then two ticks without a result."""
    assert expand_probes("okx2 fail x1 _x2") == [True, True, True, False, False, None, None]


def test_series_are_read_as_promtool_writes_them() -> None:
    """Metric name and `=` labels; other matchers make no sense for input."""
    assert parse_series('http_requests_total{job="a", code="500"}') == SeriesKey.of(
        "http_requests_total", {"job": "a", "code": "500"}
    )
    assert parse_series("up") == SeriesKey("up")
    with pytest.raises(ValueError, match="labels are set with ="):
        parse_series('up{job=~"a.*"}')
