"""Catalogue load of N releases (default 20,000) from the local store: cold, then the refresh after one new release.

Prints the times and the object reads (metadata reads through the Store API) of each,
and the ratio of the incremental refresh to the cold load. The store is generated into a
temporary directory (or --dir) with the Store API, as `push release` would write it.

    .venv/bin/python benchmarks/bench_catalog.py [--releases 20000] [--apps 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from push.catalog import Catalog, publish
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore

H = "7e0ff6059e653eb75a36efb621d0fd66d1ced433"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class CountingStore:
    """Counts the object reads (stat/open) a catalogue makes; optionally hides list metadata (as S3 does)."""

    def __init__(self, inner: LocalStore, lists_metadata: bool) -> None:
        self.inner, self.lists_metadata, self.url = inner, lists_metadata, inner.url
        self.reads = 0
        self.pages = 0

    def stat(self, key):
        self.reads += 1
        return self.inner.stat(key)

    def list_page(self, *a, **kw):
        self.pages += 1
        page = self.inner.list_page(*a, **kw)
        if not self.lists_metadata:
            page = type(page)([replace(i, metadata={}) for i in page.items], page.next_token)
        return page


def info(i: int, apps: int) -> ReleaseInfo:
    return ReleaseInfo(Release(f"app{i % apps:02d}", "bench", "host", T0 + timedelta(seconds=i), H),
                       note=f"release {i}", services=(f"app{i % apps:02d}.service",), sha256="0" * 64, size=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--releases", type=int, default=20_000)
    ap.add_argument("--apps", type=int, default=20)
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="push-bench-catalog-"))
    store = LocalStore(root)
    t = time.perf_counter()
    for i in range(args.releases):
        # The journal is only read by incremental refreshes, so generation skips it.
        r = info(i, args.apps)
        store.put(r.release.key, b"deb", r.to_metadata(), if_absent=True)
    print(f"generated {args.releases} releases of {args.apps} apps in {time.perf_counter() - t:.1f} s ({root})")

    for lists_metadata, label in ((True, "local store (listing carries metadata)"),
                                  (False, "same, listing without metadata (as on S3)")):
        counting = CountingStore(store, lists_metadata)
        cat = Catalog(counting)  # type: ignore[arg-type]
        t = time.perf_counter()
        cat.refresh()
        cold = time.perf_counter() - t
        cold_reads, cold_pages = counting.reads, counting.pages
        assert len(cat) == args.releases + (not lists_metadata), len(cat)

        extra = info(args.releases + lists_metadata, args.apps)
        publish(store, extra, b"deb")
        counting.reads = counting.pages = 0
        t = time.perf_counter()
        new = cat.refresh()
        incr = time.perf_counter() - t
        assert [n.name for n in new] == [extra.name]
        print(f"\n{label}")
        print(f"  cold load:   {cold * 1000:8.1f} ms  {cold_reads:6d} object reads  {cold_pages:3d} list pages")
        print(f"  +1 release:  {incr * 1000:8.1f} ms  {counting.reads:6d} object reads  {counting.pages:3d} list pages")
        print(f"  incremental / cold time: {incr / cold:.5f} ({cold / incr:.0f}x faster)")


if __name__ == "__main__":
    main()
