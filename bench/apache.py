"""Real Apache in front of real backends, using the shipped virtual host.

`apache_front(backends, tmp)` writes a minimal server config for Debian's apache2 that
loads the proxy modules and Includes `observability/apache/scriptgate.conf` as shipped;
only the listen port, the backends' host:port and the proxy timeout are filled in (Apache
`Define`s), plus one BalancerMember line per backend when there are not exactly two. The
benchmarks put it in front of the Scriptgate contender; tests/stack tests the vhost
through it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.procs import REPO, free_port, stop_process, wait_until
from service.config import DEFAULT_SCRIPT_TIMEOUT, PROXY_TIMEOUT_MARGIN, default_max_timeout

APACHE = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
VHOST = REPO / "observability" / "apache" / "scriptgate.conf"
REDIRECT = REPO / "observability" / "apache" / "redirect.conf"
# Module name -> file; modules compiled into Debian's binary are skipped by <IfModule>.
PROXY_MODULES = {
    "mpm_event_module": "mod_mpm_event.so",
    "authz_core_module": "mod_authz_core.so",
    "log_config_module": "mod_log_config.so",
    "unixd_module": "mod_unixd.so",
    "slotmem_shm_module": "mod_slotmem_shm.so",
    "proxy_module": "mod_proxy.so",
    "proxy_http_module": "mod_proxy_http.so",
    "proxy_balancer_module": "mod_proxy_balancer.so",
    "lbmethod_byrequests_module": "mod_lbmethod_byrequests.so",
    "headers_module": "mod_headers.so",
    "reqtimeout_module": "mod_reqtimeout.so",
}
# The platform's own default, for backends started without MAX_SCRIPT_TIMEOUT.
DEFAULT_MAX_SCRIPT_TIMEOUT = default_max_timeout(DEFAULT_SCRIPT_TIMEOUT)
# With TLS: the shipped vhost speaks HTTPS, and redirect.conf answers plain HTTP.
TLS_MODULES = {
    "ssl_module": "mod_ssl.so",
    "socache_shmcb_module": "mod_socache_shmcb.so",
    "rewrite_module": "mod_rewrite.so",
}
_MEMBER = re.compile(r"^(\s*BalancerMember\b.*)\$\{SCRIPTGATE_BACKEND_(\d+)\}(.*)$", re.M)


def available() -> bool:
    return APACHE.exists() and (MODULES / "mod_proxy_balancer.so").exists()


def render_vhost(backends: list[str]) -> str:
    """The shipped vhost, with one BalancerMember per backend (`${SCRIPTGATE_BACKEND_n}`)."""
    text = VHOST.read_text()
    members = list(_MEMBER.finditer(text))
    if not members:
        raise ValueError(f"{VHOST} has no BalancerMember with ${{SCRIPTGATE_BACKEND_n}}")
    template = members[0]
    lines = "\n".join(
        f"{template.group(1)}${{SCRIPTGATE_BACKEND_{i}}}{template.group(3)}"
        for i in range(1, len(backends) + 1)
    )
    start, end = members[0].start(), members[-1].end()
    return text[:start] + lines + text[end:]


def proxy_timeout(max_script_timeout: float) -> int:
    """SCRIPTGATE_PROXY_TIMEOUT for replicas with this MAX_SCRIPT_TIMEOUT.

    Whole seconds, the fraction dropped, as the container's shell computes it:
    `$((${MAX_SCRIPT_TIMEOUT%.*} + 15))`.
    """
    return int(max_script_timeout) + PROXY_TIMEOUT_MARGIN


@dataclass(frozen=True)
class Tls:
    """A certificate and key for the vhost, and the plain port that redirects to it."""

    cert: Path
    key: Path
    plain_port: int


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed pair for 127.0.0.1 and localhost: the Makefile's `make cert`."""
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO), "cert", f"TLS_DIR={directory}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"make cert failed:\n{result.stdout}{result.stderr}")
    return directory / "server.crt", directory / "server.key"


