"""Rollouts: one release of one app deployed to a set of servers in waves, each wave gated on
the agents' health, with automatic rollback (docs/rollouts.md).

    model.py    the durable object (rollouts/{id}.json), its waves, the active pointer per app
    step.py     the driver's decisions: a pure function of the rollout, what the bucket shows, the time
    lease.py    who drives a rollout (leases/rollouts/{id}.json, compare-and-swap, expiry)
    driver.py   the thin loop around step(): observe, decide, write through push.fleet, save
    control.py  start, pause, resume, abort, promote: what the CLI and the API call

Arrows: control and driver use push.fleet (every server file is written by its one
operation); push.fleet uses only model (to refuse a plain deploy during a rollout).
"""
