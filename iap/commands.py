"""The ``iap`` command line: its subcommands and options, each with a description, an
example and its defaults in ``--help`` (``iap.cli`` runs what they ask for).

Invariants:
- Every subcommand's help shows a description, an ``Example:`` and each option's default
  (``tests/unit/test_cli_help.py``).
- Option types refuse a bad value with a usage error (exit 2) naming the option.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from iap import __version__

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]  # the subcommands' parser


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default shown where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings and "(default" not in text:
            text += " (default: %(default)s)"
        return text


def _command(
    commands: Commands, name: str, summary: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, a description and an example."""
    return commands.add_parser(
        name,
        help=summary,
        description=description or summary[0].upper() + summary[1:] + ".",
        epilog="Example:\n  " + example.replace("\n", "\n  "),
        formatter_class=_Help,
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="iap",
        description="Identity-aware proxy for the mesh edge.",
        epilog="Example:\n  iap dev            # try it: a dev IdP, demo users and a demo app\n"
        "  iap COMMAND --help # what a command does, with an example",
        formatter_class=_Help,
    )
    top.add_argument("--version", action="version", version=f"iap {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_serving(commands)
    _add_tools(commands)
    _add_mesh(commands)
    _add_policy(commands)
    return top


def _add_serving(commands: Commands) -> None:
    """``iap run``, ``iap dev`` and ``iap check``."""
    run = _command(
        commands,
        "run",
        "run the proxy",
        "iap run -c /etc/iap/iap.yaml --workers auto",
        "Serve the routes of a config until SIGTERM (drains) or SIGINT; SIGHUP reloads it.",
    )
    run.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    run.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes sharing the port, or `auto` for the CPUs this container may use",
    )
    _add_dev(commands)
    check = _command(
        commands,
        "check",
        "validate a config and print every problem",
        "iap check -c iap.yaml && echo ok",
        "Validate a config, read its secrets and TLS files, and print every problem with its"
        "\nkey; binds nothing. Exit 0 when it is good, 2 when it is not.",
    )
    check.add_argument("-c", "--config", required=True, help="path to iap.yaml")


def _add_dev(commands: Commands) -> None:
    dev = _command(
        commands,
        "dev",
        "run iap with a dev IdP and a demo upstream on 127.0.0.1",
        "iap dev --port 8080 --otlp http://127.0.0.1:4318",
        "Run iap in front of a demo upstream, with a dev IdP shaped like Entra ID and demo"
        "\nusers, all on 127.0.0.1 and with no config. Prints the URLs to open.",
    )
    dev.add_argument("--port", type=int, default=8080, help="the public port")
    dev.add_argument("--admin-port", type=int, default=9090, help="the admin listener's port")
    dev.add_argument(
        "--otlp",
        metavar="URL",
        help="send spans to this OTLP/HTTP endpoint (Jaeger: http://127.0.0.1:4318); "
        "without it, OTEL_EXPORTER_OTLP_ENDPOINT when set",
    )
    dev.add_argument("--redis", metavar="URL", help="keep sessions in this Redis (redis://...)")


