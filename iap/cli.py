"""The ``iap`` command (SPEC §4). Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from iap import __version__, config
from iap.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iap", description="Identity-aware proxy for the mesh edge."
    )
    parser.add_argument("--version", action="version", version=f"iap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    run.add_argument("--workers", type=_positive, default=1, help="processes sharing the port")

    dev = commands.add_parser("dev", help="run iap with a demo upstream on 127.0.0.1")
    dev.add_argument("--port", type=int, default=8080, help="public port (default 8080)")

    check = commands.add_parser("check", help="validate a config and print every problem")
    check.add_argument("-c", "--config", required=True, help="path to iap.yaml")

    certs = commands.add_parser("certs", help="certificate tooling")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    certs_dev = certs_commands.add_parser(
        "dev", help="write a development CA and the edge and ingress certificates"
    )
    certs_dev.add_argument("--out", required=True, help="directory to write the files into")
    certs_dev.add_argument(
        "--server-name",
        default="api.mesh.internal",
        help="the ingress gateway's name (upstream_tls.server_name; default api.mesh.internal)",
    )
    certs_dev.add_argument(
        "--days", type=_positive, default=30, help="certificate lifetime in days (default 30)"
    )

    keys = commands.add_parser("keys", help="signing keys for the tokens iap mints")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    keys_new = keys_commands.add_parser("new", help="add an ES256 signing key; print its kid")
    keys_new.add_argument(
        "--dir", required=True, help="the keys directory (tokens.keys_dir); created if missing"
    )

    mesh = commands.add_parser("mesh", help="Istio resources derived from the routes")
    mesh_commands = mesh.add_subparsers(dest="mesh_command", required=True, metavar="COMMAND")
    mesh_render = mesh_commands.add_parser(
        "render",
        help="print the RequestAuthentication and AuthorizationPolicies that make the mesh"
        " trust and enforce iap's tokens",
    )
    mesh_render.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    mesh_render.add_argument(
        "--namespace", default="istio-system", help="the gateway's namespace (istio-system)"
    )
    mesh_render.add_argument(
        "--selector",
        action="append",
        type=_label,
        metavar="KEY=VALUE",
        help="a label of the gateway's pods; repeatable (default istio=ingressgateway)",
    )
    mesh_render.add_argument(
        "--jwks-uri",
        help="where istiod fetches iap's keys"
        " (default http://iap-admin.iap.svc.cluster.local:<admin port>/jwks.json)",
    )
    policy = commands.add_parser("policy", help="route policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    explain = policy_commands.add_parser(
        "explain", help="print the decision for one request and the rule; exit 0 allow, 1 deny"
    )
    explain.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    explain.add_argument("--method", default="GET", help="the request method (GET)")
    explain.add_argument("--url", required=True, help="the request URL, e.g. https://h/p?q")
    caller = explain.add_mutually_exclusive_group()
    caller.add_argument("--claims", metavar="FILE", help="the caller's ID-token claims (JSON)")
    caller.add_argument("--user", metavar="NAME", help="a dev IdP demo user (alice, bob, ...)")
    explain.add_argument("--auth", choices=["session", "bearer"], default="session")
    explain.add_argument("--client", default="", help="the client address, for `source` rules")
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            from iap.web.server import Edge

            Edge(config.load(args.config))  # also loads TLS material, binds nothing
            print(f"{args.config}: ok")
            return EXIT_OK
        if args.command == "run":
            return _run(config.load(args.config), args.config, workers=args.workers)
        if args.command == "dev":
            from iap.dev.run import run_dev

            return _event_loop(run_dev(args.port))
        if args.command == "certs":
            return _certs_dev(args.out, server_name=args.server_name, days=args.days)
        if args.command == "keys":
            return _keys_new(args.dir)
        if args.command == "mesh":
            return _mesh_render(args.config, args.namespace, args.selector, args.jwks_uri)
        if args.command == "policy":
            return _policy_explain(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _certs_dev(out: str, *, server_name: str, days: int) -> int:
    from iap.certs import issue_dev_material

    try:
        material = issue_dev_material(Path(out), server_name=server_name, days=days)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = getattr(exc, "filename", None) or out
        print(f"iap certs dev: cannot write the material to {where}: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    for path in material.files():
        print(path)
    print(
        "private keys (*.key, ingress-gateway-secret.yaml) are mode 0600;"
        " this material is for development only, never for production",
        file=sys.stderr,
    )
    return EXIT_OK


def _keys_new(directory: str) -> int:
    from iap.adapters.signing_keys import write_new_key

    try:
        kid, path = write_new_key(Path(directory))
    except OSError as exc:
        where = exc.filename or directory
        print(
            f"iap keys new: cannot write a key to {where}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(kid)
    print(
        f"wrote {path} (mode 0600); it is published at once and signs after"
        " tokens.publish_before_use",
        file=sys.stderr,
    )
    return EXIT_OK


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. app=istio-ingressgateway")
    return key, value


def _mesh_render(
    path: str, namespace: str, labels: list[tuple[str, str]] | None, jwks_uri: str | None
) -> int:
    """Parse the config only (no key files, no ports): YAML on stdout, warnings on stderr."""
    import yaml

    from iap.mesh_render import DEFAULT_SELECTOR, render

    selector = dict(labels) if labels else dict(DEFAULT_SELECTOR)
    documents, warnings = render(
        config.load(path), namespace=namespace, selector=selector, jwks_uri=jwks_uri
    )
    for warning in warnings:
        print(f"iap mesh render: warning: {warning}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump_all(documents, explicit_start=True, width=1000))
    return EXIT_OK


def _policy_explain(args: argparse.Namespace) -> int:
    """Exit 0 when the request would be allowed, 1 when not; 2 for a config error."""
    from iap.explain import claims_of, explain

    cfg = config.load(args.config)
    claims = claims_of(file=args.claims, user=args.user)
    allowed, lines = explain(
        cfg, method=args.method, url=args.url, claims=claims, auth=args.auth, client=args.client
    )
    print("\n".join(lines))
    return EXIT_OK if allowed else EXIT_FAILURE


def _run(cfg: config.Config, path: str, *, workers: int) -> int:
    if workers > 1:
        from iap.supervisor import supervise

        return supervise(cfg, path, workers)
    from iap.web.server import Edge

    edge = Edge(cfg)
    return _event_loop(serve(edge, reuse_port=False, config_path=path))


def _event_loop(main: Coroutine[Any, Any, int]) -> int:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def serve(edge: Any, *, reuse_port: bool, config_path: str | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP reloads routes from ``config_path``.

    ``edge`` is an :class:`iap.web.server.Edge`.
    """
    from iap.web.server import wait_for_signals

    try:
        await edge.start(reuse_port=reuse_port)
    except OSError as exc:
        print(f"iap: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        await edge.stop()
        return EXIT_FAILURE
    # Everything allocated so far lives as long as the process: keep the collector from
    # walking it again and again (gc.freeze, as pre-fork servers do).
    gc.collect()
    gc.freeze()
    _say(f"iap listening: {edge.describe()}")
    reloads: set[asyncio.Task[None]] = set()
    if config_path is not None:

        def on_hup() -> None:
            task = asyncio.ensure_future(_reload(edge, config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_hup)
    await wait_for_signals(signal.SIGTERM, signal.SIGINT)
    _say("iap: draining")
    for task in reloads:
        task.cancel()
    await edge.stop()
    return EXIT_OK


def _say(line: str) -> None:
    """One status line on stderr in a single write(2): workers share stderr, and a pipe
    keeps writes under PIPE_BUF whole, so their lines never interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


async def _reload(edge: Any, path: str) -> None:
    try:
        try:
            fresh = config.load(path)
        except ConfigError:
            edge.metrics.reload_refusals.inc()  # Edge.reload counts its own refusals
            raise
        old = edge.reload(fresh)
    except ConfigError as exc:
        for problem in exc.problems:
            _say(f"iap: reload refused: config error: {problem}")
        return
    _say("iap: reloaded routes and policies")
    await asyncio.sleep(edge.config.drain_timeout)  # requests in flight on the old routes
    await old.close()
