"""The bucket's layout: every key and prefix Push reads or writes, built and parsed here only.

    debs/{app}/{app}:{user}@{host}:{time}:{hash}.deb   a release (push.release names it)
    server/{server}.json                               what a server should run
    status/{server}.json                               what its agent last reported
    requests/{server}/{id}.json                        unit requests for its agent
    history/server/{server}/{stem}~{app}.json          a change, listed per server (and app)
    history/app/{app}/{stem}~{server}.json             ... per app
    history/all/{stem}~{server}~{app}.json             ... for the whole fleet
    catalog/log/{20-digit ns}/{release name}           the catalogue's journal of uploads
    catalog/index/v{version}.jsonl.gz                  the catalogue index (push.catalogindex)
    changes/{20-digit ns}-{rand}~{kind}~{server}       the fleet's change journal (push.changes)
    signatures/server/{server}.json                    the signed statement of a server file
    rollouts/{id}.json                                 a rollout: plan, waves, each server's state (push.rollout)
    rollouts/active/{app}.json                         the app's one active rollout (create-only: one per app)
    leases/rollouts/{id}.json                          who drives a rollout, until when (push.rollout.lease)

`debs/` and `server/` are the original Push's and keep its meaning; the others are Push's
own. To add a prefix (rollouts/, leases/, signatures/ ...): add it to PREFIXES with what it
holds, then its key builders and parsers in a section below. No other module spells a
prefix (tests/test_layout.py looks).
"""

from __future__ import annotations

from push.names import check_app, check_server
from push.timestamps import id_parts

DEBS = "debs/"
SERVER = "server/"
STATUS = "status/"
REQUESTS = "requests/"
HISTORY = "history/"
CATALOG_LOG = "catalog/log/"
CATALOG_INDEX = "catalog/index/"
SIGNATURES = "signatures/"
CHANGES = "changes/"
ROLLOUTS = "rollouts/"
LEASES = "leases/"

PREFIXES = {
    DEBS: "releases: the .deb, with the release metadata on the object",
    SERVER: "server files: the releases each server should run",
    STATUS: "agent reports: what each server runs",
    REQUESTS: "unit requests, one object each, answered by the agent",
    HISTORY: "history records, each under three keys",
    CATALOG_LOG: "the catalogue's journal: one empty object per upload",
    CATALOG_INDEX: "the catalogue index: every release's metadata in one compressed object, one per format version",
    SIGNATURES: "signed statements (push.signing), e.g. of each server file",
    CHANGES: "the fleet's change journal: one empty object per write of a server's objects",
    ROLLOUTS: "rollouts, one object each, and each app's active rollout (rollouts/active/)",
    LEASES: "leases: which process drives a rollout, until when",
}

_JSON = ".json"


def _name_under(prefix: str, key: str, suffix: str = _JSON) -> str | None:
    """`x` for a key `{prefix}x{suffix}` with no further '/', else None."""
    if not key.startswith(prefix) or not key.endswith(suffix):
        return None
    name = key[len(prefix):len(key) - len(suffix)]
    return name if name and "/" not in name else None


# -- debs/: releases ---------------------------------------------------------------------


def release_key(release_name: str) -> str:
    return DEBS + release_name


def release_name_of(key: str) -> str | None:
    """The release name of a key under debs/ (None for any other key)."""
    return key[len(DEBS):] if key.startswith(DEBS) and key.endswith(".deb") else None


# -- server/ and status/: one object per server ------------------------------------------


def server_file_key(server: str) -> str:
    return f"{SERVER}{check_server(server)}{_JSON}"


def server_of_file_key(key: str) -> str | None:
    """The server whose server file `key` is (None if it is not one)."""
    return _name_under(SERVER, key)


def status_key(server: str) -> str:
    return f"{STATUS}{check_server(server)}{_JSON}"


def server_of_status_key(key: str) -> str | None:
    """The server whose agent report `key` is (None if it is not one)."""
    return _name_under(STATUS, key)


# Where the statements of server files are kept, one per server (listed by re-signers).
SERVER_SIGNATURES = f"{SIGNATURES}server/"


def server_signature_key(server: str) -> str:
    """Where the signed statement of server/{server}.json is kept (docs/trust.md)."""
    return f"{SERVER_SIGNATURES}{check_server(server)}{_JSON}"


def server_of_signature_key(key: str) -> str | None:
    """The server whose server-file statement `key` is (None if it is not one)."""
    return _name_under(SERVER_SIGNATURES, key)


# -- requests/: unit requests ------------------------------------------------------------


def requests_prefix(server: str) -> str:
    return f"{REQUESTS}{check_server(server)}/"


def request_key(server: str, request_id: str) -> str:
    return f"{requests_prefix(server)}{request_id}{_JSON}"


def request_of_key(key: str) -> tuple[str, str] | None:
    """(server, request id) of a key under requests/ (None if it is not a request)."""
    server, _, rest = key[len(REQUESTS):].partition("/") if key.startswith(REQUESTS) else ("", "", "")
    if not server or not rest.endswith(_JSON) or "/" in rest:
        return None
    return server, rest[: -len(_JSON)]


# -- history/: three keys per record, newest first in key order -----------------------------

# Stems count down from this, so stores that list in key order list newest first.
_INV = 10**20 - 1


