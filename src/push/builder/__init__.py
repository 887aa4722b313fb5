"""The release builder (`push release`): an app's files in, a checked Debian package out, uploaded.

    from push.builder import BuildRequest, build, upload
    built = build(BuildRequest(app="hello", root=Path("stage"), note="first"), workdir, store)
    upload(store, built)

Modules: staging (the tree a package is built from), manifest (push.toml), control (DEBIAN/),
debarchive (the .deb, written in one pass by tar and zstd), dpkgdeb, git, python (pip) and
checks (systemd-analyze, lintian), each running its own tools; background (overlapping them);
builder puts them in order; command is the CLI front.
"""

from push.builder.builder import BuildRequest, BuiltRelease, build, upload
from push.builder.errors import BuildError

__all__ = ["BuildError", "BuildRequest", "BuiltRelease", "build", "upload"]
