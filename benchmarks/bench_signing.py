"""The cost of signing and verifying one statement (push.signing), in microseconds.

Release statement: what `push release` adds (sign_release) and what an agent pays per
install (verify_release from the metadata, then check_release_file). Server-file statement:
what a writer adds per write (sign_server_file + to_bytes) and what an agent pays per step
(verify_server_file: parse, signature, sha256 of the file, version and expiry), for a server
file of 20 releases. The baseline is the bare Ed25519 verify of the same bytes.

    .venv/bin/python benchmarks/bench_signing.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

from push import signing
from push.release import Release, ReleaseInfo
from push.signing import Keyring, Seen, SigningKey


def per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Median of 5 runs of `repeat` calls, in µs per call."""
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        runs.append((time.perf_counter() - start) / repeat * 1e6)
    return sorted(runs)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()

    key = SigningKey.generate("bench")
    keyring = Keyring([key.public])
    now = datetime.now(UTC).replace(microsecond=0)
    info = ReleaseInfo(release=Release(app="hello", user="alice", host="build-1.example.com", time=now, hash="a" * 40),
                       note="Say hello in French", services=("hello.service",), sha256="b" * 64, size=12_345_678,
                       extra={"package": "push-hello", "version": "1.20261201.120000.000000+gaaaaaaa",
                              "architecture": "all"})
    signed_info = signing.sign_release(info, key)
    stored = ReleaseInfo.from_metadata(signed_info.release.key, signed_info.to_metadata())
    statement = signing.verify_release(stored, keyring)

    names = [Release(app=f"app{i}", user="alice", host="build-1", time=now, hash="c" * 40).name for i in range(20)]
    server_file = (json.dumps(names, indent=2) + "\n").encode()
    signed = signing.sign_server_file("web-1", server_file, key, None, now)
    signed_bytes = signed.to_bytes()
    seen = Seen.of(signed)
    release_payload = statement.encode()
    release_sig = key.sign(release_payload)

    figures = {
        "Ed25519 verify alone (baseline)": per_call_us(lambda: key.public.verifies(release_sig, release_payload),
                                                       args.repeat),
        "release: sign (push release)": per_call_us(lambda: signing.sign_release(info, key), args.repeat),
        "release: verify per install": per_call_us(
            lambda: signing.check_release_file(signing.verify_release(stored, keyring), "b" * 64, 12_345_678),
            args.repeat),
        "server file: sign + encode (per write)": per_call_us(
            lambda: signing.sign_server_file("web-1", server_file, key, signed.statement, now).to_bytes(),
            args.repeat),
        "server file: verify per step": per_call_us(
            lambda: signing.verify_server_file("web-1", server_file, signed_bytes, keyring, seen, now), args.repeat),
    }
    baseline = figures["Ed25519 verify alone (baseline)"]
    print(f"server file: {len(names)} releases, {len(server_file)} bytes; statement {len(signed_bytes)} bytes")
    for name, us in figures.items():
        print(f"{name:<42} {us:8.1f} µs  ({us / baseline:.2f}× the bare verify)")


if __name__ == "__main__":
    main()
