"""Exit codes of Push's commands (`push` and `pulld`): one table, looked up by error class.

The command-line edge; docs/push-server.md lists the codes. The most specific class wins,
so a new error takes the code of its nearest listed ancestor.
"""

from __future__ import annotations

from push.errors import (
    AccessDenied,
    Conflict,
    InvalidConfig,
    InvalidSigningKey,
    InvalidStoreURL,
    PushError,
    StoreError,
    Untrusted,
)

USAGE = 2  # also argparse's own code for a bad command line
PROBLEMS = 7  # `push status --problems` found some: not an error of the command itself
WAIT_FAILED = 8  # --wait: the change was made, and then failed on a server (push.follow)
WAIT_STUCK = 9  # --wait: the change was made, and is not done in time on a server
ROLLOUT_NOT_COMPLETED = 10  # `push rollout ... --wait`: it ended failed, rolled back or aborted
INTERRUPTED = 130

EXIT_CODES: dict[type[PushError], int] = {
    PushError: 1,            # not found, invalid input, a failed build, ...
    InvalidConfig: USAGE,
    InvalidStoreURL: USAGE,
    Conflict: 3,
    StoreError: 4,           # the store (or the push server) cannot be used
    AccessDenied: 5,
    InvalidSigningKey: USAGE,
    Untrusted: 6,        # a signature or statement that does not hold (docs/trust.md)
}


def exit_code(error: PushError) -> int:
    """The exit code for `error`: that of the most specific class in EXIT_CODES."""
    for cls in type(error).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return 1


# What each code means, for `push --help` and docs/push-server.md.
MEANINGS: tuple[tuple[int, str], ...] = (
    (0, "done"),
    (1, "failed: not found (no such server, app, release or history), invalid input, a failed build"),
    (USAGE, "usage: a bad command line, skiapush.conf, --store URL or signing key"),
    (3, "conflict: changed meanwhile (by someone else); nothing was written"),
    (4, "the store or the push server cannot be used (unreachable, missing, not Push)"),
    (5, "access denied: not signed in, not allowed by a role or skiapush.conf"),
    (6, "untrusted: a signature or statement that does not hold"),
    (PROBLEMS, "push status --problems found problems"),
    (WAIT_FAILED, "--wait: changed, then failed on a server (the agent failed, refused or reverted it, "
                  "or it is unhealthy)"),
    (WAIT_STUCK, "--wait: changed, but not done in time on a server (past its deadline, its agent stale, "
                 "or --timeout)"),
    (ROLLOUT_NOT_COMPLETED, "push rollout ... --wait: the rollout failed, was rolled back or aborted"),
    (INTERRUPTED, "interrupted"),
)
