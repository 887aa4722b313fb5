"""Debian relation fields, shared by the builder (strict) and pulld (lenient)."""

import pytest

from push.debian import InvalidRelation, parse_relations


def test_lenient_reads_what_control_files_say():
    lenient = parse_relations("libc6 (>= 2.36), python3:any (> 3.9) | pypy3, foo [amd64] <!nocheck>")
    assert [str(r) for r in lenient] == ["libc6 (>= 2.36)", "python3:any (>= 3.9) | pypy3", "foo"]
    assert lenient[1].alternatives[0].name == "python3"
    assert parse_relations("") == []


@pytest.mark.parametrize("bad", ["foo [amd64]", "foo (> 1)", "foo (>= x1)", "Foo", "foo |", "foo (>= 1) bar"])
def test_strict_refuses_what_a_binary_package_may_not_say(bad):
    with pytest.raises(InvalidRelation, match="bad dependency"):
        parse_relations(bad, strict=True)
