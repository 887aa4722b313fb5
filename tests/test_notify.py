"""Notifications (push.notify, docs/notifications.md): one JSON event per deploy, rollback
and removal, POSTed to the webhooks of [notify], with retries, never slowing the change.

Every webhook is a path of one receiver on 127.0.0.1 (tests/webhooks.py) shared by the
module; each test uses its own paths.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetdata import TOKENS, conf_text
from push import config, fleet, timestamps
from push.cli import main
from push.errors import InvalidConfig, NotAllowed
from push.fleet import ChangedMeanwhile
from push.notify import KINDS, Notifier, NotifySettings, Webhook, delivery, signature
from pushserver import PushServerProcess
from waiting import wait_for
from webhooks import TOLERANCE, Receiver, black_hole

ENVELOPE = {"kind", "id", "time", "who", "text"}
CHANGE_FIELDS = ENVELOPE | {"server", "app", "release", "previous", "history", "note", "via", "rollout"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def notifier(*hooks: Webhook, timeout: float = 2.0, attempts: int = 5, queue_size: int = 1000) -> Notifier:
    return Notifier(NotifySettings(webhooks=hooks, timeout=timeout, attempts=attempts, queue_size=queue_size))


def hook(receiver: Receiver, name: str, kinds: tuple[str, ...] = ("*",)) -> Webhook:
    return Webhook(url=receiver.url(name), name=name, kinds=kinds)


def stats(n: Notifier, name: str):
    return next(s for s in n.stats() if s.name == name)


# -- the config -------------------------------------------------------------------------------

def test_a_notify_table_is_read():
    cfg = config.parse("""
[notify]
timeout = 2.5
attempts = 3
[[notify.webhooks]]
url = "https://chat.example.com/hooks/T0/secret"
kinds = ["deploy", "rollout.*"]
[[notify.webhooks]]
url = "http://127.0.0.1:8080/a"
name = "audit"
[[notify.webhooks]]
url = "https://chat.example.com/hooks/other"
""")
    n = cfg.notify
    assert (n.timeout, n.attempts) == (2.5, 3)
    assert [(w.name, w.kinds) for w in n.webhooks] == [
        ("chat.example.com", ("deploy", "rollout.*")), ("audit", ("*",)), ("chat.example.com#3", ("*",))]
    chat = n.webhooks[0]
    assert chat.wants("deploy") and chat.wants("rollout.wave_done") and not chat.wants("remove")
    assert config.parse("[servers.a]\nappNames = []\n").notify.webhooks == ()


@pytest.mark.parametrize("text, expect", [
    ("[notify]\ntimeout = 0\n", ":2: notify: 'timeout' must be a number of seconds"),
    ("[notify]\ntimeout = \"5s\"\n", ":2: notify: 'timeout' must be"),
    ("[notify]\nattempts = 0\n", ":2: notify: 'attempts' must be a whole number from 1 to 10"),
    ("[notify]\nretries = 3\n", ":2: notify: unknown key 'retries' (known: timeout, attempts, webhooks)"),
    ("[notify]\nwebhooks = \"http://x\"\n", ":2: notify: 'webhooks' must be an array"),
    ("notify = 1\n", "'notify' must be a table"),
    ("[[notify.webhooks]]\nname = \"x\"\n", "notify.webhooks #1: 'url' is required"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\n[[notify.webhooks]]\nurl = \"ftp://h/secret\"\n",
     ":4: notify.webhooks #2: 'url' must be an http:// or https:// URL with a host"),
    ("[[notify.webhooks]]\nurl = \"http://[::1/\"\n", ":2: notify.webhooks #1: 'url' must be"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\nkinds = [\"deplyo\"]\n",
     ":3: notify.webhooks #1: kind 'deplyo' matches no event (known: deploy, rollback, remove, rollout.started"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\nkinds = []\n", ":3: notify.webhooks #1: 'kinds' must be a non-empty"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\nheaders = {}\n", ":3: notify.webhooks #1: unknown key 'headers'"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\nformat = \"slack\"\n",
     ":3: notify.webhooks #1: 'format' must be one of event, text"),
    ("[[notify.webhooks]]\nurl = \"http://a/\"\nname = \"x\"\n[[notify.webhooks]]\nurl = \"http://b/\"\n"
     "name = \"x\"\n", "notify.webhooks #2: name 'x' is used by another webhook"),
])
def test_a_bad_notify_table_is_one_clear_error(text, expect, tmp_path):
    path = tmp_path / "skiapush.conf"
    path.write_text(text)
    with pytest.raises(InvalidConfig) as e:
        config.load(path)
    message = str(e.value)
    assert message.startswith(str(path)) and expect in message and "\n" not in message
    assert "/secret" not in message  # a webhook URL may hold a token: never echoed


SECRET = "TOPSECRET-4f1c2a9e"  # never to be seen in an error, a log or a repr


def test_a_webhook_secret_is_read_from_a_file_or_the_environment(tmp_path, monkeypatch):
    key = tmp_path / "chat.secret"
    key.write_text(f"  {SECRET}-file\n")
    monkeypatch.setenv("PUSH_TEST_HOOK_SECRET", f"{SECRET}-env")
    cfg = config.parse(f"""
