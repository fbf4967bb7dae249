"""The listening socket, as an operator sees it: its addresses and why it failed.

:func:`bind_error` turns the ``OSError`` of a failed bind into the one line
``hubbub serve`` prints (what is wrong and what to do); :func:`listen_urls`
gives the links to print once the server listens, with the machine's LAN
address when it is bound to every interface. Finding that address looks at
the local routing table only: a UDP socket is "connected" to a non-routable
address, which sends no packet, and the kernel says which local address it
would use.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import ssl

from ..errors import StartupError

#: Where the UDP socket "connects" to learn the outgoing address (nothing is
#: sent: connect() on a datagram socket only picks a route). Private and
#: documentation ranges, never contacted.
_PROBES = ((socket.AF_INET, "10.255.255.255"), (socket.AF_INET6, "2001:db8::1"))

WILDCARDS = ("", "0.0.0.0", "::")


def bind_error(host: str, port: int, exc: BaseException) -> str:
    """One line saying why ``host:port`` could not be listened on, and what to do."""
    where = f"port {port} on {host or '*'}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve --host {host!r} ({exc.strerror}); use an IP address or a known name"
    if isinstance(exc, OverflowError):
        return f"port {port} is out of range; pick a --port from 0 to 65535"
    code = getattr(exc, "errno", None)
    if code == errno.EADDRINUSE:
        return f"{where} is already in use; stop the other server or pick another --port"
    if code == errno.EADDRNOTAVAIL:
        return (
            f"address {host} is not available on this machine; use one of its own "
            "addresses, 127.0.0.1 or 0.0.0.0 (every interface) for --host"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied to listen on {where}; ports below 1024 need privileges, "
            "pick a --port of 1024 or more"
        )
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"cannot listen on {where}: {reason}"


def _url(host: str, port: int, scheme: str = "http") -> str:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"{scheme}://[{host}]:{port}/" if is_v6 else f"{scheme}://{host}:{port}/"


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The TLS context of ``--certfile`` / ``--keyfile`` (stdlib defaults: TLS 1.2+).

    Raises :class:`StartupError` with one line when the files cannot be read
    or do not belong together.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # WebSocket and HTTP/1.1 only: say so, so that no client tries h2.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise StartupError(
            f"cannot read TLS file {exc.filename or certfile}: no such file; check "
            "--certfile and --keyfile"
        ) from exc
    except PermissionError as exc:
        raise StartupError(
            f"cannot read TLS file {exc.filename or certfile}: permission denied"
        ) from exc
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        raise StartupError(
            f"--certfile {certfile} and --keyfile {keyfile} are not a usable PEM certificate "
            f"and its private key ({reason})"
        ) from exc
    except OSError as exc:
        raise StartupError(f"cannot read TLS files: {exc.strerror or exc}") from exc
    return context


def lan_addresses(family: socket.AddressFamily = socket.AF_INET) -> list[str]:
    """This machine's address(es) on its network, from the routing table (no traffic)."""
    found: list[str] = []
    for fam, probe in _PROBES:
        if fam != family:
            continue
        try:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue  # no route: no LAN address of this family
        ip = ipaddress.ip_address(addr.split("%")[0])
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            found.append(str(ip))
    return found


def listen_urls(host: str, port: int, tls: bool = False) -> tuple[str, list[str]]:
    """The URL to open on this machine, and the LAN URLs when bound to every interface."""
    scheme = "https" if tls else "http"
    if host not in WILDCARDS:
        return _url(host, port, scheme), []
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    local = "::1" if host == "::" else "127.0.0.1"
    return _url(local, port, scheme), [_url(a, port, scheme) for a in lan_addresses(family)]


def listening_line(host: str, port: int, tls: bool = False) -> str:
    """``hubbub listening on http://127.0.0.1:9502/ (and http://192.168.1.20:9502/ on the LAN)``
    (``https://`` with TLS)."""
    local, lan = listen_urls(host, port, tls)
    line = f"hubbub listening on {local}"
    if lan:
        line += f" (and {', '.join(lan)} on the LAN)"
    return line
