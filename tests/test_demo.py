"""`push demo`, the README's first command: it comes up signed, a deploy goes live, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from push.demo.fleet import free_port, http_get

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_runs_deploys_rolls_back_and_stops_cleanly(tmp_path: Path) -> None:
    push_bin = str(Path(sys.executable).with_name("push"))
    port = free_port()
    proc = subprocess.Popen([push_bin, "demo", "--dir", str(tmp_path / "demo"), "--port", str(port), "--no-browser",
                             "--app-port-base", str(20000 + port % 20000)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "Push demo is running" in out, out
        url = f"http://127.0.0.1:{port}"
        hello = int(re.search(r"demo-1\s+hello\s+http://127\.0\.0\.1:(\d+)/", out).group(1))
        assert json.loads(http_get(f"http://127.0.0.1:{hello}/"))["version"] == "1"

        # The push server reads the agents' reports from the bucket every two seconds.
        deadline = time.monotonic() + 20
        while True:
            status = subprocess.run([push_bin, "status", "--json", "--push-url", url], capture_output=True,
                                    text=True, timeout=30)
            servers = {s["server"]: s for s in json.loads(status.stdout)["servers"]}
            assert sorted(servers) == ["demo-1", "demo-2", "demo-3"]
            if all(a["actual"] and a["actual"] == a["desired"] for s in servers.values() for a in s["apps"]):
                # Signed end to end: every agent verified what it installed, and refused nothing.
                assert {(s["trust"], tuple(s["untrusted"])) for s in servers.values()} == {("verified", ())}
                break
            assert time.monotonic() < deadline, status.stdout
            time.sleep(0.5)

        # Through the push server, which signs the server file with the demo's deploy key.
        # (Version 2 by its hash: the latest, version 3, is the broken one.)
        v2 = hashlib.sha1(b"hello 2").hexdigest()[:7]
        subprocess.run([push_bin, "deploy", "demo-1", "hello", v2, "--push-url", url], check=True,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if json.loads(http_get(f"http://127.0.0.1:{hello}/", timeout=1))["version"] == "2":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("hello did not answer with version 2 after the deploy")
        assert "Push" in http_get(url + "/").decode()

        # The "Try:" step that deploys the broken version 3, as printed: it reverts by itself.
        printed = re.search(r"push deploy demo-3 hello ([0-9a-f]{7}) --wait --push-url (\S+)", out)
        assert printed is not None, out
        broken = subprocess.run([push_bin, "deploy", "demo-3", "hello", printed.group(1), "--wait",
                                 "--push-url", printed.group(2)], capture_output=True, text=True, timeout=120)
        assert broken.returncode == 8, broken.stdout + broken.stderr
        last = broken.stdout.strip().splitlines()[-1]
        assert last.startswith("demo-3  hello  failed: ") and "was not healthy and was reverted" in last, last
        assert "/healthz: HTTP 503: cannot reach the database" in broken.stdout, broken.stdout
        status = subprocess.run([push_bin, "status", "demo-3", "--json", "--push-url", url], capture_output=True,
                                text=True, timeout=30)
        hello3 = next(a for a in json.loads(status.stdout)["servers"][0]["apps"] if a["app"] == "hello")
        assert {"reverted", "unhealthy"} <= set(hello3["marks"]) and hello3["actual"].endswith(".deb")
        assert hello3["reverted_from"] == hello3["desired"] and hello3["progress"] == "failed"
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "no process of the demo is left running" in rest
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
