"""How the pages show a time: relative ("3 min ago"), with the absolute UTC time on hover.

One Jinja filter, `when`, for every page: it renders `<time datetime=ISO title="... UTC">`.
The text is relative to the time of rendering; static/push.js recomputes it from the
`datetime` attribute every 15 seconds and after every htmx swap, with the same words
(`relative` below and `relative` in push.js must agree: tests/test_server_pages.py holds
both to the same cases), so a page left open stays right. Fragments the fleet view caches
across refreshes render `fixed=True`: the absolute time as text (always true, without
JavaScript too), which push.js turns into the relative one.
"""

from __future__ import annotations

from datetime import datetime, timezone

from markupsafe import Markup, escape

from push import timestamps
from push.errors import PushError
from push.release import Release


def instant(value: str | datetime | None) -> datetime | None:
    """A time from what the pages hold: a datetime, an ISO-8601 timestamp, or a release name
    (its build time). None when it is none of these."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        return timestamps.parse(value)
    except (PushError, ValueError):
        pass
    try:
        return Release.parse(value).time
    except PushError:
        return None


def relative(t: datetime, now: datetime) -> str:
    """`t` in words from `now`: "12 s ago", "3 min ago", "5 h ago", "2 days ago", "in 20 s"; over
    30 days, the date."""
    seconds = round((now - t).total_seconds())
    ahead = seconds < 0
    n = abs(seconds)
    if n < 5:
        return "just now"
    if n < 60:
        words = f"{n} s"
    elif n < 3600:
        words = f"{n // 60} min"
    elif n < 86400:
        words = f"{n // 3600} h"
    elif n < 30 * 86400:
        days = n // 86400
        words = f"{days} day{'s' if days != 1 else ''}"
    else:
        return t.strftime("%Y-%m-%d")
    return f"in {words}" if ahead else f"{words} ago"


def absolute(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def when(value: str | datetime | None, fixed: bool = False, now: datetime | None = None) -> Markup:
    """`<time>` for `value`, relative unless `fixed` (then absolute: push.js makes it relative)."""
    t = instant(value)
    if t is None:
        return Markup("")
    iso = t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    full = absolute(t)
    text = full if fixed else relative(t, now or timestamps.now())
    return Markup('<time class="when" datetime="{}" title="{}">{}</time>').format(iso, full, escape(text))
