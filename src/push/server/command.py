"""`push serve`: run the push server (web pages, JSON API, agents' watch endpoint)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HELP = """\
Run the push server: the fleet view, release picker, rollback and history pages, the JSON
API under /api/v1 (OpenAPI at /openapi.json), the agents' watch endpoint, /healthz and
/metrics. State lives in the bucket, so several push servers can serve one bucket.

Sign-in: put an authenticating proxy (oauth2-proxy, Google IAP) in front and name it with
--trusted-proxy ADDR (or set PUSH_PROXY_SECRET to a secret it sends in X-Push-Proxy-Secret);
the user's email comes from --user-header. The CLI and scripts use API tokens
(Authorization: Bearer TOKEN) listed by sha256 in skiapush.conf. --no-auth makes every
visitor an admin and is refused unless binding to 127.0.0.1 or ::1.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the push server (web UI and JSON API)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    p.add_argument("--no-auth", action="store_true",
                   help="no sign-in, everyone is 'local' with admin rights (loopback only, for demos)")
    env_proxies = [p for p in os.environ.get("PUSH_TRUSTED_PROXIES", "").split(",") if p.strip()]
    p.add_argument("--trusted-proxy", action="append", default=None, metavar="ADDR",
                   help="address or network (CIDR) of the authenticating proxy whose user header is "
                        "believed; repeatable (default: $PUSH_TRUSTED_PROXIES, comma-separated)")
    p.add_argument("--user-header", default=os.environ.get("PUSH_USER_HEADER", "X-Forwarded-Email"),
                   help="header carrying the signed-in user's email (default: X-Forwarded-Email; "
                        "for IAP: X-Goog-Authenticated-User-Email)")
    p.add_argument("--poll-interval", type=float, default=2.0,
                   help="seconds between looks at the bucket's change journal for changes by others (default: 2)")
    p.add_argument("--relist-interval", type=float, default=60.0,
                   help="seconds between full listings of the server files, reports and unit requests, "
                        "for writers that write no change journal: the original tools, older agents "
                        "(default: 60)")
    p.add_argument("--watch-grace", type=float, default=20.0,
                   help="seconds a watching agent has, after its long-poll ends, to come back before it is "
                        "shown stale (default: 20; the poll's timeout is the agent's, 55 s by default)")
    p.add_argument("--deploy-key", metavar="FILE", default=os.environ.get("PUSH_DEPLOY_KEY") or None,
                   help="sign every server file written with this deploy key (NAME.key), and renew the statements "
                        "at half-life (default: $PUSH_DEPLOY_KEY; unset: nothing is signed). See docs/trust.md")
    p.add_argument("--trust-deploy-key", action="append", metavar="FILE", default=None,
                   help="also renew statements signed by this public key (NAME.pub): the old key during a "
                        "rotation; repeatable (default: $PUSH_TRUST_DEPLOY_KEYS, space-separated)")
    p.add_argument("--rollout-interval", type=float, default=1.0, metavar="S",
                   help="seconds between the rollout driver's rounds (default: 1; 0: this server drives no "
                        "rollout). See docs/rollouts.md")
    p.add_argument("--rollout-lease", type=float, default=15.0, metavar="S",
                   help="how long this server's lease of a rollout lasts unless renewed: after it dies, another "
                        "push server takes the rollout over within this (default: 15)")
    p.set_defaults(func=cmd_serve, env_proxies=env_proxies)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from push import config as config_mod
    from push.server.app import create_app
    from push.server.auth import AuthSettings, check_bind
    from push.store import open_store

    settings = AuthSettings(
        no_auth=args.no_auth,
        trusted_proxies=tuple(args.trusted_proxy if args.trusted_proxy is not None else args.env_proxies),
        proxy_secret=os.environ.get("PUSH_PROXY_SECRET") or None,
        user_header=args.user_header,
        # Push servers behind one load balancer share it, so a page from one posts to another.
        **({"csrf_secret": os.environ["PUSH_CSRF_SECRET"].encode()} if os.environ.get("PUSH_CSRF_SECRET") else {}),
    )
    check_bind(args.host, settings)
    settings.networks()  # a bad --trusted-proxy fails now, not at the first request
    config = config_mod.load(args.config, required=True)
    deploy_key, trusted = None, None
    if args.deploy_key:  # a bad key fails now, with one line, not at the first deploy
        from push.signing import Keyring, SigningKey

        deploy_key = SigningKey.load(Path(args.deploy_key))
        trusted_files = args.trust_deploy_key or os.environ.get("PUSH_TRUST_DEPLOY_KEYS", "").split()
        trusted = Keyring.load([Path(f) for f in trusted_files]) if trusted_files else None
    store = open_store(args.store)
    app = create_app(store, config, auth=settings, poll_interval=args.poll_interval, deploy_key=deploy_key,
                     trusted_deploy_keys=trusted, full_interval=args.relist_interval, watch_grace=args.watch_grace,
                     rollout_interval=args.rollout_interval, rollout_lease=args.rollout_lease)
    mode = "no auth (everyone is admin)" if settings.no_auth else (
        f"proxy header {settings.user_header} from {', '.join(settings.trusted_proxies) or 'nobody'}"
        + (" or with PUSH_PROXY_SECRET" if settings.proxy_secret else "") + "; API tokens")
    host = f"[{args.host}]" if ":" in args.host else args.host
    signing = f"signs with deploy key {deploy_key.key_id}" if deploy_key else "signs nothing (no --deploy-key)"
    print(f"push serve: http://{host}:{args.port}/ — store {store.url}, {len(config.servers)} servers, {mode}; "
          f"{signing}",
          file=sys.stderr, flush=True)
    if not settings.no_auth and not settings.trusted_proxies and not settings.proxy_secret:
        print("push serve: note: no --trusted-proxy and no PUSH_PROXY_SECRET: browsers cannot sign in, "
              "only API tokens work", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=False, log_level="warning",
                access_log=bool(args.verbose), timeout_graceful_shutdown=3)
    return 0
