"""push.names: the rules for app, server, unit, user and host names, and their limits."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from push import layout, names
from push.errors import InvalidName
from push.release import Release
from push.timestamps import new_id

HASH = "0" * 40


@pytest.mark.parametrize("check, good", [
    (names.check_app, ["web", "my.app+2", "A_b-c", "a" * names.APP_MAX]),
    (names.check_server, ["web-1", "web-1.example.com", "s" * names.SERVER_MAX]),
    (names.check_unit, ["web.service", "web.socket", "job.timer", "data.mount", "app.target", "w@1.service",
                        "sys-devices-x\\x2dy.swap", "x.slice", "x.automount", "x.path"]),
    (names.check_user, ["jcgregorio", "ann.lee", "ü"]),
    (names.check_host, ["jcgregorio.cnc.corp.google.com", "build-1"]),
])
def test_good_names(check, good):
    for name in good:
        assert check(name) == name


@pytest.mark.parametrize("check, kind, bad", [
    (names.check_app, "app name", ["", "a/b", "..", "a..b", ".x", "-x", "a b", "a~b", "a" * (names.APP_MAX + 1)]),
    (names.check_server, "server name", ["", "a/b", "a+b", "..", "a~b", "s" * (names.SERVER_MAX + 1)]),
    (names.check_unit, "unit name", ["web", "web.conf", "a/b.service", "x.device", "x.scope", "web.Service",
                                     "a b.service", "w@.service", "x" * 256 + ".service"]),
    (names.check_user, "user", ["", "a b", "a:b", "a@b", "a/b", "a\\b", "u" * (names.USER_MAX + 1)]),
    (names.check_host, "host", ["", "a b", "x/y", "h" * (names.HOST_MAX + 1)]),
    (names.check_git_hash, "git hash", ["abc", "A" * 40, "0" * 41]),
])
def test_bad_names_raise_one_error_with_kind_and_value(check, kind, bad):
    for name in bad:
        with pytest.raises(InvalidName) as e:
            check(name)
        assert e.value.kind == kind and e.value.value == name
        assert str(e.value).startswith(f"invalid {kind} ")
    with pytest.raises(InvalidName):
        check(None)


def test_the_longest_names_fit_every_store():
    # One local-store path component is at most 255 bytes; a GCS or S3 key 1,024.
    app, server = "a" * names.APP_MAX, "s" * names.SERVER_MAX
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    room = names.RELEASE_FILE_MAX - len(f"{app}:{'u' * names.USER_MAX}@:2026-01-01T00:00:00Z:{HASH}.deb")
    release = Release(app, "u" * names.USER_MAX, "h" * room, t, HASH)
    keys = [release.key, layout.server_file_key(server), layout.status_key(server),
            layout.request_key(server, new_id()), layout.journal_key(release.name, 10**19),
            *layout.history_keys(new_id(), server, app)]
    for key in keys:
        assert len(key.encode()) <= 1024 - 200, key  # room for a store prefix too
        assert max(len(part.encode()) for part in key.split("/")) <= 255, key
    with pytest.raises(InvalidName, match="at most 255"):
        Release(app, "u" * names.USER_MAX, "h" * (room + 1), t, HASH)
