"""push.layout: the bucket's keys, built and parsed in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from push import layout
from push.timestamps import new_id

SRC = Path(__file__).resolve().parent.parent / "src" / "push"


def test_keys_round_trip() -> None:
    assert layout.server_of_file_key(layout.server_file_key("web-1")) == "web-1"
    assert layout.server_of_status_key(layout.status_key("web-1")) == "web-1"
    rid = new_id()
    assert layout.request_of_key(layout.request_key("web-1", rid)) == ("web-1", rid)
    assert layout.journal_entry(layout.journal_key("web/web:a@b:2026-01-01T00:00:00Z:x.deb", 12)) == (
        12, "web/web:a@b:2026-01-01T00:00:00Z:x.deb")
    for key in layout.history_keys(rid, "web-1", "hello"):
        assert layout.history_id_of_key(key) == rid
    assert layout.release_name_of(layout.release_key("web/x.deb")) == "web/x.deb"


@pytest.mark.parametrize("key", ["server/a/b.json", "server/.json", "server/a.txt", "status/x", "other/a.json"])
def test_keys_of_other_things_are_not_taken_for_server_files(key: str) -> None:
    assert layout.server_of_file_key(key) is None
    assert layout.server_of_status_key(key) is None


def test_history_keys_list_newest_first() -> None:
    older, newer = new_id(1_000), new_id(2_000)
    assert layout.history_keys(newer, "s", "a")[0] < layout.history_keys(older, "s", "a")[0]
    prefix, _ = layout.history_listing("s", None)
    assert layout.history_start_after(prefix, newer) < layout.history_keys(older, "s", "a")[0]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_other_module_spells_a_prefix() -> None:
    # A key written somewhere else drifts from the one read here: every prefix lives in
    # push.layout. Docstrings may name them; code may not.
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value.startswith(tuple(layout.PREFIXES))):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "spelled outside push.layout:\n" + "\n".join(found)
