"""Run the shipped nginx config (nginx/) for real: a test certificate, free ports, nginx as a child."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from bench.processes import ROOT, Service, free_port, wait_until

NGINX_DIR = ROOT / "nginx"
SERVER_NAME = "sluice.example.com"  # the server_name in nginx/sluice.conf
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# What a stock Debian /etc/nginx/nginx.conf gives sluice.conf, with every path in the test's
# folder. The access log names the gateway that served each request.
MAIN_CONF = """\
{user}
worker_processes 1;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    log_format sluice_test '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log {prefix}/access.log sluice_test;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include sluice.conf;
}}
"""


def make_certificate(tls_dir: Path, host: str = SERVER_NAME) -> Path:
    """A throwaway self-signed certificate for `host` (made per run: no key is ever committed)."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                    "-keyout", str(tls_dir / "privkey.pem"), "-out", str(tls_dir / "fullchain.pem")],
                   check=True, capture_output=True)
    return tls_dir / "fullchain.pem"


def render(conf: str, http_port: int, https_port: int, webroot: Path) -> str:
    """sluice.conf with its ports on loopback test ports and its ACME webroot in the test's folder.

    Nothing else changes. Each pattern must match as often as the shipped file has it: if the
    file changes, this function changes with it rather than test half a config.
    """
    moves = [(r"\blisten 80\b", f"listen 127.0.0.1:{http_port}", 2),  # default server and sluice
             (r"\blisten 443\b", f"listen 127.0.0.1:{https_port}", 2),
             (r"\broot /var/www/acme;", f"root {webroot};", 1)]
    for pattern, replacement, expected in moves:
        conf, found = re.subn(pattern, replacement, conf)
        assert found == expected, f"sluice.conf has {found} x {pattern!r}, expected {expected}"
    return conf


def upstream_lines(addresses: list[str], options: str = "max_fails=3 fail_timeout=10s") -> str:
    """An upstreams.conf listing these host:port gateways, as nginx/sluice/upstreams.conf does."""
    return "".join(f"server {address} {options};\n" for address in addresses)


def write_config(prefix: Path, upstreams: str, http_port: int, https_port: int) -> Path:
    """Lay out /etc/nginx as Debian has it, in `prefix`: main config, sluice.conf, upstreams, TLS files.

    Returns the certificate, which clients trust as their CA.
    """
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    (prefix / "sluice").mkdir(exist_ok=True)
    (prefix / "sluice" / "upstreams.conf").write_text(upstreams)
    (prefix / "acme").mkdir(exist_ok=True)
    (prefix / "sluice.conf").write_text(
        render((NGINX_DIR / "sluice.conf").read_text(), http_port, https_port, prefix / "acme"))
    # As root, workers would run as nobody and could not read the test's root-owned folder.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
    return make_certificate(prefix / "sluice" / "tls")


def nginx_command(prefix: Path, *args: str, foreground: bool = False) -> list[str]:
    """The nginx command line for the config in `prefix`, its pid file there too."""
    daemon = "daemon off; " if foreground else ""
    return [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
            "-g", f"{daemon}pid {prefix}/nginx.pid;", *args]


class Nginx(Service):
    """nginx in the foreground with the shipped sluice.conf, in front of the given gateways."""

    def __init__(self, prefix: Path, upstreams: str) -> None:
        self.prefix = prefix
        self.http_port, self.https_port = free_port(), free_port()
        self.ca = write_config(prefix, upstreams, self.http_port, self.https_port)
        super().__init__("nginx", nginx_command(prefix, foreground=True), log=prefix / "nginx.log")
        wait_until(self._listening, 10, "nginx", self.proc)

    def _listening(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.https_port), timeout=1):
            return True

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def access_log(self) -> list[str]:
        """nginx's access log lines: client, request, status, and `upstream=` the gateway(s) tried."""
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def session(self, server_name: str = SERVER_NAME, source_address: str | None = None) -> requests.Session:
        """A client that connects to 127.0.0.1 but asks for `server_name` (SNI, Host) and checks the certificate."""
        session = requests.Session()
        session.mount("https://", _PinnedHost(server_name, source_address))
        session.headers["Host"] = server_name
        session.verify = str(self.ca)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE (or a proxy) from the environment wins
        return session


class _PinnedHost(HTTPAdapter):
    """Like curl --resolve: TLS to 127.0.0.1 with another name for SNI and certificate checks."""

    def __init__(self, server_name: str, source_address: str | None) -> None:
        self.server_name = server_name
        self.source_address = source_address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=self.server_name, assert_hostname=self.server_name)
        if self.source_address:  # any 127.x.y.z is this machine; nginx sees it as another client
            kwargs["source_address"] = (self.source_address, 0)
        super().init_poolmanager(*args, **kwargs)
