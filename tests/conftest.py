"""Shared fixtures: a sealed environment, the store emulators, and a fresh store of each kind.

Nothing here reaches beyond 127.0.0.1: cloud metadata servers are pointed at a dead local
port, credentials files at nothing, and the emulators listen on loopback only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import realserver
from emulators import Emulator, start_fake_gcs, start_moto
from fleetdata import make_config, make_release
from push import fleet
from push.release import ReleaseInfo
from push.store import Store, open_store
from push.store.local import LocalStore

DEAD_LOCAL = "127.0.0.1:9"


@pytest.fixture(scope="session", autouse=True)
def sealed_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep every client library away from real clouds and from the developer's credentials."""
    home = tmp_path_factory.mktemp("cloud-config")
    with pytest.MonkeyPatch.context() as mp:
        # google-auth probes the GCE metadata server when it finds no credentials.
        mp.setenv("GCE_METADATA_HOST", DEAD_LOCAL)
        mp.setenv("GCE_METADATA_IP", DEAD_LOCAL)
        mp.setenv("NO_GCE_CHECK", "true")
        mp.setenv("CLOUDSDK_CONFIG", str(home / "gcloud"))
        mp.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        mp.delenv("STORAGE_EMULATOR_HOST", raising=False)
        # botocore probes the EC2 instance metadata service likewise.
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", str(home / "aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws-credentials"))
        for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(var, raising=False)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


# -- emulators, one of each per session ----------------------------------------------------


@pytest.fixture(scope="session")
def fake_gcs(sealed_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def moto_s3(sealed_environment: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_moto(tmp_path_factory.mktemp("moto"))
    yield emulator
    emulator.stop()


def unique_bucket_name() -> str:
    return f"push-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def gcs_bucket(fake_gcs: Emulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on fake-gcs-server; STORAGE_EMULATOR_HOST points at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    name = unique_bucket_name()
    client = storage.Client(project="push-local", credentials=AnonymousCredentials())
    client.create_bucket(name)
    client.close()
    return name


@pytest.fixture(scope="session")
def moto_client(moto_s3: Emulator) -> Iterator[Any]:
    """One boto3 client for making buckets: a new client costs a tenth of a second or more."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    yield client
    client.close()


@pytest.fixture
def s3_bucket(moto_s3: Emulator, moto_client: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on moto's S3; AWS_ENDPOINT_URL and test credentials point at it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = unique_bucket_name()
    moto_client.create_bucket(Bucket=name)
    return name


# -- one fresh store of each kind ----------------------------------------------------------

STORE_KINDS = [
    pytest.param("local", id="local"),
    pytest.param("gcs", id="gcs", marks=pytest.mark.gcs),
    # moto is the slowest of the three: S3 runs with the slow tests, local and GCS in the quick loop.
    pytest.param("s3", id="s3", marks=[pytest.mark.s3, pytest.mark.slow]),
]


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty store: file:///..., gs://BUCKET or s3://BUCKET."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}"
    if request.param == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}"
    return f"s3://{request.getfixturevalue('s3_bucket')}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh Store of each kind in turn: tests using it run on local, gcs and s3."""
    s = open_store(store_url)
    yield s
    s.close()


# -- real servers (the systemd tier) -------------------------------------------------------


@pytest.fixture(scope="session")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached Debian 12 root the real servers boot on, built first if this machine has none."""
    try:
        return realserver.debian_root(tmp_path_factory.mktemp("debootstrap") / "debootstrap.log")
    except realserver.CannotBoot as e:
        realserver.cannot_boot(str(e))


@pytest.fixture(scope="module")
def boot_server(debian_root: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Callable[[str], realserver.RealServer]]:
    """`boot_server(NAME)`: a booted real server, shared by the module's tests; every server
    booted is stopped by its pid when the module ends, whatever happened."""
    started: list[realserver.RealServer] = []

    def boot(name: str) -> realserver.RealServer:
        server = realserver.RealServer(name, debian_root, tmp_path_factory.mktemp(f"server-{name}"))
        started.append(server)
        try:
            server.boot()
        except realserver.CannotBoot as e:
            realserver.cannot_boot(str(e))
        return server

    yield boot
    errors = []
    for server in started:
        try:
            server.close()
        except Exception as e:  # stop the others anyway
            errors.append(f"{server.name}: {e}")
    assert not errors, errors


# The fleet tests' bucket, context and releases (test_fleet, test_fleetview, test_server_api,
# test_bad_objects, test_changes): a local store in the test's directory, a context on it
# with skiapush.conf of fleetdata, four releases of hello.
@pytest.fixture
def bucket(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "bucket")


@pytest.fixture
def ctx(bucket: LocalStore, tmp_path: Path) -> fleet.Context:
    return fleet.Context.open(bucket, make_config(tmp_path), via="test")


@pytest.fixture
def rels(bucket: LocalStore) -> list[ReleaseInfo]:
    return [make_release(bucket, "hello", n) for n in range(1, 5)]


# -- order: the long modules first ---------------------------------------------------------

# Modules built around one long setup (booted real servers, Push's own packages built with
# pip and lintian, a fleet of agents, a browser), longest first. Under pytest-xdist
# (scripts/test runs `--dist loadfile --no-loadscope-reorder`) each module runs whole on one
# worker in this order, so the longest start at once while the other worker takes the short
# ones, rather than ending the run on one busy worker. A serial run keeps the files' order.
LONG_MODULES = ("test_realserver.py", "test_builder_push_packages.py", "test_agent_main.py", "test_e2e.py",
                "test_demo.py", "test_server_browser.py", "test_fuzz.py", "test_builder_lintian.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "numprocesses", None):
        return
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_MODULES)))  # stable: each module's order kept
