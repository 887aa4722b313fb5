"""skiapush.conf: the original form, Push's additions, and clear errors."""

import pytest

from push import config
from push.errors import InvalidConfig, NotAllowed, NotFound

ORIGINAL = """
[servers]
  [servers.skia-push]
  appNames = ["logserver", "pulld", "push"]

  [servers.skia-monitoring]
  appNames = ["pulld"]
"""


def test_original_form_works_unchanged(tmp_path):
    path = tmp_path / "skiapush.conf"
    path.write_text(ORIGINAL)
    cfg = config.load(path)
    assert cfg.servers == {"skia-push": ("logserver", "pulld", "push"), "skia-monitoring": ("pulld",)}
    cfg.check_allowed("skia-push", "push")
    with pytest.raises(NotAllowed):
        cfg.check_allowed("skia-monitoring", "push")
    with pytest.raises(NotFound):
        cfg.check_allowed("nope", "push")


def test_search_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a.conf", tmp_path / "skiapush.conf"
    a.write_text(ORIGINAL)
    b.write_text("[servers.local]\nappNames = []\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUSH_CONFIG", raising=False)
    assert config.load().path.name == "skiapush.conf"
    monkeypatch.setenv("PUSH_CONFIG", str(a))
    assert config.load().path == a
    assert config.load(b).path == b
    with pytest.raises(InvalidConfig):
        config.load(tmp_path / "missing.conf")


def test_access_roles():
    cfg = config.parse('[access]\nview = ["*"]\ndeploy = ["@example.com"]\nadmin = ["root@example.com"]\n')
    assert cfg.may("anyone@else.org", "view")
    assert cfg.may("dev@example.com", "deploy") and not cfg.may("dev@example.com", "admin")
    assert cfg.may("root@example.com", "admin") and cfg.may("root@example.com", "deploy")
    assert not cfg.may("x@evil.com", "deploy")


@pytest.mark.parametrize("text, expect", [
    ("[servers.a\nappNames = []", "line 1"),
    ("[servers.a]\nappNames = \"x\"\n", ":2: servers.a: 'appNames' must be a list"),
    ("[servers.a]\nappNames = [\"ok\", \"../bad\"]\n", ":2: servers.a: '../bad'"),
    ("[servers.a]\nappnames = []\n", ":2: servers.a: unknown key 'appnames'"),
    ("[serverz.a]\n", "unknown table 'serverz'"),
    ("[access]\ndeploy = \"me\"\n", "access.deploy"),
    ("[access]\nsuper = []\n", "unknown role 'super'"),
    ("[[tokens]]\nname = \"ci\"\nsha256 = \"abc\"\nidentity = \"ci\"\n", "sha256 must be"),
])
def test_invalid_config_names_file_line_and_problem(tmp_path, text, expect):
    path = tmp_path / "skiapush.conf"
    path.write_text(text)
    with pytest.raises(InvalidConfig) as e:
        config.load(path)
    assert str(path) in str(e.value)
    assert expect in str(e.value)
