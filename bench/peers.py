"""The real reverse proxies iap is measured against, each proxying to the run's upstream
with one process (or worker) and keep-alive to the upstream: nginx ``proxy_pass``, haproxy and
caddy ``reverse_proxy`` (``GOMAXPROCS=1``). Each is the Debian package; ``make bench``
installs the missing ones when it runs as root, and a missing one is skipped by name.

:func:`run_nginx` also serves the offload pattern (nginx forwarding, iap deciding through
``auth_request``), which bench/run.py builds around a signed-in iap.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from procs import HOST, free_port, spawn, wait_ready

NGINX = ("nginx", "/usr/sbin/nginx")
HAPROXY = ("haproxy", "/usr/sbin/haproxy")
CADDY = ("caddy", "/usr/bin/caddy")


class Env(Protocol):
    """What a peer needs of bench/run.py's Env."""

    @property
    def upstream(self) -> str: ...
    @property
    def workdir(self) -> Path: ...
    @property
    def pids(self) -> list[int]: ...


def binary(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def missing(candidates: tuple[str, ...], package: str) -> str:
    """Empty when the binary is here, else why the row is skipped (its Debian package)."""
    if binary(candidates):
        return ""
    return f"`{candidates[0]}` not found (Debian package `{package}`)"


def address(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


@contextlib.contextmanager
def _serve(
    env: Env,
    argv: list[str],
    directory: Path,
    extra_env: dict[str, str] | None = None,
    ready: tuple[int, ...] = (200,),
) -> Iterator[str]:
    """Run a peer that listens on the URL it is given; yield that URL once it proxies."""
    log = directory / "stderr.log"
    with spawn(argv, log, env=extra_env) as proc:
        url = f"http://{HOST}:{directory.name.rsplit('-', 1)[1]}/"
        wait_ready(url, proc, log, ready)
        env.pids.append(proc.pid)
        yield url


def _directory(env: Env, name: str) -> tuple[Path, int]:
    port = free_port()
    directory = env.workdir / f"{name}-{port}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory, port


_NGINX = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server {upstream}; keepalive 64; }}
{upstreams}
    server {{
        listen {host}:{port};
{locations}
    }}
}}
"""

PROXY_LOCATION = """\
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }"""


@contextlib.contextmanager
def run_nginx(
    env: Env,
    name: str = "nginx",
    locations: str = PROXY_LOCATION,
    upstreams: str = "",
    ready: tuple[int, ...] = (200,),
) -> Iterator[str]:
    """One nginx process whose ``app`` upstream is the run's; ``upstreams`` adds others.
    It is ready once ``/`` answers a status in ``ready``."""
    path = binary(NGINX)
    assert path is not None, "the scenario's `missing` is checked before it starts"
    directory, port = _directory(env, name)
    conf = directory / "nginx.conf"
    text = _NGINX.format(
        dir=directory,
        host=HOST,
        port=port,
        upstream=address(env.upstream),
        upstreams=upstreams,
        locations=locations,
    )
    conf.write_text(text)
    argv = [path, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    with _serve(env, argv, directory, ready=ready) as url:
        yield url


@contextlib.contextmanager
def nginx_target(env: Env) -> Iterator[str]:
    with run_nginx(env) as url:
        yield url


_HAPROXY = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend bench
    bind {host}:{port}
    default_backend app
backend app
    server app {upstream}
"""


@contextlib.contextmanager
def haproxy_target(env: Env) -> Iterator[str]:
    path = binary(HAPROXY)
    assert path is not None, "the scenario's `missing` is checked before it starts"
    directory, port = _directory(env, "haproxy")
    conf = directory / "haproxy.cfg"
    conf.write_text(_HAPROXY.format(host=HOST, port=port, upstream=address(env.upstream)))
    with _serve(env, [path, "-db", "-f", str(conf)], directory) as url:
        yield url


_CADDY = """\
{{
    admin off
    auto_https off
}}
http://{host}:{port} {{
    reverse_proxy {upstream}
}}
"""


@contextlib.contextmanager
def caddy_target(env: Env) -> Iterator[str]:
    path = binary(CADDY)
    assert path is not None, "the scenario's `missing` is checked before it starts"
    directory, port = _directory(env, "caddy")
    conf = directory / "Caddyfile"
    conf.write_text(_CADDY.format(host=HOST, port=port, upstream=address(env.upstream)))
    home = {name: str(directory) for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    argv = [path, "run", "--config", str(conf), "--adapter", "caddyfile"]
    with _serve(env, argv, directory, {"GOMAXPROCS": "1", **home}) as url:
        yield url
