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


def test_the_one_pattern_for_valid_names_agrees_with_the_checks_one_by_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    h = "0123456789abcdef0123456789abcdef01234567"
    t = "2026-01-01T05:00:00Z"
    names = [f"web/web:u@h:{t}:{h}.deb", f"a.b+c-d_e/a.b+c-d_e:u!~;?@h.example-1:2026-12-31T23:59:59Z:{h}.deb",
             f"{'a' * 64}/{'a' * 64}:{'u' * 64}@h:{t}:{h}.deb",
             f"{'a' * 65}/{'a' * 65}:u@h:{t}:{h}.deb", f"web/web:{'u' * 65}@h:{t}:{h}.deb",
             f"web/web:u@{'h' * 253}:{t}:{h}.deb", f"web/web:u@{'h' * 254}:{t}:{h}.deb",
             f"web/web:{'u' * 60}@{'h' * 200}:{t}:{h}.deb",  # the file name over 255 bytes
             f"web/db:u@h:{t}:{h}.deb", f"web/web:u@h:{t}:{h[:-1]}.deb",
             f"web/web:u@h:{t}:{h.upper()}.deb", f"web/web:u@h:2026-13-01T05:00:00Z:{h}.deb",
             f"web/web:u@h:2026-02-30T05:00:00Z:{h}.deb", f"web/web:u@h:0999-01-01T05:00:00Z:{h}.deb",
             f"web/web:u u@h:{t}:{h}.deb", f"web/web:u@h..x:{t}:{h}.deb",
             f"web/web:u@h\u00e9:{t}:{h}.deb", f"-web/-web:u@h:{t}:{h}.deb",
             f"web/web:u@h:{t}:{h}.deb\n", f"web/web:u\\x@h:{t}:{h}.deb",
             f"web/web:u@h:\uff12026-01-01T05:00:00Z:{h}.deb", "", "web", "web/web"]

    def parsed(name: str) -> Release | str:
        try:
            return Release.parse(name)
        except InvalidRelease as e:
            return type(e).__name__

    fast = [parsed(n) for n in names]
    monkeypatch.setattr(Release, "_parse_valid", classmethod(lambda cls, name: None))
    checked = [parsed(n) for n in names]
    assert fast == checked
    assert [r.name for r in fast if isinstance(r, Release)] == [r.name for r in checked if isinstance(r, Release)]
    # Valid: the first three, the year 999 and the non-ASCII host (both by the checks one by one).
    assert [n for n, r in zip(names, fast, strict=True) if isinstance(r, Release)] == [*names[:3], names[13], names[16]]
