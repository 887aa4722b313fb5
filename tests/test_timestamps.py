"""push.timestamps: the times Push writes and reads, and time-ordered ids."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from push import timestamps


def test_written_times_are_utc_with_microseconds() -> None:
    t = datetime(2026, 1, 2, 4, 4, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert timestamps.format_time(t) == "2026-01-02T03:04:05.123456Z"
    assert timestamps.parse(timestamps.format_time(t)) == t
    assert timestamps.now_text().endswith("Z") and len(timestamps.now_text()) == 27


@pytest.mark.parametrize("text", ["2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000000Z",
                                  "2026-01-02T03:04:05+00:00", "2026-01-02T04:04:05+01:00"])
def test_reading_takes_every_form_earlier_versions_wrote(text: str) -> None:
    assert timestamps.parse(text) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("text", ["2026-01-02T03:04:05", "yesterday", ""])
def test_a_time_without_zone_or_form_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        timestamps.parse(text)


def test_release_times_keep_whole_seconds() -> None:
    t = datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=timezone.utc)
    assert timestamps.release_text(t) == "2026-01-02T03:04:05Z"
    assert timestamps.parse_release_text("2026-01-02T03:04:05Z") == t.replace(microsecond=0)
    with pytest.raises(ValueError):
        timestamps.parse_release_text("2026-01-02T03:04:05.5Z")


def test_ids_sort_in_time_order_and_tell_their_time() -> None:
    ids = [timestamps.new_id(ns) for ns in (5, 10**18, 2 * 10**18)]
    assert ids == sorted(ids)
    assert timestamps.id_parts(ids[0])[0] == 5
    assert timestamps.id_time(ids[1]) == datetime(2001, 9, 9, 1, 46, 40, tzinfo=timezone.utc)
    assert timestamps.new_id(7) != timestamps.new_id(7)  # the random part
    for bad in ("1-abc", "x" * 20 + "-0123abcd", "00000000000000000001-0123abcz"):
        with pytest.raises(ValueError):
            timestamps.id_parts(bad)
