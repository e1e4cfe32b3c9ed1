"""Name resolution, TCP and TLS probes, and short descriptions of network errors."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult

import aiohttp

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure(scheme: str) -> bool:
    return scheme in ("https", "wss")


def port_of(url: SplitResult) -> int:
    return url.port or (443 if secure(url.scheme) else 80)


def http_url(url: str) -> str:
    """``url`` with a ``ws``/``wss`` scheme turned into ``http``/``https``."""
    if url.startswith("wss://"):
        return "https://" + url[len("wss://") :]
    if url.startswith("ws://"):
        return "http://" + url[len("ws://") :]
    return url


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of a network failure."""
    if isinstance(exc, socket.gaierror):
        return f"the name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the TLS certificate is not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "the name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe(exc.os_error)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """The addresses ``host`` resolves to (raises ``socket.gaierror`` / ``TimeoutError``)."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class TlsInfo:
    version: str
    subject: str
    expires: str


async def open_probe(host: str, port: int, timeout_s: float, *, tls: bool) -> TlsInfo | None:
    """Open (and close) a TCP connection, with a verified TLS handshake when ``tls``."""
    context = ssl.create_default_context() if tls else None
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=context, server_hostname=host if tls else None),
        timeout_s,
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is None:
            return None
        cert = sslobj.getpeercert() or {}
        subject = dict(x[0] for x in cert.get("subject", ()) if x)
        return TlsInfo(
            version=str(sslobj.version()),
            subject=str(subject.get("commonName", "?")),
            expires=str(cert.get("notAfter", "?")),
        )
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


@dataclass(frozen=True)
class DateSample:
    """An HTTP ``Date`` header and the local times around the request that carried it."""

    source: str  # the host that answered
    server: float  # the Date header as Unix seconds (whole seconds)
    sent: float  # time.time() when the request was sent
    received: float  # time.time() when the answer arrived


def date_sample(source: str, header: str | None, sent: float, received: float) -> DateSample | None:
    if not header:
        return None
    try:
        server = parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return DateSample(source, server, sent, received)
