"""Who is asking, and may they: API tokens, a trusted proxy's header, or no-auth on loopback.

Browsers are signed in by an authenticating proxy in front of the push server
(oauth2-proxy, Google IAP, ...) that passes the user's email in a header. That header is
believed only from a configured proxy address, or with the proxy's shared secret. The CLI
and automation send `Authorization: Bearer TOKEN`; skiapush.conf keeps only its sha256.
Roles (view < deploy < admin) come from skiapush.conf's [access] table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from starlette.requests import Request

from push.config import ROLES, Config
from push.errors import NotAllowed, Unauthenticated

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
PROXY_SECRET_HEADER = "X-Push-Proxy-Secret"
DEFAULT_USER_HEADER = "X-Forwarded-Email"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
LOCAL_IDENTITY = "local"
CSRF_NONCE_BYTES = 16   # 128 bits
CSRF_NONCE_CHARS = 22   # its unpadded base64


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: `via` is token, proxy or local (no-auth mode)."""

    name: str
    via: str
    token_name: str | None = None


@dataclass(frozen=True)
class AuthSettings:
    """How the server authenticates; set from `push serve` flags and environment."""

    no_auth: bool = False
    # Addresses or networks of the authenticating proxy, e.g. ("127.0.0.1", "10.0.0.0/8").
    trusted_proxies: tuple[str, ...] = ()
    # Shared secret the proxy sends in X-Push-Proxy-Secret (from PUSH_PROXY_SECRET).
    proxy_secret: str | None = field(default=None, repr=False)
    user_header: str = DEFAULT_USER_HEADER
    # The key CSRF tokens are signed with (PUSH_CSRF_SECRET; push servers behind one load
    # balancer share it). Random per process by default: a restart asks open pages to reload.
    csrf_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]


def check_bind(host: str, settings: AuthSettings) -> None:
    """--no-auth only on loopback: anyone who can reach the port would be an admin."""
    if settings.no_auth and host not in LOOPBACK_HOSTS:
        raise NotAllowed(f"--no-auth is allowed only when binding to 127.0.0.1 or ::1, not {host!r}: "
                         "put an authenticating proxy in front and use --trusted-proxy instead")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    """Identifies requests and checks roles and CSRF tokens."""

    def __init__(self, config: Callable[[], Config], settings: AuthSettings) -> None:
        self._config = config
        self.settings = settings
        self._networks = settings.networks()

    @property
    def config(self) -> Config:
        return self._config()

    def _from_trusted_proxy(self, request: Request) -> bool:
        secret = self.settings.proxy_secret
        if secret:
            sent = request.headers.get(PROXY_SECRET_HEADER, "")
            if sent and hmac.compare_digest(sent.encode(), secret.encode()):
                return True
        host = request.client.host if request.client else None
        if not host or not self._networks:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self._networks)

    def identify(self, request: Request) -> Identity | None:
        """The caller, or None if the request carries no identity at all."""
        cached: Identity | None = request.scope.get("push.identity")
        if cached is not None:
            return cached
        identity = self._identify(request)
        if identity is not None:
            request.scope["push.identity"] = identity
        return identity

    def _identify(self, request: Request) -> Identity | None:
        authorization = request.headers.get("authorization", "")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header must be 'Bearer TOKEN'")
            digest = token_sha256(token.strip())
            for t in self.config.tokens:
                if hmac.compare_digest(t.sha256, digest):
                    return Identity(t.identity, "token", t.name)
            raise Unauthenticated("unknown API token (skiapush.conf [[tokens]] has no token with that sha256)")
        if self.settings.no_auth:
            return Identity(LOCAL_IDENTITY, "local")
        user = request.headers.get(self.settings.user_header)
        if user and self._from_trusted_proxy(request):
            user = user.strip()
            # Google IAP sends "accounts.google.com:user@example.com".
            if user.startswith("accounts.google.com:"):
                user = user.split(":", 1)[1]
            if user:
                return Identity(user, "proxy")
        return None

    def may(self, identity: Identity | None, role: str) -> bool:
        if identity is None:
            return False
        if identity.via == "local":
            return True
        return self.config.may(identity.name, role)

    def roles(self, identity: Identity | None) -> dict[str, bool]:
        return {role: self.may(identity, role) for role in ROLES}

    def require(self, request: Request, role: str) -> Identity:
        """The caller if they hold `role`; Unauthenticated (401) or NotAllowed (403) if not."""
        identity = self.identify(request)
        if identity is None:
            raise Unauthenticated(
                "not signed in: browsers sign in through the authenticating proxy in front of this "
                f"server ({self.settings.user_header} header); the CLI and scripts send "
                "'Authorization: Bearer TOKEN' (PUSH_TOKEN)")
        if not self.may(identity, role):
            raise NotAllowed(f"{identity.name} may not {role}: skiapush.conf [access] {role} does not list them")
        return identity

    # -- CSRF ------------------------------------------------------------------------------
    # A token is `{nonce}.{mac}`: 128 random bits, and HMAC-SHA256 over the signed-in identity
    # and the nonce with the server's secret. Only this server can make one, and only for the
    # identity it was given to; nothing the attacker sets (a cookie) is trusted.

    def _csrf_mac(self, identity: Identity, nonce: str) -> str:
        mac = hmac.new(self.settings.csrf_secret, f"{identity.via}\0{identity.name}\0{nonce}".encode(),
                       hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def csrf_token(self, request: Request) -> str:
        """A CSRF token for the signed-in caller ("" without one): forms and htmx send it back."""
        token: str | None = request.scope.get("push.csrf")
        if token is None:
            try:
                identity = self.identify(request)
            except Unauthenticated:
                identity = None
            if identity is None:
                return ""
            nonce = base64.urlsafe_b64encode(secrets.token_bytes(CSRF_NONCE_BYTES)).decode().rstrip("=")
            token = f"{nonce}.{self._csrf_mac(identity, nonce)}"
            request.scope["push.csrf"] = token
        return token

    def _csrf_valid(self, identity: Identity, token: str) -> bool:
        nonce, dot, mac = token.partition(".")
        if not dot or len(nonce) < CSRF_NONCE_CHARS or len(token) > 200:
            return False
        return hmac.compare_digest(mac.encode(), self._csrf_mac(identity, nonce).encode())

    def check_csrf(self, request: Request, identity: Identity, submitted: str | None) -> None:
        """A browser write must come from this site (Origin, else Referer, naming this host;
        `Origin: null` or neither is refused) and carry a token this server signed for this
        identity (form field or X-CSRF-Token header). Token-authenticated calls carry no
        ambient credentials and are exempt, and so are non-browser clients in no-auth mode."""
        if identity.via == "token":
            return
        headers = request.headers
        if (identity.via == "local" and "origin" not in headers and "referer" not in headers
                and "sec-fetch-site" not in headers):
            # No-auth mode and not a browser (browsers send Origin and Sec-Fetch-Site on
            # every POST): a CLI or script, which a forged cross-site request cannot be.
            return
        host = headers.get("host", "")
        origin = headers.get("origin")
        if origin is not None:
            if origin == "null" or urlparse(origin).netloc != host:
                raise NotAllowed(f"cross-site request from {origin[:100]!r} refused")
        else:
            referer = headers.get("referer")
            if referer is None:
                raise NotAllowed("a browser write must carry Origin or Referer: refused")
            if urlparse(referer).netloc != host:
                raise NotAllowed("cross-site request (Referer of another site) refused")
        submitted = submitted or headers.get(CSRF_HEADER, "")
        if not submitted or not self._csrf_valid(identity, submitted):
            raise NotAllowed("missing or wrong CSRF token: reload the page and try again")
