"""The ``iap`` command (SPEC §4). Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iap import __version__, config
from iap.app import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from iap.environment import Environment
from iap.errors import ConfigError

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # the subcommands' parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iap", description="Identity-aware proxy for the mesh edge."
    )
    parser.add_argument("--version", action="version", version=f"iap {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_serving(commands)
    _add_tools(commands)
    _add_mesh(commands)
    _add_policy(commands)
    return parser


def _add_serving(commands: Commands) -> None:
    """``iap run``, ``iap dev`` and ``iap check``."""
    run = commands.add_parser("run", help="run the proxy")
    run.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes sharing the port, or `auto` for the CPUs this container may use",
    )

    dev = commands.add_parser("dev", help="run iap with a demo upstream on 127.0.0.1")
    dev.add_argument("--port", type=int, default=8080, help="public port (default 8080)")
    dev.add_argument("--redis", metavar="URL", help="keep sessions in this Redis (redis://...)")

    check = commands.add_parser("check", help="validate a config and print every problem")
    check.add_argument("-c", "--config", required=True, help="path to iap.yaml")


def _add_tools(commands: Commands) -> None:
    """``iap certs dev`` and ``iap keys new``."""
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


def _add_mesh(commands: Commands) -> None:
    """``iap mesh render``."""
    mesh = commands.add_parser("mesh", help="Istio resources derived from the routes")
    mesh_commands = mesh.add_subparsers(dest="mesh_command", required=True, metavar="COMMAND")
    mesh_render = mesh_commands.add_parser(
        "render",
        help="print the Istio wiring: Gateway, VirtualServices, PeerAuthentication,"
        " RequestAuthentication, AuthorizationPolicies and Telemetry",
    )
    mesh_render.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    mesh_render.add_argument(
        "--only",
        type=_parts,
        metavar="PARTS",
        help="comma-separated parts to print (default all): gateway, virtualservice,"
        " peerauthentication, authn, authz, telemetry",
    )
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
    mesh_render.add_argument(
        "--out-dir",
        metavar="DIR",
        help="write a kustomize Component there (<part>.yaml and kustomization.yaml)"
        " instead of printing",
    )
    _add_mesh_wiring(mesh_render)


def _add_mesh_wiring(render: argparse.ArgumentParser) -> None:
    """The options of the Gateway, VirtualServices, PeerAuthentication and Telemetry."""
    add = render.add_argument
    add("--gateway-name", default="iap", help="the Gateway's name (iap)")
    add("--gateway-port", type=_port, default=443, help="the Gateway's HTTPS port (443)")
    add(
        "--credential-name",
        default="iap-ingress-mtls",
        help="the Secret with the gateway's certificate and the CA of iap's client"
        " certificate, as `iap certs dev` writes it (iap-ingress-mtls)",
    )
    add(
        "--workload-namespace",
        default="default",
        help="the services' namespace: PeerAuthentication STRICT, default destinations (default)",
    )
    add(
        "--destination",
        action="append",
        type=_destination,
        metavar="ROUTE=HOST[:PORT]",
        help="the Service a route's requests go to; repeatable"
        " (default <route>.<workload namespace>.svc.cluster.local:<destination port>)",
    )
    add("--destination-port", type=_port, default=80, help="default destination port (80)")
    add("--sampling", type=float, default=100.0, help="tracing sampling percentage (100)")
    add(
        "--tracing-provider",
        default="jaeger",
        help="the meshConfig extension provider that receives the spans (jaeger)",
    )


def _add_policy(commands: Commands) -> None:
    """``iap policy explain``."""
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _workers(text: str) -> int:
    """A positive count, or ``auto``: the CPUs the affinity mask and the cgroup quota allow."""
    if text != "auto":
        return _positive(text)
    from iap.supervisor.cpus import usable_cpus

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return usable_cpus(affinity or 1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environment = Environment.from_mapping(os.environ)  # the one read of the environment
    try:
        if args.command == "check":
            from iap.app.wiring import build_edge

            # Also loads the secrets and the TLS material; binds nothing.
            build_edge(config.load(args.config, environment), environment)
            print(f"{args.config}: ok")
            return EXIT_OK
        if args.command == "run":
            cfg = config.load(args.config, environment)
            return _run(cfg, args.config, environment, workers=args.workers)
        if args.command == "dev":
            from iap.app.serving import run_loop
            from iap.dev.run import run_dev

            return run_loop(run_dev(args.port, environment, redis=args.redis))
        if args.command == "certs":
            return _certs_dev(args.out, server_name=args.server_name, days=args.days)
        if args.command == "keys":
            return _keys_new(args.dir)
        if args.command == "mesh":
            return _mesh_render(args, environment)
        if args.command == "policy":
            return _policy_explain(args, environment)
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


def _parts(text: str) -> tuple[str, ...]:
    from iap.mesh_render.parts import parse_parts

    try:
        return parse_parts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError("expected a port from 1 to 65535")
    return value


def _destination(text: str) -> tuple[str, tuple[str, int | None]]:
    route, sep, target = text.partition("=")
    host, colon, port = target.rpartition(":") if ":" in target else (target, "", "")
    if not sep or not route or not host or (colon and not port.isdigit()):
        raise argparse.ArgumentTypeError("expected ROUTE=HOST[:PORT], e.g. orders=orders.shop.svc")
    return route, (host, int(port) if colon else None)


def _mesh_render(args: argparse.Namespace, environment: Environment) -> int:
    """Parse the config only (no key files, no ports): YAML on stdout, warnings on stderr."""
    import yaml

    from iap.mesh_render import DEFAULT_SELECTOR
    from iap.mesh_render.parts import PARTS, render_parts
    from iap.mesh_render.wiring import Wiring

    wiring = Wiring(
        namespace=args.namespace,
        selector=dict(args.selector) if args.selector else dict(DEFAULT_SELECTOR),
        gateway=args.gateway_name,
        port=args.gateway_port,
        credential=args.credential_name,
        workloads=args.workload_namespace,
        destinations={
            route: (host, args.destination_port if port is None else port)
            for route, (host, port) in args.destination or ()
        },
        destination_port=args.destination_port,
        sampling=args.sampling,
        provider=args.tracing_provider,
    )
    cfg = config.load(args.config, environment)
    by_part, warnings = render_parts(cfg, wiring, jwks_uri=args.jwks_uri, parts=args.only or PARTS)
    for warning in warnings:
        print(f"iap mesh render: warning: {warning}", file=sys.stderr)
    if args.out_dir is None:
        documents = [document for found in by_part.values() for document in found]
        sys.stdout.write(yaml.safe_dump_all(documents, explicit_start=True, width=1000))
        return EXIT_OK
    return _write_component(Path(args.out_dir), by_part)


def _write_component(out: Path, by_part: dict[str, list[dict[str, object]]]) -> int:
    """The Component's files; a part's file that no longer has documents is removed."""
    from iap.mesh_render.parts import component_files

    files = component_files(by_part)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for part in by_part:
            (out / f"{part}.yaml").unlink(missing_ok=True)
        for name, text in files.items():
            (out / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        where = exc.filename or out
        print(f"iap mesh render: cannot write {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    for name in files:
        print(out / name)
    return EXIT_OK


def _policy_explain(args: argparse.Namespace, environment: Environment) -> int:
    """Exit 0 when the request would be allowed, 1 when not; 2 for a config error."""
    from iap.explain import claims_of, explain

    cfg = config.load(args.config, environment)
    claims = claims_of(file=args.claims, user=args.user)
    allowed, lines = explain(
        cfg, method=args.method, url=args.url, claims=claims, auth=args.auth, client=args.client
    )
    print("\n".join(lines))
    return EXIT_OK if allowed else EXIT_FAILURE


def _run(cfg: config.Config, path: str, environment: Environment, *, workers: int) -> int:
    if workers > 1:
        from iap.supervisor import supervise

        return supervise(cfg, path, workers, environment)
    from iap.app.serving import run_loop, serve
    from iap.app.wiring import build_edge

    edge = build_edge(cfg, environment)
    return run_loop(serve(edge, reuse_port=False, config_path=path, environment=environment))
