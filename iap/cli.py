"""The ``iap`` command (SPEC §4). Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from iap import config
from iap.app import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from iap.commands import parser as _parser
from iap.environment import Environment
from iap.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environment = Environment.from_mapping(os.environ)  # the one read of the environment
    try:
        if args.command == "check":
            from iap.app.wiring import build_edge

            # Also loads the secrets and the TLS material; binds nothing.
            build_edge(config.load(args.config, environment, serving=True), environment)
            print(f"{args.config}: ok")
            return EXIT_OK
        if args.command == "run":
            cfg = config.load(args.config, environment, serving=True)
            return _run(cfg, args.config, environment, workers=args.workers)
        if args.command == "dev":
            from iap.app.serving import run_loop
            from iap.dev.run import DevOptions, run_dev

            options = DevOptions(
                port=args.port, admin_port=args.admin_port, otlp=args.otlp, redis=args.redis
            )
            return run_loop(run_dev(options, environment))
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
