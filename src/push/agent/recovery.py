"""Crash recovery: finish or undo what a killed agent left, before its first step.

Downloads left half-way are deleted (they always start over); dpkg's own interrupted work
is finished with `dpkg --configure -a`; an install the record marks pending is taken as
done when dpkg shows it fully installed, else forgotten (the next plan installs it again,
or removes it if no longer wanted). Apps whose units were not (re)started keep
`units_pending` in the record, and the next plan restarts them. See docs/pulld.md,
"Crash safety".
"""

from __future__ import annotations

import logging
from pathlib import Path

from push.agent import download
from push.agent.dpkg import Dpkg
from push.agent.errors import DpkgError
from push.agent.state import AgentState

log = logging.getLogger(__name__)


def recover(dpkg: Dpkg, record: AgentState, *, state_dir: Path, downloads: Path) -> None:
    """Make the state directory, dpkg's database and the record consistent again.

    Raises OSError when the state directory cannot be used, a PushError when dpkg-query
    cannot be run; both leave recovery to be tried again.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    gone = download.clean(downloads)
    if gone:
        log.info("deleted interrupted downloads", extra={"event": "recover.downloads", "count": gone})
    dpkg.prepare()
    _repair_dpkg(dpkg)
    installed = dpkg.installed()
    changed = False
    for rec in record.apps.values():
        if rec.pending:
            p = rec.pending
            row = installed.get(p.get("package", ""))
            if row is not None and row.ok and row.version == p.get("version"):
                # dpkg finished the install the killed agent had started.
                rec.installed(p["release"], p["package"], p["version"])
                rec.units_pending = True
            rec.pending = None
            changed = True
    if changed:
        record.save()


def _repair_dpkg(dpkg: Dpkg) -> None:
    audit = dpkg.audit()
    if not audit:
        return
    log.warning("dpkg database needs repair", extra={"event": "recover.dpkg", "audit": audit})
    try:
        dpkg.configure_pending()
    except DpkgError as e:
        # Packages that cannot be configured are reinstalled (if wanted) or removed (if
        # not) by the next plan: they do not count as installed meanwhile.
        log.warning("dpkg --configure -a failed", extra={"event": "recover.dpkg-failed", "error": str(e)})
