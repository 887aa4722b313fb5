"""The cost of signing and verifying one statement (push.signing), in microseconds.

Release statement: what `push release` adds (sign_release) and what an agent pays per
install (verify_release from the metadata, then check_release_file). Server-file statement:
what a writer adds per write (sign_server_file + to_bytes) and what an agent pays per step
(verify_server_file: parse, signature, sha256 of the file, version and expiry), for a server
file of 20 releases. The baseline is the bare Ed25519 verify of the same bytes.

With --agent: the same costs inside a real pulld step (push.agent.Agent, real dpkg into a
sandbox root, a local store), trust on (release and deploy keys) against trust off: the
time an idle step takes (nothing changed: a conditional read of the file, and with trust
also of its statement, plus the verification) and the time an install takes (upgrade and
downgrade between two releases), with the time spent in push.agent.trust measured inside
the same steps.

    .venv/bin/python benchmarks/bench_signing.py [--repeat 2000] [--agent [--steps 300 --installs 20]]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class Timed:
    """Wraps methods of an object, keeping the seconds of each call."""

    def __init__(self, obj: object, *names: str) -> None:
        self.calls: list[float] = []
        for name in names:
            setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls.append(time.perf_counter() - start)

        return timed

    def since(self, mark: int) -> float:
        """Seconds spent in calls made since len(calls) was `mark`."""
        return sum(self.calls[mark:])


def agent_figures(steps: int, installs: int) -> None:
    """Idle steps and installs of a real agent, trust on against trust off, in ms."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from agentpkgs import make_release, set_server_file
    from push.agent.agent import Agent, AgentOptions
    from push.agent.supervisor import SandboxSupervisor
    from push.agent.trust import TrustOptions
    from push.layout import server_file_key, server_signature_key
    from push.store.local import LocalStore

    logging.disable(logging.WARNING)  # the agent's log lines (a first use, ...) are not the figures
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        work = Path(tmp)
        release_key, _, release_pub = signing.write_key_pair(work / "keys", "release")
        deploy_key, _, deploy_pub = signing.write_key_pair(work / "keys", "deploy")
        store = LocalStore(work / "store")
        rels = [make_release(store, work, "hello", n, signing_key=release_key, with_unit=False,
                             payload_size=1024 * 1024) for n in (1, 2)]
        results: dict[str, dict[str, float]] = {}
        for mode, trust in (("off", TrustOptions()),
                            ("on", TrustOptions(release_keys=(release_pub,), deploy_keys=(deploy_pub,)))):
            server = f"bench-{mode}"
            supervisor = SandboxSupervisor(work / f"root-{mode}")
            agent = Agent(store, AgentOptions(server=server, root=work / f"root-{mode}", trust=trust,
                                              report_interval=3600), supervisor)
            in_file = Timed(agent.trust, "check_server_file")
            in_release = Timed(agent.trust, "check_release", "check_download")

            def choose(rel: ReleaseInfo, server: str = server) -> None:
                set_server_file(store, server, [rel.name])
                data = store.get(server_file_key(server))[0]  # type: ignore[index]
                got = store.get(server_signature_key(server)) if (work / "store" / server_signature_key(server)
                                                                    ).exists() else None
                previous = signing.SignedServerFile.parse(server, got[0]).statement if got else None
                store.put(server_signature_key(server),
                          signing.sign_server_file(server, data, deploy_key, previous).to_bytes())

            try:
                install_ms, install_trust_ms = [], []
                for i in range(installs + 1):
                    choose(rels[i % 2])
                    mark, start = len(in_release.calls), time.perf_counter()
                    assert agent.step(["poll"]), agent.failures.apps
                    if i:  # the first one also recovers and reads dpkg for the first time
                        install_ms.append((time.perf_counter() - start) * 1000)
                        install_trust_ms.append(in_release.since(mark) * 1000)
                step_ms, step_trust_ms = [], []
                for _ in range(steps):
                    mark, start = len(in_file.calls), time.perf_counter()
                    agent.step(["poll"])
                    step_ms.append((time.perf_counter() - start) * 1000)
                    step_trust_ms.append(in_file.since(mark) * 1000)
                results[mode] = {
                    "idle step": statistics.median(step_ms),
                    "install": statistics.median(install_ms),
                    "in trust per idle step": statistics.median(step_trust_ms),
                    "in trust per install": statistics.median(install_trust_ms),
                }
            finally:
                supervisor.close(stop_units=True)
        print(f"\nreal agent: {steps} idle steps, {installs} installs of a 1 MiB package, median ms")
        for what in ("idle step", "install"):
            off, on = results["off"][what], results["on"][what]
            print(f"{what:<12} trust off {off:8.2f}   trust on {on:8.2f}   difference {on - off:+8.2f}")
        print(f"median time inside push.agent.trust: per idle step {results['on']['in trust per idle step']:.3f} ms "
              f"(the statement's conditional read and verify_server_file), per install "
              f"{results['on']['in trust per install']:.3f} ms (verify_release + check_release_file)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--agent", action="store_true", help="also measure a real agent's steps and installs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--installs", type=int, default=20)
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
    if args.agent:
        agent_figures(args.steps, args.installs)


if __name__ == "__main__":
    main()
