"""Starting and controlling rollouts: what `push rollout` (straight to the bucket) and the
push server's /api/v1/rollouts call. `plan()` says what a start would do (the web page shows
it before the confirm); `start()` writes the rollout and claims the app's active pointer;
pause, resume, abort and promote write requests the driver carries out at its next step.
"""

from __future__ import annotations

import fnmatch

from pydantic import Field

from push import lookup, serverfile, timestamps
from push.errors import InvalidRequest, NotFound, PushError
from push.fleet import Context, require_app
from push.layout import rollout_key
from push.model import Model
from push.release import short
from push.rollout import model
from push.rollout.model import (
    DEFAULT_BAKE,
    DEFAULT_WAVE_DEADLINE,
    DEFAULT_WAVES,
    Plan,
    Rollout,
    ServerStep,
    Wave,
    parse_waves,
)


class RolloutRequest(Model, frozen=True):
    """What `push rollout start` and POST /api/v1/rollouts send."""

    noun = "rollout request"

    app: str
    release: str = Field(description="any release name push deploy takes but previous: full, hash prefix, latest")
    servers: list[str] | None = Field(None, description="server names and globs (default: every server allowed "
                                                        "that runs the app now)")
    all: bool = Field(False, description="every server skiapush.conf allows the app on")
    waves: str = DEFAULT_WAVES
    bake: float = Field(DEFAULT_BAKE, ge=0, le=86400)
    wave_deadline: float = Field(DEFAULT_WAVE_DEADLINE, gt=0, le=7 * 86400)
    max_unhealthy: int = Field(0, ge=0)
    rollback: bool = True
    note: str = ""


class RolloutPlan(Model, frozen=True):
    """What a start would do now: the release, the servers in wave order with what each runs."""

    app: str
    release: str
    plan: Plan
    before: dict[str, str | None] = Field(description="server -> the release it runs now (null: none)")


def _select(ctx: Context, req: RolloutRequest) -> list[str]:
    config = ctx.config
    allowed = [s for s, apps in config.servers.items() if req.app in apps]
    if req.servers:
        if req.all:
            raise InvalidRequest("give --servers or --all, not both")
        chosen: list[str] = []
        for pattern in req.servers:
            if any(c in pattern for c in "*?["):
                matched = [s for s in allowed if fnmatch.fnmatchcase(s, pattern)]
                if not matched:
                    raise NotFound(f"no server that {config.source} allows {req.app} on matches {pattern!r}")
            else:
                config.check_allowed(pattern, req.app)
                matched = [pattern]
            chosen += [s for s in matched if s not in chosen]
        return chosen
    if req.all:
        return allowed
    running = []
    for s in allowed:
        sf = serverfile.read(ctx.store, s)
        if sf is not None and sf.release_of(req.app) is not None:
            running.append(s)
    if not running:
        raise NotFound(f"no server runs {req.app} now: name them with --servers, or use --all "
                       f"(every server {config.source} allows it on)")
    return running


def plan(ctx: Context, req: RolloutRequest) -> RolloutPlan:
    """What starting `req` would do now (nothing is written)."""
    require_app(ctx, req.app)
    if req.release == lookup.PREVIOUS:
        raise InvalidRequest("a rollout needs one release for every server: previous differs per server")
    name = lookup.release(ctx.catalog, req.app, req.release).name
    servers = _select(ctx, req)
    waves = parse_waves(req.waves, len(servers))
    before: dict[str, str | None] = {}
    for s in servers:
        sf = serverfile.read(ctx.store, s)
        release = sf.release_of(req.app) if sf is not None else None
        before[s] = release.name if release is not None else None
    return RolloutPlan(app=req.app, release=name, before=before,
                       plan=Plan(servers=servers, waves=waves, waves_spec=req.waves, bake=req.bake,
                                 wave_deadline=req.wave_deadline, max_unhealthy=req.max_unhealthy,
                                 rollback=req.rollback))


def start(ctx: Context, who: str, req: RolloutRequest) -> Rollout:
    """Write a new rollout of `req` and make it the app's active one (RolloutActive if the
    app has one already). A driver (any push server, or `--wait`) then drives it."""
    p = plan(ctx, req)
    now = timestamps.now_text()
    rid = timestamps.new_id()
    wave_of = {}
    for i, size in reversed(list(enumerate(p.plan.waves))):
        for s in p.plan.servers[:size]:
            wave_of[s] = i
    r = Rollout(id=rid, app=req.app, release=p.release, who=who, via=ctx.via, created=now, plan=p.plan,
                waves=[Wave(size=size) for size in p.plan.waves],
                servers={s: ServerStep(server=s, wave=wave_of[s], before=p.before[s]) for s in p.plan.servers})
    r.note(now, f"started by {who}: {short(p.release)} to {len(p.plan.servers)} server(s) in waves "
                f"{','.join(map(str, p.plan.waves))}" + (f": {req.note}" if req.note else ""))
    model.write(ctx.store, r)
    try:
        model.claim_active(ctx.store, req.app, rid)
    except PushError:
        ctx.store.delete(rollout_key(rid), if_generation_match=r.generation)  # ours, just written
        raise
    ctx.notifier.emit("rollout.started", {"who": who, "rollout": rid, "app": r.app, "release": r.release,
                                          "wave": None, "servers": r.plan.servers, "note": req.note})
    return r


def get(ctx: Context, rollout_id: str) -> Rollout:
    return model.read(ctx.store, rollout_id)


def control(ctx: Context, who: str, rollout_id: str, action: str, *, rollback: bool = True) -> Rollout:
    """pause, resume, abort (rollback=False: stop only) or promote `rollout_id`: the request
    is written now and carried out by the driver at its next step. InvalidRequest for an
    ended rollout or an action that does not apply."""
    if action not in ("pause", "resume", "abort", "promote"):
        raise InvalidRequest(f"unknown rollout action {action!r}: pause, resume, abort or promote")

    def change(r: Rollout) -> None:
        if not r.active:
            raise InvalidRequest(f"rollout {r.id} has ended ({r.state}): nothing to {action}")
        now = timestamps.now_text()
        if action == "pause":
            r.pause = True
        elif action == "resume":
            r.pause = False
        elif action == "promote":
            if r.state == "rolling_back":
                raise InvalidRequest(f"rollout {r.id} is rolling back: nothing to promote")
            r.promote = True
        else:
            r.abort = "rollback" if rollback else "stop"
            r.reason = f"aborted by {who}" + ("" if rollback else " (no rollback)")
        r.note(now, f"{action}{'' if rollback or action != 'abort' else ' --no-rollback'} asked by {who}")

    return model.update(ctx.store, rollout_id, change)


def listing(ctx: Context, limit: int = 50, recent: model.RecentRollouts | None = None) -> list[Rollout]:
    """Recent rollouts, newest first (the active ones among them); through `recent`, reading
    only those changed since its last call (the push server's)."""
    return recent(limit) if recent is not None else list(model.recent(ctx.store, limit))
