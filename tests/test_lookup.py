"""push.lookup: a release by its full name, a hash prefix, latest or previous; an app with near names."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleetdata import T0, make_config, make_release
from push import catalog as catalog_mod
from push import lookup
from push.catalog import Catalog
from push.errors import InvalidRelease, InvalidRequest, NotFound
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore


@pytest.fixture
def fixture(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    rels = [make_release(store, "hello", n) for n in range(1, 4)]
    # Two releases whose hashes share their first 8 digits (and differ after).
    twins = []
    for n, h in enumerate(("abcdef12" + "0" * 32, "abcdef12" + "1" * 32)):
        info = ReleaseInfo(Release("twin", "bob", "box", T0 + timedelta(hours=n), h), note="twin")
        catalog_mod.publish(store, info, b"deb")
        twins.append(info)
    return Catalog(store), make_config(tmp_path), rels, twins


def test_every_way_of_naming_a_release(fixture):
    catalog, _, rels, twins = fixture
    full = rels[0].name
    assert lookup.release(catalog, "hello", full) == rels[0]
    assert lookup.release(catalog, "hello", rels[1].release.hash[:7]) == rels[1]
    assert lookup.release(catalog, "hello", rels[1].release.hash.upper()) == rels[1]
    assert lookup.release(catalog, "hello", "latest") == rels[2]
    assert lookup.release(catalog, "hello", "previous", previous=lambda: full) == rels[0]
    assert lookup.release(catalog, "twin", "abcdef120") == twins[0]


def test_names_that_are_refused(fixture):
    catalog, _, rels, twins = fixture
    with pytest.raises(lookup.AmbiguousRelease) as e:
        lookup.release(catalog, "twin", "abcdef1")
    assert e.value.matches == [twins[1].name, twins[0].name]
    assert "abcdef1 names 2 releases of twin" in str(e.value) and twins[0].name in str(e.value)
    with pytest.raises(InvalidRelease, match="7 or more hex digits"):
        lookup.release(catalog, "hello", rels[0].release.hash[:6])
    with pytest.raises(InvalidRelease, match="names no release"):
        lookup.release(catalog, "hello", "newest")
    with pytest.raises(NotFound, match="no release of hello has a git hash starting 0000000"):
        lookup.release(catalog, "hello", "0000000")
    with pytest.raises(InvalidRequest, match="not a release of 'twin'"):
        lookup.release(catalog, "twin", rels[0].name)
    with pytest.raises(InvalidRequest, match="'previous' names what ran before on one server"):
        lookup.release(catalog, "hello", "previous")


def test_a_release_uploaded_after_the_catalogue_looked_is_found(fixture, tmp_path):
    catalog, _, rels, _ = fixture
    assert lookup.release(catalog, "hello", "latest") == rels[2]
    newer = make_release(catalog.store, "hello", 9)
    assert lookup.release(catalog, "hello", newer.release.hash[:10]) == newer
    assert lookup.release(catalog, "hello", "latest") == newer


def test_unknown_app_suggests_near_names(fixture):
    catalog, config, _, _ = fixture
    assert lookup.require_app(catalog, config, "pulld") == "pulld"  # in appNames only
    assert lookup.require_app(catalog, config, "twin") == "twin"    # in the bucket only
    with pytest.raises(lookup.UnknownApp) as e:
        lookup.require_app(catalog, config, "helo")
    assert e.value.near == ["hello"] and str(e.value).startswith("no such app 'helo'")
    assert str(e.value).endswith("did you mean hello?")
    with pytest.raises(lookup.UnknownApp, match=r"lists it$"):
        lookup.require_app(catalog, config, "zzzzzz")