[[notify.webhooks]]
url = "http://127.0.0.1:8080/a"
secret_file = "{key}"
[[notify.webhooks]]
url = "http://127.0.0.1:8080/b"
secret_env = "PUSH_TEST_HOOK_SECRET"
[[notify.webhooks]]
url = "http://127.0.0.1:8080/c"
""")
    assert [w.secret for w in cfg.notify.webhooks] == [f"{SECRET}-file".encode(), f"{SECRET}-env".encode(), None]
    assert SECRET not in repr(cfg)


@pytest.mark.parametrize("line, expect", [
    ('secret_file = "{tmp}/missing.secret"', ":3: notify.webhooks #1: 'secret_file' {tmp}/missing.secret cannot be "
                                             "read: No such file or directory"),
    ('secret_file = "{tmp}"', ":3: notify.webhooks #1: 'secret_file' {tmp} is not a regular file"),
    ('secret_file = "{tmp}/empty.secret"', ":3: notify.webhooks #1: 'secret_file' {tmp}/empty.secret is empty"),
    ('secret_file = "{tmp}/huge.secret"', ":3: notify.webhooks #1: 'secret_file' {tmp}/huge.secret holds more "
                                          "than 4096 bytes"),
    ('secret_file = "hooks/chat.secret"', ":3: notify.webhooks #1: 'secret_file' must be the absolute path"),
    ('secret_env = "PUSH_TEST_NO_SUCH_SECRET"', ":3: notify.webhooks #1: 'secret_env': the environment variable "
                                                "PUSH_TEST_NO_SUCH_SECRET is not set, or empty"),
    ('secret_env = "PUSH_TEST_EMPTY_SECRET"', ":3: notify.webhooks #1: 'secret_env': the environment variable "
                                              "PUSH_TEST_EMPTY_SECRET is not set, or empty"),
    ('secret_env = "HOOK-SECRET"', ":3: notify.webhooks #1: 'secret_env' must be the name of an environment"),
    ('secret_env = ["X"]', ":3: notify.webhooks #1: 'secret_env' must be the name of an environment"),
    ('secret_file = "{tmp}/good.secret"\nsecret_env = "PUSH_TEST_HOOK_SECRET"',
     ":4: notify.webhooks #1: give 'secret_file' or 'secret_env', not both"),
])
def test_a_bad_webhook_secret_is_one_clear_error(line, expect, tmp_path, monkeypatch):
    monkeypatch.setenv("PUSH_TEST_HOOK_SECRET", SECRET)
    monkeypatch.setenv("PUSH_TEST_EMPTY_SECRET", " \n")
    monkeypatch.delenv("PUSH_TEST_NO_SUCH_SECRET", raising=False)
    (tmp_path / "good.secret").write_text(SECRET)
    (tmp_path / "empty.secret").write_text("\n")
    (tmp_path / "huge.secret").write_text(SECRET * 300)
    path = tmp_path / "skiapush.conf"
    path.write_text(f'[[notify.webhooks]]\nurl = "http://127.0.0.1:8080/a"\n{line.format(tmp=tmp_path)}\n')
    with pytest.raises(InvalidConfig) as e:
        config.load(path)
    message = str(e.value)
    assert message.startswith(f"{path}:") and expect.format(tmp=tmp_path) in message, message
    assert "\n" not in message and SECRET not in message


# -- events of changes, straight to the bucket ------------------------------------------------

def test_deploy_rollback_and_remove_each_send_one_event(ctx, rels, receiver):
    ctx.notifier = notifier(hook(receiver, "changes"), hook(receiver, "rollouts-only", ("rollout.*",)))
    try:
        d1 = fleet.deploy(ctx, "alice@example.com", "web-1", "hello", rels[0].name, note="first")
        d2 = fleet.deploy(ctx, "alice@example.com", "web-1", "hello", rels[1].name)
        rb = fleet.rollback(ctx, "bob@example.com", "web-1", "hello", note="bad")
        rm = fleet.remove(ctx, "carol@example.com", "web-1", "hello")
        # Nothing changed, refused, or changed meanwhile: nothing is sent.
        assert not fleet.remove(ctx, "carol@example.com", "web-1", "hello").changed
        with pytest.raises(NotAllowed):
            fleet.deploy(ctx, "alice@example.com", "db-1", "hello", rels[0].name)
        with pytest.raises(ChangedMeanwhile):
            fleet.deploy(ctx, "alice@example.com", "web-1", "hello", rels[2].name, expected_from=rels[3].name)
        got = receiver.wait_events("changes", 4)
    finally:
        ctx.notifier.close(5)
    assert len(receiver.got("changes")) == 4 and receiver.got("rollouts-only") == []
    by_kind = [(e["kind"], e["who"], e["release"], e["previous"], e["history"], e["note"]) for e in got]
    assert by_kind == [
        ("deploy", "alice@example.com", rels[0].name, None, d1.record.id, "first"),
        ("deploy", "alice@example.com", rels[1].name, rels[0].name, d2.record.id, ""),
        ("rollback", "bob@example.com", rels[0].name, rels[1].name, rb.record.id, "bad"),
        ("remove", "carol@example.com", None, rels[0].name, rm.record.id, ""),
    ]
    for event in got:
        assert set(event) == CHANGE_FIELDS and event["server"] == "web-1" and event["app"] == "hello"
        assert event["via"] == "test" and re.fullmatch(r"\d{20}-[0-9a-f]{8}", event["id"])
        assert abs((timestamps.parse(event["time"]) - timestamps.now()).total_seconds()) < 60
    assert got[2]["text"] == (f"bob@example.com rolled back hello on web-1 to hello 2026-01-01 01:00 "
                              f"{rels[0].release.short_hash} (was hello 2026-01-01 02:00 {rels[1].release.short_hash})")
    assert len({e["id"] for e in got}) == 4
    posted = receiver.got("changes")[0]
    assert posted.headers["Content-Type"] == "application/json"
    assert posted.headers["X-Push-Event"] == "deploy" and posted.headers["X-Push-Delivery"] == got[0]["id"]
    assert stats(ctx.notifier, "changes").delivered == {"deploy": 2, "rollback": 1, "remove": 1}


def test_emit_takes_any_kind_and_fields_without_raising(receiver, caplog):
    chat = Webhook(url=receiver.url("chat"), name="chat", kinds=("rollout.failed",), format="text")
    n = notifier(hook(receiver, "rollout"), chat)
    try:
        n.emit("rollout.wave_done", {"who": "driver", "rollout": "r-1", "app": "hello", "release": "hello/x",
                                     "wave": 2, "servers": ["web-1", "web-2"], "at": timestamps.now(),
                                     "kind": "not-mine"})
        n.emit("no.such.kind", {"app": "hello"})
        n.emit("rollout.failed", {"rollout": "r-2", "release": "hello/x", "wave": 1, "servers": ["web-1"],
                                  "reason": "web-1 unhealthy", "since": {1, 2}})  # a set: sent as its str()
        events = receiver.wait_events("rollout", 2)
        (line,) = receiver.wait_events("chat", 1)
    finally:
        n.close(5)
    assert line == {"text": "rollout r-2 of hello/x failed (wave 1) on web-1: web-1 unhealthy"}
    assert [e["kind"] for e in events] == ["rollout.wave_done", "rollout.failed"]
    assert events[0]["wave"] == 2 and events[0]["servers"] == ["web-1", "web-2"] and events[0]["who"] == "driver"
    assert events[0]["text"] == "rollout r-1 of hello/x wave done by driver (wave 2) on web-1, web-2"
    assert events[1]["since"] == "{1, 2}" and events[1]["reason"] == "web-1 unhealthy"
    assert "unknown event kind 'no.such.kind'" in caplog.text
    assert Notifier.disabled().stats() == [] and set(KINDS) >= {"deploy", "rollout.completed", "rollout.aborted"}


# -- delivery ---------------------------------------------------------------------------------

def test_backoff_doubles_with_jitter_up_to_a_cap():
    for attempt, (low, high) in {1: (0.25, 0.5), 2: (0.5, 1), 3: (1, 2), 4: (2, 4), 12: (15, 30)}.items():
        waits = {delivery.backoff(attempt) for _ in range(50)}
        assert all(low <= w <= high for w in waits) and len(waits) > 1


def test_a_500_then_a_429_then_200_is_delivered_after_retries(receiver):
    receiver.answer("flaky", 500, 429)
    n = notifier(hook(receiver, "flaky"))
    try:
        n.emit("deploy", {"who": "a", "server": "web-1", "app": "hello"})
        wait_for(lambda: stats(n, "flaky").delivered, 10, "delivery after retries")
    finally:
        n.close(5)
    posts = receiver.got("flaky")
    assert [p.status for p in posts] == [500, 429, 200]
    assert len({p.body["id"] for p in posts}) == 1  # the same event: a receiver can drop a duplicate
    s = stats(n, "flaky")
    assert (s.delivered, s.dropped, s.retries, s.queued) == ({"deploy": 1}, {}, 2, 0)


def test_a_4xx_is_not_retried_and_failures_are_counted(receiver):
    receiver.answer("strict", 400)
    receiver.answer("down", 503, 503)
    n = notifier(hook(receiver, "strict"), hook(receiver, "down"), attempts=2)
    try:
        n.emit("deploy", {"who": "a"})
        wait_for(lambda: stats(n, "strict").dropped and stats(n, "down").dropped, 10, "both dropped")
        n.emit("remove", {"who": "a"})  # the workers go on after a failure
        wait_for(lambda: stats(n, "strict").delivered and stats(n, "down").delivered, 10, "the next event")
    finally:
        n.close(5)
    assert [p.status for p in receiver.got("strict")] == [400, 200]
    assert [p.status for p in receiver.got("down")] == [503, 503, 200]
    assert stats(n, "strict").dropped == {("deploy", "rejected"): 1} and stats(n, "strict").retries == 0
    assert stats(n, "down").dropped == {("deploy", "attempts"): 1} and stats(n, "down").retries == 1


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_a_webhook_with_a_secret_gets_every_attempt_signed(receiver):
    """The receiver checks each POST as docs/notifications.md says (tests/webhooks.py verify):
    Push's deliveries pass, each attempt with its own time; a tampered body, another secret
    or an old timestamp fail."""
    secret = b"hook-secret-1"
    receiver.require_signature("signed", secret)
    receiver.require_signature("signed-text", secret)
    receiver.answer("signed", 503)
    n = notifier(Webhook(url=receiver.url("signed"), name="signed", secret=secret),
                 Webhook(url=receiver.url("signed-text"), name="signed-text", format="text", secret=secret),
                 hook(receiver, "unsigned"))
    try:
        n.emit("deploy", {"who": "alice@example.com", "server": "web-1", "app": "hello"})
        wait_for(lambda: all(stats(n, name).delivered for name in ("signed", "signed-text", "unsigned")), 10,
                 "three deliveries")
    finally:
        n.close(5)
    posts = receiver.got("signed")
    assert [(p.status, p.verified) for p in posts] == [(503, True), (200, True)]  # the retry is signed too
    (text,) = receiver.got("signed-text")
    assert (text.status, text.verified, list(text.body)) == (200, True, ["text"])  # the body sent is signed
    (plain,) = receiver.got("unsigned")
    assert "X-Push-Signature-256" not in plain.headers and "X-Push-Timestamp" not in plain.headers
    stamps = [int(p.headers["X-Push-Timestamp"]) for p in posts]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 10
    assert all(re.fullmatch(r"sha256=[0-9a-f]{64}", p.headers["X-Push-Signature-256"]) for p in posts)

    # Replayed by someone else, to the same receiver:
    sent = posts[-1]
    headers = {k: v for k, v in sent.headers.items() if k.startswith("X-Push-") or k == "Content-Type"}
    url = receiver.url("signed")
    tampered = sent.raw.replace(b'"alice@example.com"', b'"mallory@example.com"')
    assert tampered != sent.raw
    assert post(url, tampered, headers) == 401

    def signed(body: bytes, at: int, key: bytes = secret) -> dict[str, str]:
        mac = hmac.new(key, f"{at}.".encode() + body, hashlib.sha256).hexdigest()
        return {**headers, "X-Push-Timestamp": str(at), "X-Push-Signature-256": f"sha256={mac}"}

    now = int(time.time())
    assert post(url, sent.raw, signed(sent.raw, now, b"another-secret")) == 401
    assert post(url, sent.raw, signed(sent.raw, now - TOLERANCE - 10)) == 401   # too old
    earlier = str(int(sent.headers["X-Push-Timestamp"]) - 1)
    assert post(url, sent.raw, {**headers, "X-Push-Timestamp": earlier}) == 401  # another time, same signature
    assert post(url, sent.raw, signed(sent.raw, now)) == 200   # the check can pass: it is the signature


def test_the_documented_receiver_check_accepts_push_signatures():
    """The snippet of docs/notifications.md, run as it is, on Push's own headers."""
    docs = (Path(__file__).parent.parent / "docs" / "notifications.md").read_text()
    code = re.search(r"## Signed deliveries.*?```python\n(.*?)```", docs, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    verify = namespace["verify"]
    body = b'{"kind": "deploy"}'
    sent = signature.headers(b"k", body)
    ts, sig = sent["X-Push-Timestamp"], sent["X-Push-Signature-256"]
    assert verify(b"k", ts, sig, body)
    assert not verify(b"k", ts, sig, body + b" ") and not verify(b"other", ts, sig, body)
    assert not verify(b"k", None, sig, body) and not verify(b"k", ts, "sha256=\u00e9", body)
    old = signature.headers(b"k", body, now=time.time() - 301)
    assert not verify(b"k", old["X-Push-Timestamp"], old["X-Push-Signature-256"], body)


def test_a_dead_webhook_does_not_slow_a_deploy(ctx, rels):
    """A webhook that accepts connections and never answers (the worst: every POST waits its
    timeout): deploys take as long as without notifications, the queue bounds memory, and
    close() keeps to its deadline."""
    hole = black_hole()
    dead = Webhook(url=f"http://127.0.0.1:{hole.getsockname()[1]}/hook", name="dead")

    quiet, loud = Notifier.disabled(), notifier(dead, timeout=5, queue_size=3)
    times: dict[Notifier, list[float]] = {quiet: [], loud: []}
    try:
        # Interleaved, so that a change in the machine's load weighs on both alike.
        for n in range(14):
            ctx.notifier = loud if n % 2 else quiet
            start = time.perf_counter()
            fleet.deploy(ctx, "alice@example.com", "web-1", "hello", rels[n % 2].name)
            if n >= 2:  # the first two warm up (imports, the catalogue)
                times[ctx.notifier].append(time.perf_counter() - start)
        start = time.monotonic()
        loud.close(0.5)
        closing = time.monotonic() - start
    finally:
        hole.close()
    without, with_dead = times[quiet], times[loud]
    print(f"deploy median without notify {statistics.median(without) * 1000:.1f} ms, "
          f"with a dead webhook {statistics.median(with_dead) * 1000:.1f} ms; close(0.5) took {closing:.2f} s")
    # A deploy that waited on the webhook would take its 5 s timeout; the medians allow for a
    # loaded machine (measured: within a few ms of each other, either way).
    assert max(with_dead) < 2.5
    assert statistics.median(with_dead) < statistics.median(without) * 2 + 0.020
    assert closing < 1.5
    s = stats(loud, "dead")
    # At most 3 queued and one POST waiting on the black hole; the rest dropped at once for
    # a full queue; at close, the POST's and the queued events: none lost without a count.
    assert s.delivered == {} and s.queued == 0 and sum(s.dropped.values()) == 7
    assert s.dropped[("deploy", "queue_full")] >= 3 and s.dropped[("deploy", "shutdown")] >= 3


# -- the front ends ---------------------------------------------------------------------------

@pytest.fixture
def conf_with_notify(tmp_path: Path, receiver: Receiver):
    def write(url: str, hook_lines: str = "", **table: object) -> Path:
        path = tmp_path / "skiapush.conf"
        settings = "".join(f"{k} = {v}\n" for k, v in table.items())
        path.write_text(conf_text(f'\n[notify]\n{settings}[[notify.webhooks]]\nurl = "{url}"\nname = "hook"\n'
                                  f'{hook_lines}'))
        return path
    return write


def test_the_cli_straight_to_the_bucket_sends_before_it_exits(bucket, rels, conf_with_notify, receiver,
                                                              monkeypatch, capsys):
    monkeypatch.setenv("PUSH_STORE", str(bucket.root))
    # Signed with a secret from the environment; the receiver refuses (401) what fails its check.
    monkeypatch.setenv("PUSH_TEST_CLI_SECRET", "cli-secret\n")
    receiver.require_signature("cli", b"cli-secret")
    conf = conf_with_notify(receiver.url("cli"), 'secret_env = "PUSH_TEST_CLI_SECRET"\n')
    monkeypatch.setenv("PUSH_CONFIG", str(conf))
    monkeypatch.setenv("PUSH_USER", "dave@example.com")
    monkeypatch.delenv("PUSH_URL", raising=False)
    for argv in (["deploy", "web-2", "hello", rels[1].name, "--note", "from the cli"],
                 ["deploy", "web-2", "hello", rels[2].name], ["rollback", "web-2", "hello"],
                 ["remove", "web-2", "hello", "--note", "retired"]):
        assert main(argv) == 0
        # main() returned: its event was already delivered (the CLI flushes at exit).
        assert receiver.events("cli")[-1]["kind"] == argv[0]
    events = receiver.events("cli")
    assert [(e["kind"], e["release"], e["previous"], e["note"]) for e in events] == [
        ("deploy", rels[1].name, None, "from the cli"), ("deploy", rels[2].name, rels[1].name, ""),
        ("rollback", rels[1].name, rels[2].name, ""), ("remove", None, rels[1].name, "retired")]
    assert all(e["who"] == "dave@example.com" and e["server"] == "web-2" and e["app"] == "hello"
               and e["via"].startswith("cli@") and set(e) == CHANGE_FIELDS for e in events)
    assert [p.verified for p in receiver.got("cli")] == [True] * 4
    capsys.readouterr()


def test_the_cli_waits_at_most_3_s_for_a_dead_webhook(bucket, rels, conf_with_notify, monkeypatch, caplog):
    hole = black_hole()
    monkeypatch.setenv("PUSH_STORE", str(bucket.root))
    monkeypatch.setenv("PUSH_CONFIG", str(conf_with_notify(f"http://127.0.0.1:{hole.getsockname()[1]}/x")))
    monkeypatch.setenv("PUSH_USER", "dave@example.com")
    monkeypatch.delenv("PUSH_URL", raising=False)
    try:
        start = time.monotonic()
        assert main(["deploy", "web-2", "hello", rels[1].name]) == 0
        took = time.monotonic() - start
    finally:
        hole.close()
    assert 2.5 < took < 5, took
    # One line says so (the CLI shows warnings and errors on stderr).
    (said,) = [r.getMessage() for r in caplog.records if r.name == "push.notify" and r.levelname != "INFO"]
    assert said.startswith("notify hook: ") and "deploy event" in said and "dropped" in said, said


def test_through_a_push_server_and_its_metrics(bucket, rels, tmp_path, receiver, monkeypatch, capsys):
    """`push serve` as a process, the CLI through it: the server sends each event (after a
    502, retried) and counts it in /metrics."""
    receiver.answer("server", 502)
    receiver.require_signature("server", b"server-secret")
    (tmp_path / "ops-chat.secret").write_text("server-secret\n")
    conf = tmp_path / "served.conf"
    conf.write_text(conf_text(f'\n[notify]\n[[notify.webhooks]]\nurl = "{receiver.url("server")}"\n'
                              f'name = "ops-chat"\nsecret_file = "{tmp_path / "ops-chat.secret"}"\n'))
    server = PushServerProcess(str(bucket.root), conf, tmp_path / "serve.log")
    try:
        monkeypatch.setenv("PUSH_TOKEN", TOKENS["ops"])
        monkeypatch.delenv("PUSH_STORE", raising=False)
        remote = ["--push-url", server.url]
        assert main(["deploy", "web-1", "hello", rels[2].name, "--note", "api", *remote]) == 0
        assert main(["deploy", "web-1", "hello", rels[3].name, *remote]) == 0
        assert main(["rollback", "web-1", "hello", *remote]) == 0
        assert main(["remove", "web-1", "hello", *remote]) == 0
        events = receiver.wait_events("server", 4)

        def metrics_counting_the_removal() -> str | None:
            # The receiver has the event before the push server has its answer and counts it.
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(server.url + "/metrics") as r:
                text = r.read().decode()
            return text if 'push_notify_delivered_total{kind="remove",webhook="ops-chat"} 1.0' in text else None

        metrics = wait_for(metrics_counting_the_removal, 10, "the removal's delivery in /metrics")
    finally:
        server.stop()
    capsys.readouterr()
    assert [(e["kind"], e["release"], e["previous"], e["note"]) for e in events] == [
        ("deploy", rels[2].name, None, "api"), ("deploy", rels[3].name, rels[2].name, ""),
        ("rollback", rels[2].name, rels[3].name, ""), ("remove", None, rels[2].name, "")]
    assert {e["who"] for e in events} == {"admin@example.com"}
    assert all(e["via"].startswith("push-server@") and set(e) == CHANGE_FIELDS for e in events)
    for kind, n in (("deploy", 2), ("rollback", 1), ("remove", 1)):
        assert f'push_notify_delivered_total{{kind="{kind}",webhook="ops-chat"}} {n}.0' in metrics
    assert 'push_notify_retries_total{webhook="ops-chat"} 1.0' in metrics
    assert 'push_notify_queued{webhook="ops-chat"} 0.0' in metrics
    assert "push_notify_dropped_total" in metrics and "/hook/" not in metrics
    # Signed from the secret file, the retried POST too.
    assert [(p.status, p.verified) for p in receiver.got("server")] == [(502, True)] + [(200, True)] * 4


@pytest.mark.parametrize("line, expect", [
    ('kinds = ["deploys"]', "kind 'deploys' matches no event"),
    ('secret_file = "/nonexistent/hook.key"', "'secret_file' /nonexistent/hook.key cannot be read: No such file"),
    ('secret_env = "PUSH_TEST_UNSET_KEY"', "'secret_env': the environment variable PUSH_TEST_UNSET_KEY is not set"),
])
def test_a_bad_notify_table_stops_a_command_with_one_line(line, expect, bucket, rels, tmp_path, monkeypatch, capsys):
    path = tmp_path / "bad.conf"
    path.write_text(conf_text(f'\n[[notify.webhooks]]\nurl = "https://chat.example.com/hook/secret"\n{line}\n'))
    monkeypatch.setenv("PUSH_STORE", str(bucket.root))
    monkeypatch.setenv("PUSH_CONFIG", str(path))
    monkeypatch.delenv("PUSH_URL", raising=False)
    monkeypatch.delenv("PUSH_TEST_UNSET_KEY", raising=False)
    assert main(["deploy", "web-1", "hello", rels[0].name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:" in err and expect in err, err
    assert "hook/secret" not in err  # the webhook URL is not echoed