def _add_tools(commands: Commands) -> None:
    """``iap certs dev`` and ``iap keys new``."""
    certs = _command(commands, "certs", "certificate tooling", "iap certs dev --out ./certs")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    certs_dev = _command(
        certs_commands,
        "dev",
        "write a development CA and the edge and ingress certificates",
        "iap certs dev --out ./certs --server-name api.mesh.internal --days 30",
    )
    certs_dev.add_argument("--out", required=True, help="directory to write the files into")
    certs_dev.add_argument(
        "--server-name",
        default="api.mesh.internal",
        help="the ingress gateway's name (upstream_tls.server_name)",
    )
    certs_dev.add_argument(
        "--days", type=_positive, default=30, help="certificate lifetime in days"
    )

    keys = _command(
        commands, "keys", "signing keys for the tokens iap mints", "iap keys new --dir ./keys"
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    keys_new = _command(
        keys_commands,
        "new",
        "add an ES256 signing key; print its kid",
        "iap keys new --dir /etc/iap/signing-keys",
    )
    keys_new.add_argument(
        "--dir", required=True, help="the keys directory (tokens.keys_dir); created if missing"
    )


def _add_mesh(commands: Commands) -> None:
    """``iap mesh render``."""
    mesh = _command(
        commands, "mesh", "Istio resources derived from the routes", "iap mesh render -c iap.yaml"
    )
    mesh_commands = mesh.add_subparsers(dest="mesh_command", required=True, metavar="COMMAND")
    mesh_render = _command(
        mesh_commands,
        "render",
        "print the Istio wiring: Gateway, VirtualServices, PeerAuthentication,"
        " RequestAuthentication, AuthorizationPolicies and Telemetry",
        "iap mesh render -c iap.yaml --namespace istio-system | kubectl apply -f -",
    )
    mesh_render.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    mesh_render.add_argument(
        "--only",
        type=_parts,
        metavar="PARTS",
        help="comma-separated parts to print (default: all): gateway, virtualservice,"
        " peerauthentication, authn, authz, telemetry",
    )
    mesh_render.add_argument("--namespace", default="istio-system", help="the gateway's namespace")
    mesh_render.add_argument(
        "--selector",
        action="append",
        type=_label,
        metavar="KEY=VALUE",
        help="a label of the gateway's pods; repeatable (default: istio=ingressgateway)",
    )
    mesh_render.add_argument(
        "--jwks-uri",
        help="where istiod fetches iap's keys"
        " (default: http://iap-admin.iap.svc.cluster.local:<admin port>/jwks.json)",
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
    add("--gateway-name", default="iap", help="the Gateway's name")
    add("--gateway-port", type=_port, default=443, help="the Gateway's HTTPS port")
    add(
        "--credential-name",
        default="iap-ingress-mtls",
        help="the Secret with the gateway's certificate and the CA of iap's client"
        " certificate, as `iap certs dev` writes it",
    )
    add(
        "--workload-namespace",
        default="default",
        help="the services' namespace: PeerAuthentication STRICT, default destinations",
    )
    add(
        "--destination",
        action="append",
        type=_destination,
        metavar="ROUTE=HOST[:PORT]",
        help="the Service a route's requests go to; repeatable"
        " (default <route>.<workload namespace>.svc.cluster.local:<destination port>)",
    )
    add(
        "--destination-port",
        type=_port,
        default=80,
        help="the destination port when --destination names none",
    )
    add("--sampling", type=float, default=100.0, help="tracing sampling percentage")
    add(
        "--tracing-provider",
        default="jaeger",
        help="the meshConfig extension provider that receives the spans",
    )


def _add_policy(commands: Commands) -> None:
    """``iap policy explain``."""
    policy = _command(
        commands,
        "policy",
        "route policies",
        "iap policy explain -c iap.yaml --url https://edge/admin/ --user bob",
    )
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    explain = _command(
        policy_commands,
        "explain",
        "print the decision for one request and the rule; exit 0 allow, 1 deny",
        "iap policy explain -c iap.yaml --url https://edge.contoso.com/admin/ --user alice\n"
        "iap policy explain -c iap.yaml --method POST --url https://edge/api/ --claims id.json",
    )
    explain.add_argument("-c", "--config", required=True, help="path to iap.yaml")
    explain.add_argument("--method", default="GET", help="the request method")
    explain.add_argument("--url", required=True, help="the request URL, e.g. https://h/p?q")
    caller = explain.add_mutually_exclusive_group()
    caller.add_argument("--claims", metavar="FILE", help="the caller's ID-token claims (JSON)")
    caller.add_argument("--user", metavar="NAME", help="a dev IdP demo user (alice, bob, ...)")
    explain.add_argument(
        "--auth", choices=["session", "bearer"], default="session", help="how the caller came in"
    )
    explain.add_argument(
        "--client", default="", help="the client address, for `source` rules (default: none)"
    )


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
