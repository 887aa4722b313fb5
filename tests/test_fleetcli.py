"""`push status|history|deploy|rollback|unit`, straight to the bucket and through a push server.

Both modes run the same checks, write the same history and print the same output.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleetdata import TOKENS, conf_text, make_release, report
from push import timestamps
from push.cli import main
from push.history import History, Record, new_record
from push.layout import server_signature_key
from push.signing import Keyring, verify_server_file, write_key_pair
from push.store.local import LocalStore
from pushserver import PushServerProcess
from waiting import wait_for


@pytest.fixture
def setup(tmp_path, monkeypatch):
    store_dir = tmp_path / "bucket"
    bucket = LocalStore(store_dir)
    rels = [make_release(bucket, "hello", n) for n in range(1, 4)]
    make_release(bucket, "pulld", 1)
    report(bucket, "web-1", {"hello": None})
    conf = tmp_path / "skiapush.conf"
    conf.write_text(conf_text())
    monkeypatch.setenv("PUSH_STORE", str(store_dir))
    monkeypatch.setenv("PUSH_CONFIG", str(conf))
    monkeypatch.setenv("PUSH_USER", "carol@example.com")
    monkeypatch.delenv("PUSH_URL", raising=False)
    monkeypatch.delenv("PUSH_TOKEN", raising=False)
    return bucket, rels, conf


@pytest.fixture
def server(setup, tmp_path):
    bucket, _, conf = setup
    srv = PushServerProcess(str(tmp_path / "bucket"), conf, tmp_path / "serve.log")
    yield srv
    srv.stop()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def normalise(text):
    """Ids, times and the identity differ between two runs; the rest must not."""
    text = re.sub(r"\d{20}-[0-9a-f]{8}", "ID", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", "TIME", text)
    text = re.sub(r"20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ", "TIME", text)
    text = re.sub(r'"generated": "[^"]+"', '"generated": "T"', text)
    text = re.sub(r'"generation": "?\d+"?', '"generation": G', text)
    text = re.sub(r'"via": "[^"]+"', '"via": V', text)
    return text.replace("deployer@example.com", "WHO").replace("carol@example.com", "WHO")


def test_direct_deploy_history_rollback(setup, capsys):
    bucket, rels, _ = setup
    code, out, _ = run(capsys, "deploy", "web-1", "hello", rels[2].name, "--note", "first")
    assert code == 0 and out.startswith("deployed hello on web-1: (nothing) -> hello 2026-01-01 03:00 ")
    code, out, _ = run(capsys, "deploy", "web-1", "hello", rels[0].name)
    assert code == 0
    code, out, _ = run(capsys, "rollback", "web-1", "hello", "--note", "oops")
    assert code == 0 and "rolled back hello on web-1" in out and rels[2].release.short_hash in out
    code, out, _ = run(capsys, "history", "web-1", "--json")
    records = json.loads(out)
    assert [(r["action"], r["to"], r["who"]) for r in records] == [
        ("rollback", rels[2].name, "carol@example.com"), ("deploy", rels[0].name, "carol@example.com"),
        ("deploy", rels[2].name, "carol@example.com")]
    assert records[0]["via"].startswith("cli@")
    code, out, _ = run(capsys, "history")
    assert "rollback" in out and "\u201coops\u201d" in out


def test_direct_status(setup, capsys):
    bucket, rels, _ = setup
    run(capsys, "deploy", "web-1", "hello", "--latest")
    code, out, _ = run(capsys, "status")
    assert code == 0 and "web-1" in out and "web-2" in out and "db-1" in out
    # Deployed a moment ago: converging (its agent has not picked it up yet), not a problem.
    assert "converging: waiting for the agent to pick up" in out and "no report" in out and "drift" not in out
    code, out, _ = run(capsys, "status", "web-1", "--json")
    state = json.loads(out)
    assert [s["server"] for s in state["servers"]] == ["web-1"]
    assert state["servers"][0]["apps"][0]["desired"] == rels[2].name
    code, _, err = run(capsys, "status", "nowhere")
    assert code == 1 and "'nowhere' is not in " in err and "skiapush.conf" in err


def test_direct_refusals(setup, capsys):
    bucket, rels, _ = setup
    code, _, err = run(capsys, "deploy", "db-1", "hello", rels[0].name)
    assert code == 5 and "may not be deployed" in err
    code, _, err = run(capsys, "deploy", "web-1", "hello", rels[0].name, "--expect", rels[1].name)
    assert code == 3 and "changed meanwhile" in err
    code, _, err = run(capsys, "rollback", "web-1", "hello")
    assert code == 1 and "no history" in err
    code, _, err = run(capsys, "deploy", "web-1", "hello")
    assert code == 2 and "RELEASE or --latest" in err


def test_direct_unit(setup, capsys):
    bucket, rels, _ = setup
    run(capsys, "deploy", "web-1", "hello", rels[0].name)
    code, out, _ = run(capsys, "unit", "web-1", "hello.service", "restart")
    assert code == 0 and out.strip() == "asked the agent on web-1 to restart hello.service"


def test_direct_changes_are_signed_and_push_resign_renews(setup, capsys, monkeypatch, tmp_path):
    """With a deploy key, every server file the CLI writes is signed as pulld verifies it;
    `push resign` renews statements and refuses (exit 1) a file edited straight in the bucket."""
    bucket, rels, _ = setup
    key, key_path, _ = write_key_pair(tmp_path / "keys", "deploy")
    keyring = Keyring([key.public])

    def verified(server):
        data = bucket.get(f"server/{server}.json")[0]
        return verify_server_file(server, data, bucket.get(server_signature_key(server))[0], keyring)

    run(capsys, "deploy", "web-1", "hello", rels[0].name, "--deploy-key", str(key_path))
    first = verified("web-1").statement.version
    monkeypatch.setenv("PUSH_DEPLOY_KEY", str(key_path))
    run(capsys, "deploy", "web-1", "hello", rels[1].name)
    code, out, _ = run(capsys, "rollback", "web-1", "hello")
    assert code == 0 and verified("web-1").statement.version > first

    code, out, _ = run(capsys, "resign")
    assert code == 0 and "web-1: current (version" in out and "web-2: no-file" in out
    bucket.put("server/web-2.json", b'["hello/"]\n')  # written by someone without the key
    code, out, _ = run(capsys, "resign", "web-1", "web-2")
    assert code == 1 and "web-2: refused: server/web-2.json has no valid statement" in out
    code, _, err = run(capsys, "resign", "--adopt")
    assert code == 2 and "name the SERVERs" in err
    code, out, _ = run(capsys, "resign", "web-2", "--adopt", "--json")
    assert code == 0 and json.loads(out)[0]["action"] == "signed" and verified("web-2")
    monkeypatch.delenv("PUSH_DEPLOY_KEY")
    code, _, err = run(capsys, "resign")
    assert code == 2 and "no deploy key" in err
    key_path.chmod(0o644)
    code, _, err = run(capsys, "deploy", "web-1", "hello", rels[2].name, "--deploy-key", str(key_path))
    assert code == 2 and "too open" in err and verified("web-1")  # nothing written unsigned


def test_remote_mode_same_output_as_direct(setup, server, capsys, monkeypatch, tmp_path):
    bucket, rels, conf = setup
    # Direct first, on one server...
    direct = [run(capsys, "deploy", "web-1", "hello", rels[1].name, "--json")[1],
              run(capsys, "deploy", "web-1", "hello", rels[2].name)[1],
              run(capsys, "rollback", "web-1", "hello", "--json")[1]]
    # ...then the same through the push server, on another.
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["ci"])
    url = ["--push-url", server.url]
    remote = [run(capsys, "deploy", "web-2", "hello", rels[1].name, "--json", *url)[1],
              run(capsys, "deploy", "web-2", "hello", rels[2].name, *url)[1],
              run(capsys, "rollback", "web-2", "hello", "--json", *url)[1]]
    assert [normalise(t) for t in direct] == [normalise(t).replace("web-2", "web-1") for t in remote]
    hist_direct = run(capsys, "history", "web-1", "--json")[1]
    hist_remote = run(capsys, "history", "web-2", "--json", *url)[1]
    assert normalise(hist_direct) == normalise(hist_remote).replace("web-2", "web-1")
    remote_records = json.loads(hist_remote)
    assert remote_records[0]["who"] == "deployer@example.com" and remote_records[0]["via"].startswith("push-server@")
    # Status: the push server notices the direct writes through its bucket poll.
    s_direct = json.loads(run(capsys, "status", "--json")[1])
    s_remote = wait_for(lambda: (got := json.loads(run(capsys, "status", "--json", *url)[1]))["servers"]
                        == s_direct["servers"] and got, what="the push server's poll to see the direct deploys")
    assert normalise(json.dumps(s_direct)) == normalise(json.dumps(s_remote))
    assert normalise(run(capsys, "status")[1]) == normalise(run(capsys, "status", *url)[1])


def test_history_and_status_json_are_the_same_both_ways(setup, server, capsys, monkeypatch):
    """On one bucket, `push history --json` and `push status --json` print the same JSON
    straight from the bucket and through the push server: one model, whichever way."""
    bucket, rels, _ = setup
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["ops"])
    url = ["--push-url", server.url]
    assert run(capsys, "deploy", "web-1", "hello", rels[0].name, "--note", "direct")[0] == 0
    assert run(capsys, "deploy", "web-2", "hello", rels[1].name, "--note", "remote", *url)[0] == 0
    assert run(capsys, "deploy", "web-2", "hello", rels[2].name)[0] == 0
    assert run(capsys, "unit", "web-2", "hello.service", "restart", *url)[0] == 0
    assert run(capsys, "rollback", "web-2", "hello", *url)[0] == 0
    # A record with fields this version never writes itself (another tool, a newer Push):
    # the API once dropped `extra`.
    History(bucket).write(new_record("tool@example.com", "web-1", "hello", "remove", from_=rels[0].name))
    History(bucket).write(Record(id=timestamps.new_id(), time=timestamps.now_text(), who="tool@example.com",
                                 server="db-1", app="pulld", action="deploy", to=None, extra={"ticket": "OPS-7"}))
    for args in (["history", "--json"], ["history", "web-2", "--json"], ["history", "--app", "hello", "--json"],
                 ["history", "--json", "--limit", "2"]):
        direct, remote = run(capsys, *args)[1], run(capsys, *args, *url)[1]
        assert direct == remote, args
    records = json.loads(direct)
    assert records[0]["extra"] == {"ticket": "OPS-7"} and records[1]["unit"] is None
    both = json.loads(run(capsys, "history", "--json")[1])
    assert {r["via"].split("@")[0] for r in both} == {"cli", "push-server", ""}

    def status(*extra):
        got = json.loads(run(capsys, "status", "--json", *extra)[1])
        return {**got, "generated": None}

    direct = status()
    wait_for(lambda: status(*url) == direct, what="the push server's poll to see the direct writes")
    for args in (["web-2"], ["--app", "pull"], ["--problems"]):
        assert status(*args) == status(*args, *url), args


def test_remote_refusals_exit_codes(setup, server, capsys, monkeypatch):
    bucket, rels, _ = setup
    url = ["--push-url", server.url]
    code, _, err = run(capsys, "status", *url)
    assert code == 5 and "not signed in" in err
    monkeypatch.setenv("PUSH_TOKEN", "wrong")
    code, _, err = run(capsys, "status", *url)
    assert code == 5 and "unknown API token" in err
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["dash"])
    code, _, err = run(capsys, "deploy", "web-1", "hello", rels[0].name, *url)
    assert code == 5 and "may not deploy" in err
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["ci"])
    code, _, err = run(capsys, "deploy", "db-1", "hello", rels[0].name, *url)
    assert code == 5 and "may not be deployed" in err
    code, _, err = run(capsys, "deploy", "web-1", "hello", rels[0].name, "--expect", rels[1].name, *url)
    assert code == 3 and "changed meanwhile" in err
    code, _, err = run(capsys, "deploy", "web-9", "hello", rels[0].name, *url)
    assert code == 1 and "not in" in err
    code, _, err = run(capsys, "status", "--push-url", "http://127.0.0.1:9")
    assert code == 4 and "cannot reach the push server" in err


def test_serve_refuses_no_auth_off_loopback(setup, tmp_path):
    _, _, conf = setup
    r = subprocess.run([sys.executable, "-m", "push.cli", "serve", "--no-auth", "--host", "0.0.0.0",
                        "--config", str(conf), "--store", str(tmp_path / "bucket")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 5 and "only when binding to 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_thousand_idle_watchers_on_a_real_server(setup, server, capsys):
    """Idle agents cost no thread: 1,000 long-polls are all woken by one deploy."""
    bucket, rels, _ = setup
    pid = server.process.pid

    def threads():
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"Threads:\s+(\d+)", status).group(1))

    async def scenario():
        limits = httpx.Limits(max_connections=1100, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60, trust_env=False) as c:
            rev = (await c.get("/api/v1/watch/web-1")).json()["rev"]
            tasks = [asyncio.create_task(c.get(f"/api/v1/watch/web-1?since={rev}&timeout=30")) for _ in range(1000)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                metrics = (await c.get("/metrics")).text
                if "push_watchers 1000.0" in metrics:
                    break
                await asyncio.sleep(0.2)
            assert "push_watchers 1000.0" in metrics
            waiting_threads = threads()
            start = time.monotonic()
            await asyncio.to_thread(main, ["deploy", "web-1", "hello", rels[0].name, "--push-url", server.url,
                                           "--token", TOKENS["ci"]])
            answers = await asyncio.gather(*tasks)
            return waiting_threads, time.monotonic() - start, answers

    waiting_threads, seconds, answers = asyncio.run(scenario())
    assert all(a.status_code == 200 and a.json()["changed"] for a in answers)
    assert seconds < 15
    assert waiting_threads < 60  # a thread per watcher would be over 1,000


def test_remote_errors_come_back_as_the_same_class() -> None:
    from push.errors import InvalidName, StoreUnavailable, UnknownServer
    from push.fleet import ChangedMeanwhile
    from push.fleetcli import _error_from_answer

    def rebuilt(status: int, body: object) -> Exception:
        return _error_from_answer(status, body, "http://127.0.0.1:1")

    assert type(rebuilt(409, {"error": "x changed", "type": "ChangedMeanwhile"})) is ChangedMeanwhile
    assert type(rebuilt(404, {"error": "no", "type": "UnknownServer"})) is UnknownServer
    assert type(rebuilt(400, {"error": "bad", "type": "InvalidName"})) is InvalidName
    # A class this client does not know (a newer server): the nearest one by status.
    assert type(rebuilt(409, {"error": "x", "type": "SomethingNew"})).__name__ == "Conflict"
    assert type(rebuilt(502, {"error": "gateway"})) is StoreUnavailable
    # An answer of FastAPI's own (a request that fails validation) keeps its words.
    assert "field required" in str(rebuilt(422, {"detail": [{"msg": "field required"}]}))
    assert str(rebuilt(404, {"error": "no such thing", "type": "NotFound"})) == (
        "no such thing (push server http://127.0.0.1:1)")


def test_credentials_in_a_push_url_are_refused_and_never_printed(setup, capsys, monkeypatch):
    code, out, err = run(capsys, "status", "--push-url", "http://user:hunter2@127.0.0.1:9")
    assert code == 2 and "hunter2" not in out + err and "user" not in err.replace("--push-url", "")
    assert "must not carry credentials (http://…@127.0.0.1:9)" in err and "PUSH_TOKEN" in err
    monkeypatch.setenv("PUSH_URL", "https://ops:hunter2@push.example:8443/")
    code, out, err = run(capsys, "history")
    assert code == 2 and "hunter2" not in out + err and "…@push.example:8443" in err


def test_push_remove_writes_the_placeholder_both_ways(setup, server, capsys, monkeypatch):
    bucket, rels, _ = setup
    from push import serverfile

    assert run(capsys, "deploy", "web-1", "hello", rels[0].name)[0] == 0
    code, out, _ = run(capsys, "remove", "web-1", "hello", "--note", "gone")
    assert code == 0 and out.startswith('removed hello from web-1: hello 2026-01-01 01:00 ') and '"hello/"' in out
    assert serverfile.read(bucket, "web-1").entries == ("hello/",)
    code, out, _ = run(capsys, "remove", "web-1", "hello")
    assert code == 0 and "already says \"hello/\"" in out
    # Through the push server (an admin's token), an app the file does not mention.
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["ops"])
    code, out, err = run(capsys, "remove", "web-1", "pulld", "--push-url", server.url, "--json")
    assert code == 0, err
    assert json.loads(out)["action"] == "remove" and serverfile.read(bucket, "web-1").entries == ("hello/", "pulld/")
    code, _, err = run(capsys, "remove", "web-1", "hello", "--expect", rels[1].name)
    assert code == 3 and "changed meanwhile" in err
