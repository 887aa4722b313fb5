"""Release names and metadata, as the original Push wrote them."""

from datetime import datetime, timezone

import pytest

from push.errors import InvalidName, InvalidRelease
from push.release import Release, ReleaseInfo

ORIGINAL = ("pulld/pulld:jcgregorio@jcgregorio.cnc.corp.google.com:2014-12-09T19:05:02Z:"
            "7e0ff6059e653eb75a36efb621d0fd66d1ced433.deb")
HASH = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"


def test_parses_the_original_example():
    r = Release.parse(ORIGINAL)
    assert r.app == "pulld"
    assert r.user == "jcgregorio"
    assert r.host == "jcgregorio.cnc.corp.google.com"
    assert r.time == datetime(2014, 12, 9, 19, 5, 2, tzinfo=timezone.utc)
    assert r.hash == HASH
    assert r.name == ORIGINAL
    assert r.key == "debs/" + ORIGINAL
    assert Release.from_key(r.key) == r
    assert r.short_hash == "7e0ff60"


def test_formats_in_utc_whole_seconds():
    from datetime import timedelta

    t = datetime(2026, 1, 2, 4, 5, 6, 789, tzinfo=timezone(timedelta(hours=1)))
    r = Release("app", "me", "box", t, HASH)
    assert r.name == f"app/app:me@box:2026-01-02T03:05:06Z:{HASH}.deb"
    assert Release.parse(r.name) == r


@pytest.mark.parametrize("name", [
    "",
    "pulld/",
    "pulld",
    "../pulld/pulld:u@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/../x:u@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/other:u@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/pulld:u@h:2014-12-09T19:05:02Z:" + HASH,
    "pulld/pulld:u@h:2014-13-09T19:05:02Z:" + HASH + ".deb",
    "pulld/pulld:u@h:2014-12-09 19:05:02:" + HASH + ".deb",
    "pulld/pulld:u@h:2014-12-09T19:05:02Z:xyz.deb",
    "pulld/pulld:@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/pulld:u@:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/pulld:u\n@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pulld/pulld:u@h/x:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "pul\x00ld/pul\x00ld:u@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
    "a/b/a:u@h:2014-12-09T19:05:02Z:" + HASH + ".deb",
])
def test_rejects_bad_names(name):
    with pytest.raises(InvalidRelease):
        Release.parse(name)


def test_rejects_bad_parts_when_building():
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for kwargs in ({"app": "a/b"}, {"app": ".."}, {"user": "a:b"}, {"host": "x/y"}, {"hash": "abc"}):
        args = {"app": "app", "user": "u", "host": "h", "time": t, "hash": HASH, **kwargs}
        with pytest.raises(InvalidName):
            Release(**args)
    with pytest.raises(InvalidRelease):
        Release("app", "u", "h", datetime(2026, 1, 1), HASH)  # naive time


def test_metadata_round_trip_keeps_original_keys():
    info = ReleaseInfo(Release.parse(ORIGINAL), dirty=True, note="fix the thing", services=("pulld.service",),
                       sha256="a" * 64, size=1234, extra={"version": "1.2", "package": "push-pulld"})
    md = info.to_metadata()
    assert md["appname"] == "pulld"
    assert md["userid"] == "jcgregorio@jcgregorio.cnc.corp.google.com"
    assert md["hash"] == HASH
    assert md["datetime"] == "2014-12-09T19:05:02Z"
    assert md["dirty"] == "true"
    assert md["note"] == "fix the thing"
    assert md["services"] == "pulld.service"
    assert md["sha256"] == "a" * 64 and md["size"] == "1234"
    assert ReleaseInfo.from_metadata("debs/" + ORIGINAL, md) == info


def test_metadata_written_by_the_original_tools_reads():
    md = {"appname": "pulld", "userid": "jcgregorio@x", "hash": HASH, "datetime": "2014-12-09T19:05:02Z",
          "dirty": "false", "note": "n", "services": "a.service b.service"}
    info = ReleaseInfo.from_metadata("debs/" + ORIGINAL, md)
    assert info.services == ("a.service", "b.service")
    assert info.sha256 is None and info.size is None and not info.dirty


@pytest.mark.parametrize("change", [
    {"appname": None},
    {"appname": "other"},
    {"sha256": "nothex"},
    {"size": "-1"},
    {"dirty": "yes"},
])
def test_wrong_metadata_is_refused(change):
    md = {"appname": "pulld", "dirty": "false", "sha256": "b" * 64, "size": "10"}
    for k, v in change.items():
        if v is None:
            md.pop(k)
        else:
            md[k] = v
    with pytest.raises(InvalidRelease):
        ReleaseInfo.from_metadata("debs/" + ORIGINAL, md)