def _stem(record_id: str) -> str:
    ns, rand = id_parts(record_id)
    return f"{_INV - ns:020d}-{rand}"


def history_keys(record_id: str, server: str, app: str) -> list[str]:
    """A record's three keys: per server, per app, whole fleet (written in that order).
    The names after '~' let a listing be filtered without reading records ('~' is in no
    server or app name)."""
    stem = _stem(record_id)
    return [
        f"{HISTORY}server/{server}/{stem}~{app}{_JSON}",
        f"{HISTORY}app/{app}/{stem}~{server}{_JSON}",
        f"{HISTORY}all/{stem}~{server}~{app}{_JSON}",
    ]


def history_listing(server: str | None, app: str | None) -> tuple[str, str | None]:
    """(prefix to list, suffix the keys must end with) of the cheapest index for a query."""
    if server is not None:
        return f"{HISTORY}server/{server}/", (f"~{app}{_JSON}" if app else None)
    if app is not None:
        return f"{HISTORY}app/{app}/", None
    return f"{HISTORY}all/", None


def history_start_after(prefix: str, before_id: str) -> str:
    """Where a listing of `prefix` starts to give only records older than `before_id`."""
    return f"{prefix}{_stem(before_id)}~~"


def history_id_of_key(key: str) -> str | None:
    """The id of the record a history key holds (None if the key is not one)."""
    stem = key.rsplit("/", 1)[-1].split("~", 1)[0]
    inv, _, rand = stem.partition("-")
    # isascii: str.isdigit() also accepts "²", which int() does not.
    if len(inv) != 20 or not (inv.isascii() and inv.isdigit()) or not rand:
        return None
    return f"{_INV - int(inv):020d}-{rand}"


def is_history_record(prefix: str, key: str) -> bool:
    """Whether `key`, listed under `prefix`, is a record (not something below it)."""
    name = key[len(prefix):]
    return "/" not in name and name.endswith(_JSON)


# -- catalog/log/: the journal of uploads ------------------------------------------------


def journal_key(release_name: str, now_ns: int) -> str:
    return f"{CATALOG_LOG}{now_ns:020d}/{release_name}"


def journal_start_after(ns: int) -> str:
    """Where a listing of the journal starts to give the entries after time `ns`."""
    return f"{CATALOG_LOG}{max(0, ns):020d}"


def journal_entry(key: str) -> tuple[int, str] | None:
    """(upload time in ns, release name) of a journal key (None if it is not one)."""
    stamp, _, name = key[len(CATALOG_LOG):].partition("/")
    if not key.startswith(CATALOG_LOG) or not stamp.isdigit() or not name:
        return None
    return int(stamp), name


# -- catalog/index/: the catalogue index -------------------------------------------------


def catalog_index_key(version: int) -> str:
    """The index of format `version`. One object per version: servers of two versions that
    share a bucket each keep their own, instead of overwriting each other's."""
    return f"{CATALOG_INDEX}v{version}.jsonl.gz"


# -- changes/: the fleet's change journal ------------------------------------------------


def change_key(entry_id: str, kind: str, server: str) -> str:
    """A journal entry: `entry_id` is a timestamps.new_id (time first, so keys list in time order)."""
    return f"{CHANGES}{entry_id}~{kind}~{check_server(server)}"


def changes_start_after(ns: int) -> str:
    """Where a listing of the change journal starts to give the entries after time `ns`."""
    return f"{CHANGES}{max(0, ns):020d}"


def change_entry(key: str) -> tuple[int, str, str] | None:
    """(time in ns, kind, server) of a change journal key (None if it is not one)."""
    if not key.startswith(CHANGES):
        return None
    parts = key[len(CHANGES):].split("~")
    if len(parts) != 3 or "/" in key[len(CHANGES):]:
        return None
    stamp, _, rand = parts[0].partition("-")
    if len(stamp) != 20 or not stamp.isdigit() or not rand or not parts[1] or not parts[2]:
        return None
    return int(stamp), parts[1], parts[2]


# -- rollouts/ and leases/: staged deploys (push.rollout) ---------------------------------

ACTIVE_ROLLOUTS = f"{ROLLOUTS}active/"
ROLLOUT_LEASES = f"{LEASES}rollouts/"


def rollout_key(rollout_id: str) -> str:
    """A rollout (its id is a timestamps.new_id, so keys list oldest first)."""
    id_parts(rollout_id)  # ValueError for anything that is not an id
    return f"{ROLLOUTS}{rollout_id}{_JSON}"


def rollout_of_key(key: str) -> str | None:
    """The id of the rollout at `key` (None for any other key, e.g. under rollouts/active/)."""
    rid = _name_under(ROLLOUTS, key)
    if rid is None:
        return None
    try:
        id_parts(rid)
    except ValueError:
        return None
    return rid


def active_rollout_key(app: str) -> str:
    """The pointer to `app`'s active rollout: created only if absent, so an app has one."""
    return f"{ACTIVE_ROLLOUTS}{check_app(app)}{_JSON}"


def app_of_active_key(key: str) -> str | None:
    return _name_under(ACTIVE_ROLLOUTS, key)


def rollout_lease_key(rollout_id: str) -> str:
    id_parts(rollout_id)
    return f"{ROLLOUT_LEASES}{rollout_id}{_JSON}"
