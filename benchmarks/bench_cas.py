"""Concurrent writers on one server file, through the push server's API.

8 writers (threads, one HTTP client each) deploy *different* apps to one server at the same
time, each alternating between two releases of its own app and sending what it deployed
last as `expected_from`: no writer's expectation is ever broken by another, so every answer
must be 200. Counted: deploys that went through, spurious conflicts (409: must be 0), other
errors, and lost updates (an app whose entry in the final server file is not the release its
writer deployed last, or history records missing: must be 0). Runs against a `push serve`
process (no-auth, 127.0.0.1) on the local store, on fake-gcs-server and on moto's S3 server
(both started here on 127.0.0.1). Prints deploys per second per store.

    .venv/bin/python benchmarks/bench_cas.py [--writers 8] [--deploys 25] [--stores local,gcs,s3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fleetdata import make_release
from push import serverfile
from push.history import History
from push.store import open_store
from pushserver import PushServerProcess

SERVER = "busy"


@dataclass
class Result:
    store: str
    seconds: float = 0.0
    ok: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    lost: int = 0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def run(name: str, url: str, work: Path, writers: int, deploys: int) -> Result:
    store = open_store(url)
    apps = [f"app{i}" for i in range(writers)]
    releases = {a: [make_release(store, a, n).name for n in (1, 2)] for a in apps}
    serverfile.write(store, serverfile.ServerFile(SERVER))
    conf = work / f"{name}.conf"
    conf.write_text(f"[servers.{SERVER}]\nappNames = {json.dumps(apps)}\n")
    result = Result(name)
    last: dict[str, str] = {}
    lock = threading.Lock()
    server = PushServerProcess(url, conf, work / f"{name}-serve.log", "--no-auth")
    try:
        start = threading.Barrier(writers + 1)

        def writer(app: str) -> None:
            seen: str | None = None
            with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
                start.wait()
                for i in range(deploys):
                    target = releases[app][i % 2]
                    r = client.post(f"/api/v1/servers/{SERVER}/apps/{app}/deploy",
                                    json={"release": target, "expected_from": seen})
                    with lock:
                        if r.status_code == 200:
                            result.ok += 1
                            seen = last[app] = target
                        elif r.status_code == 409:
                            result.conflicts += 1
                            seen = (r.json().get("conflict") or {}).get("current")
                        else:
                            result.errors.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=writer, args=(a,)) for a in apps]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        result.seconds = time.perf_counter() - t0
    finally:
        server.stop()
    final = serverfile.read(store, SERVER)
    assert final is not None
    result.lost = sum(1 for a, rel in last.items() if (final.release_of(a) or None) is None
                      or final.release_of(a).name != rel)  # type: ignore[union-attr]
    recorded = len(History(store).records(SERVER, limit=None))
    result.lost += max(0, result.ok - recorded)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--deploys", type=int, default=25, help="deploys per writer")
    ap.add_argument("--stores", default="local,gcs,s3")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="push-bench-cas-"))
    os.environ.update(GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="true",
                      NO_PROXY="127.0.0.1,localhost")
    from emulators import start_fake_gcs, start_moto

    stores = args.stores.split(",")
    results = []
    if "local" in stores:
        results.append(run("local", f"file://{work}/local", work, args.writers, args.deploys))
    if "gcs" in stores:
        gcs = start_fake_gcs(work)
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            storage.Client(project="push-local", credentials=AnonymousCredentials()).create_bucket(bucket)
            results.append(run("gcs (fake-gcs-server)", f"gs://{bucket}", work, args.writers, args.deploys))
        finally:
            gcs.stop()
    if "s3" in stores:
        moto = start_moto(work)
        try:
            os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing",
                              AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
            import boto3

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            boto3.client("s3").create_bucket(Bucket=bucket)
            results.append(run("s3 (moto server)", f"s3://{bucket}", work, args.writers, args.deploys))
        finally:
            moto.stop()

    print(f"{args.writers} writers x {args.deploys} deploys, each of its own app, to one server file, "
          f"through the API ({time.strftime('%Y-%m-%d', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs)")
    print(f"{'store':<24}{'deploys':>9}{'deploys/s':>11}{'409s':>6}{'errors':>8}{'lost':>6}")
    for r in results:
        print(f"{r.store:<24}{r.ok:>9}{r.rate:>11.1f}{r.conflicts:>6}{len(r.errors):>8}{r.lost:>6}")
        for e in r.errors[:3]:
            print(f"  {e}")
    if any(r.lost or r.conflicts or r.errors for r in results):
        sys.exit("lost updates, spurious conflicts or errors!")


if __name__ == "__main__":
    main()