def server_config(
    tmp: Path,
    port: int,
    backends: list[str],
    vhost: Path,
    max_script_timeout: float = DEFAULT_MAX_SCRIPT_TIMEOUT,
    tls: Tls | None = None,
) -> str:
    """A minimal httpd.conf: modules, Defines for the placeholders, logs in `tmp`.

    `max_script_timeout` is the backends' MAX_SCRIPT_TIMEOUT; Apache's ProxyTimeout
    follows from it as in docker-compose.yml.
    """
    modules = {**PROXY_MODULES, **(TLS_MODULES if tls else {})}
    loads = "\n".join(
        f"<IfModule !{name}>\n    LoadModule {name} {MODULES / so}\n</IfModule>"
        for name, so in modules.items()
    )
    defines = "\n".join(
        f"Define SCRIPTGATE_BACKEND_{i} {backend}" for i, backend in enumerate(backends, 1)
    )
    # Started as root (CI), Apache hands its children to an unprivileged user.
    user = "User nobody\nGroup nogroup\n" if os.geteuid() == 0 else ""
    redirect = ""
    if tls is not None:
        defines += (
            f"\nDefine SCRIPTGATE_TLS\nDefine SCRIPTGATE_TLS_CERT {tls.cert}"
            f"\nDefine SCRIPTGATE_TLS_KEY {tls.key}"
            f"\nDefine SCRIPTGATE_REDIRECT_PORT {tls.plain_port}"
            f"\nDefine SCRIPTGATE_TLS_PUBLIC_PORT {port}"
        )
        redirect = f'Listen 127.0.0.1:{tls.plain_port}\nInclude "{REDIRECT}"\n'
    return f"""\
ServerRoot "{tmp}"
DefaultRuntimeDir "{tmp}"
PidFile "{tmp}/httpd.pid"
ServerName 127.0.0.1
{loads}
{user}Define SCRIPTGATE_PORT {port}
Define SCRIPTGATE_PROXY_TIMEOUT {proxy_timeout(max_script_timeout)}
{defines}
Listen 127.0.0.1:{port}
ErrorLog "{tmp}/error.log"
LogLevel warn
CustomLog "{tmp}/access.log" scriptgate
Include "{vhost}"
{redirect}"""


class ApacheFront(str):
    """The proxy's base URL (a str), with its log files attached."""

    access_log: Path
    error_log: Path
    cert: Path | None  # with TLS: the certificate to trust
    plain_url: str | None  # with TLS: the plain HTTP port that redirects


@contextlib.contextmanager
def apache_front(
    backends: list[str],
    tmp_path: Path,
    max_script_timeout: float = DEFAULT_MAX_SCRIPT_TIMEOUT,
    *,
    tls: bool = False,
) -> Iterator[ApacheFront]:
    """Run Apache on a free 127.0.0.1 port in front of `backends` ("host:port" each).

    `max_script_timeout` is the backends' MAX_SCRIPT_TIMEOUT (ProxyTimeout follows it).
    Yields the base URL (https:// with `tls`, a `make cert` pair, and redirect.conf on
    a second port); Apache is stopped however the caller ends.
    """
    if not backends:
        raise ValueError("apache_front needs at least one backend")
    tmp = tmp_path / f"apache-{free_port()}"
    tmp.mkdir(parents=True)
    port = free_port()
    vhost = tmp / "scriptgate.conf"
    vhost.write_text(render_vhost(backends))
    tls_files = None
    if tls:
        cert, key = make_cert(tmp / "tls")
        tls_files = Tls(cert, key, free_port())
    conf = tmp / "httpd.conf"
    conf.write_text(server_config(tmp, port, backends, vhost, max_script_timeout, tls_files))
    check = subprocess.run(
        [str(APACHE), "-t", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise RuntimeError(f"apache2 -t failed:\n{check.stderr}")
    output = tmp / "apache.out"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [str(APACHE), "-f", str(conf), "-DFOREGROUND"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    url = ApacheFront(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
    url.access_log = tmp / "access.log"
    url.error_log = tmp / "error.log"
    url.cert = tls_files.cert if tls_files else None
    url.plain_url = f"http://127.0.0.1:{tls_files.plain_port}" if tls_files else None
    verify = str(url.cert) if url.cert else True
    try:
        wait_until(
            lambda: (
                proc.poll() is not None
                or requests.get(url + "/_platform/health", timeout=2, verify=verify).status_code
                < 500
            ),
            timeout=20,
            what="Apache to proxy /_platform/health",
        )
        if proc.poll() is not None:
            raise RuntimeError(
                f"apache2 exited early:\n{output.read_text()}\n{_tail(url.error_log)}"
            )
        yield url
    finally:
        stop_process(proc)


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text()[-size:] if path.exists() else ""
