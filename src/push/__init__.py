"""Push: deploy Debian packages to a fleet of servers, and roll them back.

The public surface is small: the data model (Release, Catalog, ServerFile, Config),
the store opener, and the named errors. Front ends (cli, build, agent, server) use these.
"""

from push.errors import (
    Conflict,
    InvalidConfig,
    InvalidRelease,
    InvalidServerFile,
    NotFound,
    PushError,
    StoreUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "InvalidConfig",
    "InvalidRelease",
    "InvalidServerFile",
    "NotFound",
    "PushError",
    "StoreUnavailable",
    "__version__",
]
