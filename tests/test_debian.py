"""Debian relation fields, shared by the builder (strict) and pulld (lenient)."""

import pytest


def test_debian_relations_strict_and_lenient():
    lenient = parse_relations("libc6 (>= 2.36), python3:any (> 3.9) | pypy3, foo [amd64] <!nocheck>")
    assert [str(r) for r in lenient] == ["libc6 (>= 2.36)", "python3:any (>= 3.9) | pypy3", "foo"]
    for bad in ["foo [amd64]", "foo (> 1)", "foo (>= x1)", "Foo", "foo |", ""]:
        if bad:
            with pytest.raises(InvalidRelation):
                parse_relations(bad, strict=True)
    assert parse_relations("", strict=True) == []
