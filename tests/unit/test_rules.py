"""Rule templating, grouping into vector queries, conditions and the state machine."""

from __future__ import annotations

import math

import pytest

from rollbackd.config import Rule
from rollbackd.rules import (
    Reading,
    RuleStatus,
    SelectorError,
    TemplateError,
    check_template,
    failure_ratio,
    judge,
    parse_selector,
    plan_groups,
    readings_from,
    render,
    step,
)


def make(**kwargs: object) -> Rule:
    base: dict[str, object] = {"name": "r", "impact": "high", "query": "q"}
    base.update(kwargs)
    return Rule(**base)  # type: ignore[arg-type]


def test_services_sharing_label_keys_are_one_query() -> None:
    """A thousand services with job selectors are evaluated by one query per rule."""
    selectors = {f"svc-{i}": f'job="svc-{i}"' for i in range(1000)}
    groups = plan_groups(selectors, service_label="job")
    assert len(groups) == 1
    assert groups[0].keys == ("job",)
    assert groups[0].service_of({"job": "svc-7", "instance": "x"}) == "svc-7"


def test_group_selector_matches_only_its_services() -> None:
    """The merged selector is an anchored alternation of the services' values."""
    groups = plan_groups({"a.b": 'job="a.b"', "c": 'job="c"'}, service_label="job")
    assert groups[0].selector == r"job=~`a\.b|c`"


def test_services_with_other_matchers_get_their_own_query() -> None:
    """A selector with != or =~ cannot be merged safely and is queried alone."""
    groups = plan_groups(
        {"a": 'job="a"', "b": 'job="b", path!="/health"', "c": 'job=~"c.*"'},
        service_label="job",
    )
    assert len(groups) == 3
    lone = next(g for g in groups if "b" in g.services)
    assert 'path!="/health"' in lone.selector


def test_two_services_selecting_the_same_series_are_refused() -> None:
    """Ambiguous selectors would mix two services' data: an error, not a guess."""
    with pytest.raises(SelectorError, match="select the same series"):
        plan_groups({"a": 'job="x"', "b": 'job="x"'}, service_label="job")


def test_bad_selector_is_reported() -> None:
    """A selector that is not label matchers says where it stopped making sense."""
    with pytest.raises(SelectorError, match="cannot read a label matcher"):
        parse_selector("job=api")


def test_templating_expands_selector_by_and_by_le() -> None:
    """{{selector}}, {{by}} and {{by_le}} expand to matchers and grouping clauses."""
    query = "sum {{by}} (rate(x{ {{selector}} }[1m])) + sum {{by_le}} (y)"
    out = render(query, selector='job="a"', keys=["job"])
    assert out == 'sum by (job) (rate(x{ job="a" }[1m])) + sum by (job, le) (y)'


def test_unknown_placeholder_is_an_error() -> None:
    """A misspelt placeholder is caught when rules are checked, not at 3 a.m."""
    with pytest.raises(TemplateError, match="unknown placeholder"):
        check_template("rate(x{ {{selecter}} }[1m])")


def test_series_are_matched_to_services_and_missing_ones_read_empty() -> None:
    """Each service gets its own series' value; a service without one has no data."""
    group = plan_groups({"a": 'job="a"', "b": 'job="b"'}, service_label="job")[0]
    readings = readings_from(group, [({"job": "a"}, 0.3), ({"job": "zzz"}, 9.0)])
    assert readings["a"].value == 0.3
    assert readings["b"].no_data == "empty"


def test_min_traffic_filter_turns_quiet_services_into_no_data() -> None:
    """Services absent from the min_traffic result are below minimum traffic."""
    group = plan_groups({"a": 'job="a"', "b": 'job="b"'}, service_label="job")[0]
    readings = readings_from(group, [({"job": "a"}, 1.0), ({"job": "b"}, 1.0)], traffic={"a"})
    assert readings["a"].value == 1.0
    assert readings["b"].no_data == "low_traffic"


def test_nan_is_no_data() -> None:
    """A NaN (0/0 on a quiet service) is no data, never a breach."""
    group = plan_groups({"a": 'job="a"'}, service_label="job")[0]
    reading = readings_from(group, [({"job": "a"}, math.nan)])["a"]
    assert reading.no_data == "nan"
    assert judge(make(above=0.1), reading, baseline=None).breached is False


@pytest.mark.parametrize(
    ("condition", "value", "baseline", "breached"),
    [
        ({"above": 0.1}, 0.11, None, True),
        ({"above": 0.1}, 0.1, None, False),
        ({"below": 5.0}, 4.0, None, True),
        ({"below": 5.0}, 6.0, None, False),
        ({"above_baseline": 1.5}, 0.31, 0.2, True),
        ({"above_baseline": 1.5}, 0.29, 0.2, False),
        ({"below_baseline": 0.5}, 40.0, 100.0, True),
        ({"below_baseline": 0.5}, 60.0, 100.0, False),
    ],
)
def test_each_condition_compares_as_documented(
    condition: dict[str, float], value: float, baseline: float | None, breached: bool
) -> None:
    """above, below, above_baseline and below_baseline compare strictly."""
    verdict = judge(make(**condition), Reading(value=value), baseline=baseline)
    assert verdict.breached is breached


def test_baseline_condition_without_baseline_has_no_data() -> None:
    """No baseline (or a zero one) means the ratio is unknown: no data."""
    rule = make(above_baseline=1.5)
    assert judge(rule, Reading(value=9.0), baseline=None).no_data == "no_baseline"
    assert judge(rule, Reading(value=9.0), baseline=0.0).no_data == "no_baseline"


def test_failure_ratio_counts_probes_in_the_window() -> None:
    """failure_ratio_above compares the share of failed probes over the window."""
    samples = [(0.0, False), (50.0, True), (60.0, False), (70.0, False)]
    assert failure_ratio(samples, now=70.0, window=30.0).value == pytest.approx(2 / 3)
    assert failure_ratio([], now=70.0, window=30.0).no_data == "no_samples"


def test_rule_fires_only_after_holding_for_its_for() -> None:
    """inactive -> pending -> firing once the breach has held for `for`."""
    rule = make(above=0.1)
    status = RuleStatus()
    breach = judge(rule, Reading(value=1.0), baseline=None)
    assert step(status, breach, now=0, hold=30).current == "pending"  # type: ignore[union-attr]
    assert step(status, breach, now=20, hold=30) is None
    assert step(status, breach, now=30, hold=30).current == "firing"  # type: ignore[union-attr]
    calm = judge(rule, Reading(value=0.0), baseline=None)
    assert step(status, calm, now=40, hold=30).current == "resolved"  # type: ignore[union-attr]
    assert step(status, calm, now=50, hold=30).current == "inactive"  # type: ignore[union-attr]


def test_failed_query_keeps_a_firing_rule_firing() -> None:
    """Monitoring going away is not a recovery."""
    status = RuleStatus(state="firing", active_since=0, fired_at=0)
    assert (
        step(
            status, judge(make(above=0.1), Reading(no_data="error"), baseline=None), now=10, hold=0
        )
        is None
    )
    assert status.state == "firing"
    assert status.error_since == 10


def test_rule_needs_exactly_one_signal_and_one_condition() -> None:
    """Rules with two conditions or no signal are refused with a clear message."""
    with pytest.raises(ValueError, match="exactly one condition"):
        make(above=1, below=2)
    with pytest.raises(ValueError, match="exactly one signal"):
        Rule(name="r", impact="high", above=1)  # type: ignore[call-arg]
