"""Placement constraints of a deploy call (the swarm backend's `constraints`)."""

import pytest
from hypothesis import given, strategies as st

from clipper_core.config import ModelVersion
from clipper_core.containers.base import replica_spec
from clipper_core.deployment import check_constraints
from clipper_core.errors import ConfigError


@pytest.mark.parametrize("ok", [["node.labels.gpu==true"], ["node.hostname != edge-1"],
                                ["node.role==manager", "engine.labels.os==linux"], []])
def test_valid_constraints_pass(ok):
    assert check_constraints(ok) == ok


@pytest.mark.parametrize("bad", ["node.labels.gpu==true", [1], ["gpu"], ["a==b c"],
                                 ["a=b"], ["==x"], [["a==b"]], ["a==b"] * 33, {"a": "b"}])
def test_invalid_constraints_name_the_expected_form(bad):
    with pytest.raises(ConfigError, match="ATTRIBUTE==VALUE"):
        check_constraints(bad)


@given(st.lists(st.text(max_size=20), max_size=4))
def test_any_list_of_text_is_accepted_or_a_config_error(xs):
    try:
        assert check_constraints(xs) == xs
    except ConfigError:
        pass


def test_constraints_reach_every_replica_spec():
    mv = ModelVersion("m", "1", "doubles", -1, (), {"kind": "command", "argv": ["x"],
                                                     "constraints": ["node.labels.a==b"]}, 2, ())
    assert [replica_spec(mv, "tcp://h:1", f"i{i}", i).constraints for i in (0, 1)] == [
        ("node.labels.a==b",)] * 2
