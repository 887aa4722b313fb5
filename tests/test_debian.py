"""Debian relation fields, shared by the builder (strict) and pulld (lenient)."""

import pytest

from push.debian import InvalidRelation, parse_control, parse_relations, version_satisfies


def test_lenient_reads_what_control_files_say():
    lenient = parse_relations("libc6 (>= 2.36), python3:any (> 3.9) | pypy3, foo [amd64] <!nocheck>")
    assert [str(r) for r in lenient] == ["libc6 (>= 2.36)", "python3:any (>= 3.9) | pypy3", "foo"]
    assert lenient[1].alternatives[0].name == "python3"
    assert parse_relations("") == []


@pytest.mark.parametrize("bad", ["foo [amd64]", "foo (> 1)", "foo (>= x1)", "Foo", "foo |", "foo (>= 1) bar"])
def test_strict_refuses_what_a_binary_package_may_not_say(bad):
    with pytest.raises(InvalidRelation, match="bad dependency"):
        parse_relations(bad, strict=True)


@pytest.mark.parametrize("a, b", [
    ("1.20260301.120000.000000+gaaaaaaa", "1.20260301.120000.000001+g0000000"),
    ("2.36-9+deb12u4", "2.36"), ("1:1.0~rc1-3", "1.0"), ("1.0~rc1", "1.0"), ("1.0", "1.0-0"),
    ("3.11.2-1", "3.11"), ("1.0+b1", "1.0"), ("0:2", "2"),
])
def test_version_order_is_dpkgs(a, b):
    import subprocess

    for op in ("<<", "<=", "=", ">=", ">>"):
        dpkg = subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
        assert version_satisfies(a, op, b) is dpkg, (a, op, b)


def test_a_version_that_is_none_is_refused():
    with pytest.raises(InvalidRelation):
        version_satisfies("1.0", ">=", "not a version!")
    with pytest.raises(InvalidRelation, match="operator"):
        version_satisfies("1.0", "~", "1.0")


def test_control_paragraph_with_continuation_lines():
    text = ("Package: push-web\nVersion: 1.2\nDepends: libc6 (>= 2.36),\n python3 (>= 3.11)\n"
            "Description: web\n It serves.\n .\n More.\n")
    fields = parse_control(text)
    assert fields["package"] == "push-web" and fields["version"] == "1.2"
    assert [str(r) for r in parse_relations(fields["depends"])] == ["libc6 (>= 2.36)", "python3 (>= 3.11)"]
    assert fields["description"].splitlines()[0] == "web"
