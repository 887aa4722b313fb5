"""Compare-and-swap writes on one server file by 8 concurrent writer processes.

Each writer adds its own entries (one per update) to `server/bench.json` through
`serverfile.update`, which retries on Conflict with fresh data. At the end every entry of
every writer must be there: the number missing is the number of lost updates (must be 0).
Runs against the local store, fake-gcs-server and moto's S3 server (both started here on
127.0.0.1). Prints successful writes per second, conflicts, and lost updates per store.

    .venv/bin/python benchmarks/bench_cas.py [--writers 8] [--updates 40]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from push import serverfile
from push.errors import Conflict
from push.store import open_store


def writer(url: str, index: int, updates: int, start: multiprocessing.Event, out: multiprocessing.Queue) -> None:
    store = open_store(url)
    conflicts = 0
    start.wait()
    for i in range(updates):
        entry = f"w{index}-{i}/"

        def add(sf: serverfile.ServerFile, entry: str = entry) -> serverfile.ServerFile:
            return serverfile.ServerFile(sf.server, (*sf.entries, entry), sf.generation)

        while True:
            try:
                serverfile.update(store, "bench", add, attempts=1)
                break
            except Conflict:
                conflicts += 1
    out.put(conflicts)


def run(url: str, writers: int, updates: int) -> tuple[float, int, int]:
    store = open_store(url)
    serverfile.write(store, serverfile.ServerFile("bench"))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(url, w, updates, start, out)) for w in range(writers)]
    for p in procs:
        p.start()
    time.sleep(1.5)  # let every process import and connect before the clock starts
    t = time.perf_counter()
    start.set()
    conflicts = sum(out.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    final = serverfile.read(store, "bench")
    expected = {f"w{w}-{i}/" for w in range(writers) for i in range(updates)}
    lost = len(expected - set(final.entries))
    return writers * updates / elapsed, conflicts, lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--updates", type=int, default=40, help="updates per writer")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="push-bench-cas-"))
    os.environ.update(GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9", NO_GCE_CHECK="true")

    from emulators import start_fake_gcs, start_moto

    results = []
    results.append(("local", *run(f"file://{work}/local", args.writers, args.updates)))

    gcs = start_fake_gcs(work)
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        storage.Client(project="push-local", credentials=AnonymousCredentials()).create_bucket(bucket)
        results.append(("gcs (fake-gcs-server)", *run(f"gs://{bucket}", args.writers, args.updates)))
    finally:
        gcs.stop()

    moto = start_moto(work)
    try:
        os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1")
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        results.append(("s3 (moto server)", *run(f"s3://{bucket}", args.writers, args.updates)))
    finally:
        moto.stop()

    print(f"{args.writers} writer processes x {args.updates} updates each on one server file")
    print(f"{'store':<24}{'writes/s':>10}{'conflicts':>11}{'lost updates':>14}")
    for name, rate, conflicts, lost in results:
        print(f"{name:<24}{rate:>10.1f}{conflicts:>11}{lost:>14}")
    if any(lost for *_, lost in results):
        sys.exit("lost updates!")


if __name__ == "__main__":
    main()
