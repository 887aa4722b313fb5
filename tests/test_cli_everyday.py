"""The CLI as operators use it every day (issue 14), each command straight to the bucket and
through a push server: naming a release, one mode everywhere, remove and deploy to every
server, and errors that say what is wrong.

One bucket and one push server serve the whole module; each test takes servers of its own
(`cli.fresh()`), so the tests do not see each other's changes.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from fleetdata import T0, TOKENS, conf_text, make_release, report
from push import catalog
from push.cli import main
from push.release import Release, ReleaseInfo
from push.store.local import LocalStore
from pushserver import PushServerProcess
from waiting import wait_for

FRESH = [f"s{n}" for n in range(1, 40)]
EXTRA = "".join(f'\n[servers.{s}]\nappNames = ["hello", "pulld", "twin"]\n' for s in FRESH) + """
[servers.b1]
appNames = ["batch"]
[servers.b2]
appNames = ["batch"]
[servers.c1]
appNames = ["crons"]
[servers.c2]
appNames = ["crons"]
"""
# The app a fleet-wide deploy test uses in each mode (so one never sees the other's servers).
EVERYWHERE = {"direct": ("batch", ["b1", "b2"]), "remote": ("crons", ["c1", "c2"])}


class World:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        root = tmp_path_factory.mktemp("everyday")
        self.store_dir = root / "bucket"
        self.bucket = LocalStore(self.store_dir)
        self.rels = [make_release(self.bucket, "hello", n) for n in range(1, 4)]
        make_release(self.bucket, "pulld", 1)
        # Two releases whose git hashes share their first eight digits.
        self.twins = []
        for n, h in enumerate(("abcdef12" + "0" * 32, "abcdef12" + "1" * 32)):
            info = ReleaseInfo(Release("twin", "bob", "box", T0 + timedelta(hours=n), h), note="twin")
            catalog.publish(self.bucket, info, b"deb")
            self.twins.append(info)
        self.batch = {app: [make_release(self.bucket, app, n) for n in (1, 2)] for app in ("batch", "crons")}
        self.conf = root / "skiapush.conf"
        self.conf.write_text(conf_text(EXTRA))
        self.server = PushServerProcess(str(self.store_dir), self.conf, root / "serve.log")
        self.names = iter(FRESH)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory)
    yield w
    w.server.stop()


class Cli:
    """Runs `push` in this process, straight to the bucket or through the push server."""

    def __init__(self, world: World, mode: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.world, self.mode, self.capsys = world, mode, capsys

    def fresh(self) -> str:
        return next(self.world.names)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        extra = ["--push-url", self.world.server.url] if self.mode == "remote" else []
        try:
            code = main([*argv, *extra])
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture(params=["direct", "remote"])
def cli(request, world, capsys, monkeypatch):
    monkeypatch.setenv("PUSH_STORE", str(world.store_dir))
    monkeypatch.setenv("PUSH_CONFIG", str(world.conf))
    monkeypatch.setenv("PUSH_USER", "carol@example.com")
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["ops"])
    monkeypatch.delenv("PUSH_URL", raising=False)
    return Cli(world, request.param, capsys)


def deployed(cli: Cli, server: str) -> str | None:
    code, out, err = cli("status", server, "--json")
    assert code == 0, err
    return next(a["desired"] for a in json.loads(out)["servers"][0]["apps"] if a["app"] == "hello")


# -- 1. naming a release ------------------------------------------------------------------------


def test_a_release_by_hash_prefix_latest_and_previous(cli):
    rels, server = cli.world.rels, cli.fresh()
    code, out, err = cli("deploy", server, "hello", rels[0].release.hash[:7])
    assert code == 0 and out.startswith(f"deployed hello on {server}: (nothing) -> ") and deployed(cli, server) \
        == rels[0].name, err
    assert cli("deploy", server, "hello", "latest")[0] == 0 and deployed(cli, server) == rels[2].name
    assert cli("deploy", server, "hello", rels[1].name)[0] == 0
    code, out, _ = cli("deploy", server, "hello", "previous")  # what ran before: latest (rels[2])
    assert code == 0 and deployed(cli, server) == rels[2].name
    assert cli("deploy", server, "hello", rels[1].release.hash[:12].upper())[0] == 0
    assert deployed(cli, server) == rels[1].name


def test_names_that_name_no_single_release(cli):
    server, twins = cli.fresh(), cli.world.twins
    code, _, err = cli("deploy", server, "twin", "abcdef1")
    assert code == 1 and "abcdef1 names 2 releases of twin" in err and twins[0].name in err and twins[1].name in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli("deploy", server, "hello", "1234567")
    assert code == 1 and "no release of hello has a git hash starting 1234567" in err
    code, _, err = cli("deploy", server, "hello", "abc")
    assert code == 1 and "7 or more hex digits" in err
    code, _, err = cli("deploy", server, "hello", "previous")
    assert code == 1 and "no history of hello" in err


# -- 2. one mode everywhere ---------------------------------------------------------------------


def test_releases_the_same_both_ways(world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PUSH_TOKEN", TOKENS["dash"])
    monkeypatch.setenv("PUSH_CONFIG", str(world.conf))
    url = ["--push-url", world.server.url]
    for args in (["releases", "--json"], ["releases", "hello", "--json"], ["releases", "twin"]):
        assert main([*args, "--store", str(world.store_dir)]) == 0
        direct = capsys.readouterr().out
        assert main([*args, *url]) == 0
        assert capsys.readouterr().out == direct, args
    assert direct.count("abcdef1 ") == 2  # the short hash people type
    # Only PUSH_URL set: the push server answers, no default store is read.
    monkeypatch.delenv("PUSH_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("PUSH_URL", world.server.url)
    for args in (["releases", "hello", "--json"], ["status", "s1", "--json"], ["history", "--json"]):
        assert main(args) == 0, args
        assert json.loads(capsys.readouterr().out), args
    assert not (tmp_path / "empty").exists()


def test_a_store_that_does_not_exist_is_an_error(world, capsys, tmp_path):
    for args in (["status"], ["history"], ["deploy", "s1", "hello", "latest"]):
        code = main([*args, "--store", str(tmp_path / "nonexistent"), "--config", str(world.conf)])
        err = capsys.readouterr().err
        assert code == 4 and err.strip() == (f"push: error: no store at {tmp_path}/nonexistent: the directory does "
                                             f"not exist (--store {tmp_path}/nonexistent)"), args


# -- 3. remove, deploy to every server ----------------------------------------------------------


def test_remove(cli):
    rels, server = cli.world.rels, cli.fresh()
    assert cli("deploy", server, "hello", "latest")[0] == 0
    code, out, _ = cli("remove", server, "hello", "--expect", rels[0].name)
    assert code == 3 and deployed(cli, server) == rels[2].name
    code, out, err = cli("remove", server, "hello", "--note", "retired", "--expect", rels[2].release.hash[:7])
    assert code == 0 and out.strip() == f"removed hello from {server}: hello 2026-01-01 03:00 " \
                                        f"{rels[2].release.short_hash} -> \"hello/\" (its agent removes it)", err
    assert deployed(cli, server) is None
    records = json.loads(cli("history", server, "--json")[1])
    assert (records[0]["action"], records[0]["from"], records[0]["note"]) == ("remove", rels[2].name, "retired")
    code, out, _ = cli("remove", server, "hello")
    assert code == 0 and out.strip() == f'{server}\'s server file already says "hello/": nothing changed'


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_deploy_to_every_server_with_the_guard(cli, monkeypatch):
    app, servers = EVERYWHERE[cli.mode]
    old, new = cli.world.batch[app]
    for server in servers:
        assert cli("deploy", server, app, old.name)[0] == 0
    # No terminal to ask on: --yes is needed.
    code, _, err = cli("deploy", "--all-servers", app, new.release.hash[:8])
    assert code == 2 and "give --yes where there is no terminal" in err
    # On a terminal: the servers and what each runs, then the question; "n" changes nothing.
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    code, out, err = cli("deploy", "--all-servers", app, new.release.hash[:8])
    assert code == 1 and out == "" and "push: nothing deployed" in err
    assert f"deploy {app} 2026-01-01 02:00 {new.release.short_hash} to every server that runs {app}:" in err
    for server in servers:
        assert f"  {server:<24} {app} 2026-01-01 01:00 {old.release.short_hash}\n" in err
    assert "deploy to these 2 server(s)? [y/N]" in err
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, err = cli("deploy", "--all-servers", app, "latest", "--note", "all")
    assert code == 0, err
    assert out.splitlines() == [f"deployed {app} on {s}: {app} 2026-01-01 01:00 {old.release.short_hash} -> "
                                f"{app} 2026-01-01 02:00 {new.release.short_hash}" for s in servers]
    code, out, _ = cli("deploy", "--all-servers", app, new.name, "--yes", "--json")
    assert code == 0 and [o["changed"] for o in json.loads(out)["outcomes"]] == [False, False]
    code, _, err = cli("deploy", "--all-servers", app, "previous", "--yes")
    assert code == 1 and "'previous' names what ran before on one server" in err


# -- 4. errors that say what is wrong -----------------------------------------------------------


def test_unknown_app_unknown_server(cli):
    server = cli.fresh()
    code, _, err = cli("deploy", server, "helo", "latest")
    assert code == 1 and err.startswith("push: error: no such app 'helo'") and "did you mean hello?" in err
    code, _, err = cli("rollback", server, "pulld2")
    assert code == 1 and "no such app 'pulld2'" in err and "did you mean pulld?" in err
    code, _, err = cli("releases", "helo")
    assert code == 1 and "no such app 'helo'" in err
    code, out, err = cli("history", "no-such-server")
    assert code == 1 and out == "" and "'no-such-server' is not in" in err
    code, out, err = cli("history", "--app", "nope")
    assert code == 1 and "no such app 'nope'" in err


def test_status_problems_exit_code(cli):
    server = cli.fresh()
    report(cli.world.bucket, server, {})  # a fresh report, nothing desired: no problem
    # Through a push server, the report written straight to the bucket shows at its next poll.
    wait_for(lambda: cli("status", server, "--problems")[:2] == (0, ""), what="the fresh report, no problems")
    assert cli("deploy", server, "hello", "latest")[0] == 0  # desired, not installed yet: converging, no problem
    assert cli("status", server, "--problems")[:2] == (0, "")
    report(cli.world.bucket, server, {"hello": cli.world.rels[2].name}, failed={"hello": "dpkg: error"})
    wait_for(lambda: cli("status", server, "--problems")[0] == 7, what="the failure seen")
    code, out, _ = cli("status", server, "--problems", "--json")
    assert code == 7 and json.loads(out)["servers"][0]["server"] == server


def test_status_indents_every_line_of_a_reason(cli):
    # A reason spans lines (the failing check, then the unit's log): each stays under its
    # app, indented, so the output still reads as one block per server.
    server = cli.fresh()
    assert cli("deploy", server, "hello", "latest")[0] == 0
    report(cli.world.bucket, server, {"hello": cli.world.rels[2].name},
           failed={"hello": "dpkg: error\nlast lines of hello.service:\nhello 3 listening"})
    wait_for(lambda: cli("status", server)[1].count("hello 3 listening") == 1, what="the failure seen")
    out = cli("status", server)[1]
    lines = out.splitlines()
    assert lines[0].startswith(server) and all(line.startswith("  ") for line in lines[1:]), out
    assert any(line.strip() == "last lines of hello.service:" for line in lines), out


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><head><title>Welcome to nginx!</title></head><body>hello</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_push():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_a_push_url_that_is_not_push(world, not_push, capsys):
    for args in (["status"], ["releases"], ["deploy", "s1", "hello", "latest"]):
        code = main([*args, "--push-url", not_push])
        err = capsys.readouterr().err
        assert code == 4, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"push: error: {not_push} is not a Push server: ")
        assert "answered HTTP 200, text/html" in err and "page 'Welcome to nginx!'" in err and "<html" not in err


def test_a_push_url_with_a_wrong_path_or_no_scheme(world, capsys):
    # The push server answers, but not at this path (an API or page URL given for its root):
    # exit 4 saying to give the root, not "no page at /api/v1/api/v1/fleet" as a not-found (1).
    for path in ("/api/v1", "/fleet"):
        code = main(["status", "--push-url", world.server.url + path])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 4 and len(lines) == 1, err
        assert f"{world.server.url}{path} is a Push server's page, not its root URL" in err, err
        assert f"--push-url {world.server.url}" in err, err
    # No scheme: a usage error (2, as a bad --store URL), quoting what was given.
    host = world.server.url.removeprefix("http://")
    code = main(["status", "--push-url", host])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"push: error: --push-url must be http(s)://HOST[:PORT], not {host!r}", err


def test_typo_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["stauts"])
    assert e.value.code == 2 and "did you mean 'status'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["unit", "s1", "x.service", "restrat"])
    assert e.value.code == 2 and "did you mean 'restart' or 'start'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "  3    conflict" in out and "  7    push status --problems found problems" in out


# -- 5. shell completion --------------------------------------------------------------------------


def rollouts_of(world: World) -> tuple[str, str]:
    """(an ended rollout, an active one) of batch on b1, made once per module: the active one
    has no active pointer, so no driver drives it and no plain deploy is refused."""
    if not hasattr(world, "rollout_ids"):
        from push import config, fleet
        from push.rollout import control, model
        from push.rollout.control import RolloutRequest

        ctx = fleet.Context.open(world.bucket, config.load(world.conf), via="test")
        req = RolloutRequest(app="batch", release=world.batch["batch"][1].name, servers=["b1"])
        ended = control.start(ctx, "ann", req)
        model.update(world.bucket, ended.id, lambda r: setattr(r, "state", "aborted"))
        active = control.start(ctx, "ann", req)
        model.release_active(world.bucket, "batch", rollout_id=active.id)
        world.rollout_ids = (ended.id, active.id)  # type: ignore[attr-defined]
    return world.rollout_ids  # type: ignore[attr-defined,no-any-return]


def test_completion_values(cli):
    ended, active = rollouts_of(cli.world)
    assert cli("completion", "--values", "rollouts")[1].split() == [active, ended]
    assert cli("completion", "--values", "active-rollouts")[1].split() == [active]
    assert cli("completion", "--values", "servers")[1].split() == ["web-1", "web-2", "db-1", *FRESH,
                                                                   "b1", "b2", "c1", "c2"]
    apps = cli("completion", "--values", "apps")[1].split()
    assert apps == ["batch", "crons", "hello", "pulld", "twin"]
    # Two hashes sharing eight digits: each by its shortest unique prefix.
    assert cli("completion", "--values", "releases", "twin")[1].split() == ["latest", "previous", "abcdef121",
                                                                            "abcdef120"]
    hello = cli("completion", "--values", "releases", "hello")[1].split()
    assert hello == ["latest", "previous", *(r.release.hash[:7] for r in reversed(cli.world.rels))]


def _shell_env(world: World) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSH_")}
    # The script calls `push` back: the one of this environment.
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PUSH_STORE": str(world.store_dir),
            "PUSH_CONFIG": str(world.conf), "PUSH_TOKEN": TOKENS["dash"]}


def _script(world: World, shell: str) -> Path:
    path = world.store_dir.parent / f"push.{shell}"
    if not path.exists():
        r = subprocess.run(["push", "completion", shell], env=_shell_env(world), capture_output=True, text=True,
                           timeout=60, check=True)
        path.write_text(r.stdout)
    return path


def bash_complete(world: World, *words: str) -> list[str]:
    """What bash offers for the last of `words`: the generated function, run by bash itself."""
    script = (f'source {_script(world, "bash")}; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); '
              '_push; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", script, "push", "push", *words], env=_shell_env(world),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [line for line in r.stdout.splitlines() if line]


@pytest.mark.slow  # bash runs push once per completed word
def test_bash_completion_for_real(world):
    assert bash_complete(world, "dep") == ["deploy"]
    assert bash_complete(world, "re") == ["releases", "release", "remove", "resign"]
    assert bash_complete(world, "status", "--pro") == ["--problems"]
    assert bash_complete(world, "deploy", "--a") == ["--all-servers"]
    assert bash_complete(world, "history", "web") == ["web-1", "web-2"]
    assert bash_complete(world, "deploy", "web-1", "h") == ["hello"]
    assert bash_complete(world, "status", "--app", "tw") == ["twin"]
    assert bash_complete(world, "deploy", "web-1", "twin", "") == ["latest", "previous", "abcdef121", "abcdef120"]
    assert bash_complete(world, "deploy", "--all-servers", "--note", "x y", "twin", "l") == ["latest"]
    assert bash_complete(world, "unit", "web-1", "hello.service", "st") == ["start", "stop"]
    assert bash_complete(world, "completion", "") == ["bash", "zsh"]
    # push rollout: its commands, their options and arguments (rollout ids, apps, releases).
    ended, active = rollouts_of(world)
    assert bash_complete(world, "rollout", "") == ["start", "status", "pause", "resume", "abort", "promote"]
    assert bash_complete(world, "rollout", "p") == ["pause", "promote"]
    assert bash_complete(world, "rollout", "start", "--wa") == ["--wait", "--wave-deadline", "--waves"]
    assert bash_complete(world, "rollout", "start", "--bake", "60", "tw") == ["twin"]
    assert bash_complete(world, "rollout", "start", "--servers", "b1", "twin", "") == ["latest", "previous",
                                                                                     "abcdef121", "abcdef120"]
    assert bash_complete(world, "rollout", "status", "") == [active, ended]
    assert bash_complete(world, "rollout", "abort", "--no-rollback", "") == [active]
    assert bash_complete(world, "rollout", "status", active, "") == []
    assert bash_complete(world, "keys", "") == ["generate", "show"]
    # Through the push server the line names (and only the names it answers).
    url = world.server.url
    assert bash_complete(world, "--push-url", url, "status", "b") == ["b1", "b2"]
    assert bash_complete(world, "--push-url", "http://127.0.0.1:9", "status", "") == []


@pytest.mark.skipif(shutil.which("zsh") is None, reason="scripts/test installs zsh")
@pytest.mark.slow
def test_zsh_completion(world):
    """The zsh function on the words zsh hands it (`words`, `CURRENT`), with compadd
    recording what is offered."""
    def offered(*words: str) -> list[str]:
        script = (f'autoload -U +X compinit && compinit -u -D; source {_script(world, "zsh")}; '
                  'compadd() { [[ $1 == -- ]] && shift; print -l -- "$@"; }; '
                  'words=(push "$@"); CURRENT=$(($# + 1)); _push')
        r = subprocess.run(["zsh", "-c", script, "push", *words], env=_shell_env(world), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        return [line for line in r.stdout.splitlines() if line]

    assert "deploy" in offered("dep") and "completion" in offered("")
    assert offered("deploy", "web-1", "twin", "") == ["latest", "previous", "abcdef121", "abcdef120"]
    active = rollouts_of(world)[1]
    assert offered("rollout", "pause", "") == [active]
    assert offered("deploy", "") == ["web-1", "web-2", "db-1", *FRESH, "b1", "b2", "c1", "c2"]


def test_rollout_commands_on_a_bad_day(cli):
    """A typo'd rollout id, and a control of an ended rollout: one clear line and the code."""
    ended, active = rollouts_of(cli.world)
    code, out, err = cli("rollout", "abort", ended)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"push: error: rollout {ended} has ended (aborted): nothing to abort"), err
    typo = active[:-1] + ("0" if active[-1] != "0" else "1")
    for argv in (("rollout", "status", typo), ("rollout", "pause", typo), ("rollout", "status", active[:-3])):
        code, out, err = cli(*argv)
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"did you mean {active}?" in err, err
    code, _, err = cli("rollout", "status", "nonsense")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "ids look like" in err, err
