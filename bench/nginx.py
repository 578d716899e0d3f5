"""nginx as a pure reverse proxy: the floor any proxy on this machine is compared with.

The configuration is the minimum a streaming proxy needs (HTTP/1.1 and keepalive to the
upstream, no buffering either way) and nothing else: no access log, no TLS, one worker.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import requests

from bench.processes import Service, free_port, wait_until

CONF = """\
worker_processes 1;
worker_rlimit_nofile 20000;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{
    worker_connections 9000;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream backend {{
        server {upstream};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def write_conf(prefix: Path, upstream: str, port: int) -> Path:
    """Write nginx.conf into `prefix` for a proxy on `port` in front of `upstream` (host:port)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(CONF.format(prefix=prefix, upstream=upstream, port=port))
    return conf


class BareNginx(Service):
    """nginx in the foreground in front of `upstream`, with its files under `prefix`."""

    def __init__(self, upstream: str, prefix: Path) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        conf = write_conf(prefix, upstream, self.port)
        super().__init__("nginx", [binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                         log=prefix / "nginx.out")
        # Any HTTP answer means nginx listens; the upstream may answer 404 at "/".
        wait_until(lambda: requests.get(self.url + "/health", timeout=1).status_code > 0, 15, "nginx", self.proc)
