"""PUBLIC_BASE_URL checks: https and resolvable, and ``GET /healthz`` through it reaches
*voicebridge* — its exact body, and ``/api/status`` that says it is voicebridge — not an
auth layer in front of it (Container Apps "Platform Authentication", EasyAuth) or another
app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voicebridge.doctor import net
from voicebridge.doctor.context import Context
from voicebridge.doctor.hints import EASYAUTH_FIX, Hint
from voicebridge.doctor.report import Check, failed, passed, skipped, with_cause

ADDRESS, HEALTHZ = "public_url.address", "public_url.healthz"
NAMES = (ADDRESS, HEALTHZ)
#: What voicebridge's ``GET /healthz`` answers (routes/health.py).
HEALTHZ_BODY = {"status": "ok"}
#: Keys voicebridge's ``GET /api/status`` always has (routes/health.py).
STATUS_KEYS = ("version", "mode", "voicelive_endpoint_host")
BODY_CHARS = 120


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def platform_auth(status: int, headers: Mapping[str, str], body: str) -> bool:
    """Whether an answer looks like Container Apps / App Service authentication (EasyAuth)."""
    location = headers.get("Location", "")
    if status in (301, 302, 303, 307) and (
        "/.auth/login" in location or "login.microsoftonline.com" in location
    ):
        return True
    marks = ("x-ms-middleware-request-id", "x-ms-auth-internal-token")
    easyauth_header = any(h in {k.lower() for k in headers} for h in marks)
    return status in (401, 403) and (easyauth_header or "/.auth/" in body)


def healthz_hint(status: int, headers: Mapping[str, str], body: str) -> Hint:
    """Why ``GET /healthz`` answered ``status`` (voicebridge itself only ever says 200)."""
    if platform_auth(status, headers, body):
        return Hint(
            "Container Apps 'Platform Authentication' (EasyAuth) intercepts requests before "
            "they reach voicebridge: ACS and Event Grid cannot sign in, so calls are never "
            "answered",
            EASYAUTH_FIX,
        )
    if status in (401, 403, 407):
        return Hint(
            f"a layer in front of voicebridge (auth proxy, gateway, WAF) answered {status}: "
            "voicebridge's /healthz never does; ACS and Event Grid would be refused the same "
            "way (the SOP's '401 at the platform level')",
            "let anonymous requests through to the app; on Container Apps: " + EASYAUTH_FIX,
        )
    if status in (301, 302, 303, 307, 308):
        return Hint(
            f"a redirect to {headers.get('Location', '?')}: ACS and Event Grid do not follow "
            "redirects",
            "set PUBLIC_BASE_URL to the final https URL of the app",
        )
    if status in (502, 503, 504):
        return Hint(
            "the ingress answers but the app behind it does not (crashing, not ready, or "
            "scaled to zero and failing to start)",
            "look at the app's logs: `az containerapp logs show -n <app> -g <rg> --tail 50`",
        )
    return Hint(
        f"HTTP {status}: something answers at this URL, but not voicebridge",
        "check PUBLIC_BASE_URL's host and path, and the ingress target port (PORT)",
    )


async def address_check(ctx: Context) -> tuple[Check, bool]:
    """The scheme and name resolution; the flag says whether the name resolved."""
    url = urlsplit(ctx.settings.public_base_url)
    host = url.hostname or ""
    try:
        addresses = await net.resolve(host, net.port_of(url), ctx.options.timeout_s)
    except (OSError, TimeoutError) as exc:
        seen = f"{host}: {net.describe(exc)}"
        fix = "check PUBLIC_BASE_URL (the app's ingress FQDN, e.g. az containerapp show ... "
        fix += "--query properties.configuration.ingress.fqdn)"
        return failed(ADDRESS, with_cause(seen, "a wrong host name"), fix), False
    where = f"{host} resolves to {', '.join(addresses[:3])}"
    if net.secure(url.scheme):
        return passed(ADDRESS, f"https; {where}"), True
    if net.is_loopback(host):
        detail = (
            f"plain {url.scheme} on loopback ({where}): only clients on this machine (the "
            "simulator) can reach it; ACS needs a public https URL"
        )
        return passed(ADDRESS, detail), True
    seen = f"{url.scheme}:// is not https"
    fix = (
        "put TLS in front of the app (Container Apps ingress does) and set "
        "PUBLIC_BASE_URL=https://<app fqdn>"
    )
    cause = "ACS delivers callbacks and media only to https/wss URLs"
    return failed(ADDRESS, with_cause(seen, cause), fix), True


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with http.get(url, allow_redirects=False) as resp:
        text = await resp.text(errors="replace")
        return resp.status, dict(resp.headers), text


async def healthz_check(ctx: Context) -> Check:
    base = net.http_url(ctx.settings.public_base_url)
    host = urlsplit(base).netloc
    timeout = aiohttp.ClientTimeout(total=ctx.options.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            status, headers, body = await _get(http, base + "/healthz")
            if status != 200 or _json(body) != HEALTHZ_BODY:
                return _not_healthz(host, status, headers, body)
            s_status, _, s_body = await _get(http, base + "/api/status")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        seen = f"GET {host}/healthz: {net.describe(exc)}"
        cause = "the app is not running, its ingress is off or internal-only, or a firewall"
        if "certificate" in seen:
            cause = "the URL's certificate is not valid for it (a custom domain without one?)"
        fix = (
            "check the app runs and its ingress is external: `az containerapp ingress show "
            "-n <app> -g <rg>`; locally, start `voicebridge serve`"
        )
        return failed(HEALTHZ, with_cause(seen, cause), fix)
    info = _json(s_body) if s_status == 200 else None
    if not isinstance(info, dict) or not all(k in info for k in STATUS_KEYS):
        seen = f"{host}/healthz says ok, but /api/status (HTTP {s_status}) is not voicebridge's"
        fix = "check PUBLIC_BASE_URL points at the voicebridge app"
        return failed(HEALTHZ, with_cause(seen, "another app answers at this URL"), fix)
    detail = f"voicebridge {info['version']} answers at {host} ({info['mode']} mode)"
    mine = ctx.settings
    if info["voicelive_endpoint_host"] != mine.voicelive_host or info["mode"] != mine.mode:
        detail += (
            f"; note: it uses Voice Live at {info['voicelive_endpoint_host']} in "
            f"{info['mode']} mode, these settings say {mine.voicelive_host} in {mine.mode} mode"
        )
    return passed(HEALTHZ, detail)


def _not_healthz(host: str, status: int, headers: Mapping[str, str], body: str) -> Check:
    hint = healthz_hint(status, headers, body)
    shown = " ".join(body.split())[:BODY_CHARS]
    seen = f"GET {host}/healthz: HTTP {status}" + (f" {shown!r}" if shown else "")
    if status == 200:
        seen += " is not voicebridge's answer"
    return failed(HEALTHZ, with_cause(seen, hint.cause), hint.fix)


async def public_checks(ctx: Context) -> list[Check]:
    address, resolved = await address_check(ctx)
    if not resolved:
        return [address, skipped(HEALTHZ, f"not attempted: {ADDRESS} failed")]
    return [address, await healthz_check(ctx)]
