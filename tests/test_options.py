"""Typed ``--set`` options: one parser (``core.options``) for adapters, protocols and metrics."""

from __future__ import annotations

import pytest

from varbench.core.options import Param, parse_options, parse_sets
from varbench.errors import UsageError
from varbench.metrics import METRIC_OPTIONS, metric_options
from varbench.plan.protocol import OVERRIDABLE
from varbench.runner import split_sets


def test_each_type_parses_and_errors_name_option_type_and_allowed_values():
    table = [
        Param("n", int),
        Param("q", float),
        Param("flag", bool),
        Param("g", float, (1.0,), sweep=True),
        Param("mode", str, "a", choices=("a", "b")),
    ]
    got = parse_options(
        {"n": "3", "q": "0.5", "flag": "yes", "g": "1,4.5", "mode": "b"}, table, "things"
    )
    assert got == {"n": 3, "q": 0.5, "flag": True, "g": (1.0, 4.5), "mode": "b"}
    for raw, pattern in [
        ({"n": "3.5"}, r"--set n='3\.5': expected integer"),
        ({"q": "x"}, r"--set q='x': expected number"),
        ({"flag": "maybe"}, r"--set flag='maybe': expected boolean"),
        ({"g": "1,,x"}, r"--set g='1,,x': expected comma-separated list of numbers"),
        ({"mode": "c"}, r"--set mode='c': choose one of a, b"),
        (
            {"nn": "1"},
            r"--set nn=…: unknown option\. Did you mean 'n'\?.*things take: n \(integer\)",
        ),
    ]:
        with pytest.raises(UsageError, match=pattern):
            parse_options(raw, table, "things")
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_sets(["novalue"])


def test_float_metric_options_are_floats_and_routed_by_the_runner():
    """The runner used to answer "expected an integer" for vendi_q and mifid_eps."""
    proto, metric, own = split_sets(
        {"vendi_q": "0.5", "mifid_eps": "0.2", "prc_k": "5", "k": "2"}, {}
    )
    assert metric == {"vendi_q": 0.5, "mifid_eps": 0.2, "prc_k": 5}
    assert type(metric["prc_k"]) is int and proto == {"k": "2"} and own == {}
    with pytest.raises(UsageError, match=r"--set vendi_q='abc': expected number"):
        split_sets({"vendi_q": "abc"}, {})
    with pytest.raises(UsageError, match=r"--set prc_k='2\.5': expected integer"):
        split_sets({"prc_k": "2.5"}, {})
    with pytest.raises(UsageError, match=r"metrics take: .*vendi_q \(number\)"):
        split_sets({"vendi": "1"}, {})
    # recorded values (result.json) come back typed; a float where an int belongs is refused
    assert metric_options({"prc_k": 3, "vendi_q": 1}, "result.json") == {"prc_k": 3, "vendi_q": 1.0}
    with pytest.raises(UsageError, match=r"result.json: prc_k=3\.5: expected integer"):
        metric_options({"prc_k": 3.5}, "result.json")


def test_tables_declare_unique_typed_options():
    for table in (METRIC_OPTIONS, OVERRIDABLE):
        names = [p.name for p in table]
        assert len(names) == len(set(names)) and all(
            p.type in (int, float, str, bool) for p in table
        )
