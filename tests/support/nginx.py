"""A real Debian nginx on a free loopback port, around a ``server`` block the test gives.

Everything nginx writes (pid, logs, temp files) stays in the test's directory; nginx runs in the
foreground as one process (``daemon off; master_process off``), so stopping it is one signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

NGINX = "/usr/sbin/nginx"  # Debian's path; /usr/sbin is not on every user's PATH

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    # one line per request and per auth subrequest: what nginx sent on to whom
    log_format sent '$request_method $uri $status $upstream_addr $upstream_bytes_sent';
    access_log {dir}/access.log sent;
    log_subrequest on;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
{server}
    }}
}}
"""


def nginx_binary() -> str:
    """The path of nginx; skips the test when it is missing, but fails under CI."""
    path = shutil.which("nginx") or (NGINX if os.access(NGINX, os.X_OK) else None)
    if path is None:
        reason = "nginx not found (install the Debian package `nginx`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def doc_block(document: Path, marker: str, language: str) -> str:
    """The fenced ``language`` block right after the ``<!-- tested: marker -->`` comment, so
    that the documented configuration is the tested one."""
    pattern = rf"<!-- tested: {re.escape(marker)} -->\n```{language}\n(.*?)\n```"
    found = re.findall(pattern, document.read_text(encoding="utf-8"), re.DOTALL)
    assert len(found) == 1, f"{document}: want one {language} block marked {marker!r}"
    return str(found[0])


def write_conf(directory: Path, port: int, server: str) -> Path:
    """``directory/nginx.conf``: nginx on 127.0.0.1:``port`` with ``server`` in its server."""
    directory.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"        {line}" if line else "" for line in server.splitlines())
    conf = directory / "nginx.conf"
    conf.write_text(_CONF.format(dir=directory, port=port, server=body), encoding="utf-8")
    return conf


@dataclass
class Nginx:
    proc: asyncio.subprocess.Process
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> list[list[str]]:
        """Method, URI, status, upstream address and bytes sent to it, per logged request."""
        path = self.directory / "access.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line.split(" ") for line in lines]

    async def stop(self) -> None:
        """Graceful shutdown (SIGQUIT: requests in flight finish and are logged) and wait;
        SIGKILL if it lingers."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGQUIT)
            try:
                async with asyncio.timeout(10):  # a hang guard, not a performance bound
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def start_nginx(directory: Path, server: str) -> Nginx:
    """Run nginx with ``server`` (directives of a ``server`` block) in ``directory``; return
    once its port accepts connections. A config nginx refuses fails here with its log."""
    binary = nginx_binary()
    port = free_port()
    conf = write_conf(directory, port, server)
    proc = await asyncio.create_subprocess_exec(
        *(binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    nginx = Nginx(proc, port, directory)
    try:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            while not await _accepts(port):
                # each refused attempt yields to the loop, which notices an exited nginx
                if proc.returncode is not None:
                    raise RuntimeError(f"nginx exited with {proc.returncode}:\n{nginx.error_log()}")
    except BaseException:
        await nginx.stop()
        raise
    return nginx
