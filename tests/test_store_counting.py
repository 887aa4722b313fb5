"""The counting store: every operation through it is counted by kind, and passed on."""

from __future__ import annotations

import pytest

from push.errors import NotFound
from push.store.counting import CountingStore
from push.store.local import LocalStore


def test_counts_each_operation_by_kind(tmp_path):
    store = CountingStore(LocalStore(tmp_path))
    info = store.put("a/x.json", b"1")
    store.put("a/y.json", b"2")
    assert store.get("a/x.json") is not None                                # a stat-less read
    assert store.get("a/x.json", if_generation_not_match=info.generation) is None  # a stat, nothing read
    assert [i.key for i in store.list("a/", page_size=1)] == ["a/x.json", "a/y.json"]  # one page per object
    store.delete("a/y.json")
    with pytest.raises(NotFound):
        store.stat("a/y.json")
    counts = store.counts()
    assert counts["put"] == 2 and counts["delete"] == 1 and counts["read"] == 1
    assert counts["stat"] == 2
    assert counts["list"] >= 2
