"""ACS checks: the credential authenticates, the JWKS is reachable, the clock is right.

The credential is tested with a harmless authenticated request: reading the properties
of a call that does not exist. ACS answers 404 (ResourceNotFound) to a request it
authenticated and 401/403 to one it did not, so 404 is the good answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.exceptions import AzureError, HttpResponseError
from jwt import PyJWKSet
from jwt.exceptions import PyJWKSetError

from voicebridge.acs.client import make_client, parse_connection_string
from voicebridge.doctor import net
from voicebridge.doctor.context import Context
from voicebridge.doctor.hints import Hint
from voicebridge.doctor.report import Check, failed, passed, skipped, with_cause
from voicebridge.errors import ConfigError

AUTH, JWKS, CLOCK = "acs.auth", "acs.jwks", "acs.clock"
NAMES = (AUTH, JWKS, CLOCK)
PROBE_CALL_ID = "voicebridge-doctor-probe"
KEYS = "az communication list-key --name <acs> --resource-group <rg>"


def acs_status_hint(status: int, *, managed_identity: bool, message: str = "") -> Hint:
    """The likely cause and fix of ACS answering ``status`` to the probe request."""
    if status == 401 and not managed_identity:
        clock = "skew" in message.lower() or "x-ms-date" in message.lower()
        return Hint(
            "this machine's clock is off by more than ACS allows for signed requests"
            if clock
            else "ACS refused the request signature: the access key in ACS_CONNECTION_STRING "
            "is not a current key of this resource (rotated, or from another resource)",
            "sync the clock (see acs.clock)"
            if clock
            else f"copy the resource's connection string: `{KEYS}` -> primaryConnectionString "
            "into ACS_CONNECTION_STRING",
        )
    if status in (401, 403) and managed_identity:
        return Hint(
            "the managed identity's token was refused or the identity has no role on the "
            "ACS resource",
            "grant the app's identity a role on the ACS resource that allows Call "
            "Automation (e.g. `az role assignment create --assignee <principal-id> --role "
            "Contributor --scope <acs-resource-id>`), or use ACS_CONNECTION_STRING",
        )
    if status == 403:
        return Hint(
            "ACS authenticated the request but denies it (a disabled resource?)",
            "check the ACS resource in the portal",
        )
    return Hint(
        f"an unexpected HTTP {status} from ACS",
        "check ACS_CONNECTION_STRING / ACS_ENDPOINT point at the ACS resource itself",
    )


def _endpoint(ctx: Context) -> tuple[str, bool]:
    """The ACS endpoint and whether managed identity is used (raises ``ConfigError``)."""
    s = ctx.settings
    if s.acs_connection_string is not None:
        endpoint, _ = parse_connection_string(s.acs_connection_string.get_secret_value())
        return endpoint, False
    return s.acs_endpoint or "", True


async def _probe(ctx: Context, credential: Any) -> None:
    async with make_client(ctx.settings, credential) as client:
        call = client.get_call_connection(PROBE_CALL_ID)
        await asyncio.wait_for(call.get_call_properties(), ctx.options.timeout_s)


async def auth_check(ctx: Context) -> tuple[Check, net.DateSample | None]:
    try:
        endpoint, managed = _endpoint(ctx)
    except ConfigError as exc:
        fix = "set ACS_CONNECTION_STRING=endpoint=https://<acs>.communication.azure.com/;accesskey=..."
        return failed(AUTH, str(exc), fix), None
    url = urlsplit(endpoint)
    host = url.netloc
    try:  # the client retries a failed name lookup until the timeout: look it up first
        await net.resolve(url.hostname or "", net.port_of(url), ctx.options.timeout_s)
    except (OSError, TimeoutError) as exc:
        seen = f"{host}: {net.describe(exc)}"
        fix = "check the endpoint= of ACS_CONNECTION_STRING (or ACS_ENDPOINT) and DNS"
        return failed(AUTH, with_cause(seen, "a wrong ACS host name or DNS"), fix), None
    how = "managed identity" if managed else "access key"
    credential: Any = None
    if managed:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    sent = time.time()
    try:
        await _probe(ctx, credential)
    except HttpResponseError as exc:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        date = net.date_sample(host, headers.get("Date"), sent, time.time())
        return _judge(exc, host, how, managed), date
    except TimeoutError:
        seen = f"{host} did not answer within {ctx.options.timeout_s:g} s"
        fix = "check outbound 443 to the ACS endpoint and the host in the connection string"
        return failed(AUTH, with_cause(seen, "egress blocked or a wrong host"), fix), None
    except AzureError as exc:  # no response: connection or credential problems
        seen = f"no answer from {host}: {net.describe(exc)}"
        cause = "the credential could not be used, or the host cannot be reached"
        fix = "check ACS_CONNECTION_STRING's endpoint= (or ACS_ENDPOINT) and outbound 443"
        return failed(AUTH, with_cause(seen, cause), fix), None
    finally:
        if credential is not None:
            with contextlib.suppress(Exception):
                await credential.close()
    return passed(AUTH, f"{host} ({how}): authenticated (a call has the probe's id)"), None


def _judge(exc: HttpResponseError, host: str, how: str, managed: bool) -> Check:
    status = exc.status_code
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = str(getattr(error, "message", None) or exc.message or "").splitlines()[0][:200]
    if status == 404:
        return passed(
            AUTH,
            f"{host} ({how}): authenticated (HTTP 404, code {code or '?'}, for a made-up "
            "call id, as expected)",
        )
    if status is None:
        seen = f"{host} ({how}): no token: {message}"
        cause = "DefaultAzureCredential found no usable identity"
        fix = "locally `az login`; in Azure, enable the Container App's managed identity "
        fix += "(user-assigned: AZURE_CLIENT_ID)"
        return failed(AUTH, with_cause(seen, cause), fix)
    hint = acs_status_hint(status, managed_identity=managed, message=message)
    seen = f"HTTP {status} from {host} ({how}): {message}"
    return failed(AUTH, with_cause(seen, hint.cause), hint.fix)


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[Any, net.DateSample | None]:
    sent = time.time()
    async with http.get(url) as resp:
        resp.raise_for_status()
        data = await resp.json(content_type=None)
        host = urlsplit(url).netloc
        return data, net.date_sample(host, resp.headers.get("Date"), sent, time.time())


async def jwks_check(ctx: Context) -> tuple[Check, net.DateSample | None]:
    s = ctx.settings
    if not s.acs_jwt_validation:
        why = "ACS_JWT_VALIDATION=false: ACS tokens are not validated (development only)"
        return skipped(JWKS, why, "set ACS_JWT_VALIDATION=true and ACS_RESOURCE_ID"), None
    url = s.acs_jwks_url or s.acs_openid_config_url
    fix = (
        "allow outbound 443 to acscallautomation.communication.azure.com; check "
        "ACS_OPENID_CONFIG_URL / ACS_JWKS_URL (normally unset: the defaults are right)"
    )
    date: net.DateSample | None = None
    timeout = aiohttp.ClientTimeout(total=ctx.options.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if s.acs_jwks_url is None:
                config, date = await _get_json(http, s.acs_openid_config_url)
                issuer = config.get("issuer") if isinstance(config, dict) else None
                if issuer != s.acs_jwt_issuer:
                    seen = f"the OpenID configuration names issuer {issuer!r}"
                    cause = f"ACS_JWT_ISSUER is {s.acs_jwt_issuer!r}: every ACS token fails"
                    return failed(JWKS, with_cause(seen, cause), "unset ACS_JWT_ISSUER"), date
                found = config.get("jwks_uri") if isinstance(config, dict) else None
                if not isinstance(found, str):
                    raise ValueError("the OpenID configuration has no jwks_uri")
                url = found
            data, jwks_date = await _get_json(http, url)
            keys = PyJWKSet.from_dict(data).keys
    except aiohttp.ClientResponseError as exc:
        seen = f"HTTP {exc.status} from {urlsplit(url).netloc}"
        return failed(JWKS, with_cause(seen, "a wrong URL"), fix), date
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        seen = f"{urlsplit(url).netloc}: {net.describe(exc)}"
        return failed(JWKS, with_cause(seen, "egress blocked or DNS"), fix), date
    except (ValueError, PyJWKSetError) as exc:
        seen = f"{urlsplit(url).netloc} served no usable key set ({exc})"
        return failed(JWKS, with_cause(seen, "a wrong URL"), fix), date
    usable = sum(1 for k in keys if k.key_id)
    return passed(JWKS, f"{usable} signing key(s) from {urlsplit(url).netloc}"), jwks_date or date


def clock_check(sample: net.DateSample | None, leeway_s: float) -> Check:
    """Local time against an HTTP ``Date`` (whole seconds, taken halfway through the request):
    fails when the skew exceeds ``JWT_LEEWAY_S`` even at the edge of what can be measured."""
    if sample is None:
        return skipped(CLOCK, "no ACS answer with a Date header to compare with")
    local = (sample.sent + sample.received) / 2
    skew = local - (sample.server + 0.5)
    uncertainty = 0.5 + (sample.received - sample.sent) / 2
    side = "ahead of" if skew > 0 else "behind"
    seen = (
        f"this machine's clock is {abs(skew):.1f} s {side} {sample.source} "
        f"(±{uncertainty:.1f} s; JWT_LEEWAY_S={leeway_s:g})"
    )
    if abs(skew) - uncertainty <= leeway_s:
        return passed(CLOCK, seen)
    cause = "ACS tokens look not-yet-valid or expired to voicebridge, so callbacks get 401"
    fix = (
        "sync the clock with NTP (Linux `timedatectl set-ntp true`, Windows `w32tm /resync`); "
        "a container uses its host's clock; raising JWT_LEEWAY_S only hides it"
    )
    return failed(CLOCK, with_cause(seen, cause), fix)


async def acs_checks(ctx: Context) -> list[Check]:
    (auth, auth_date), (jwks, jwks_date) = await asyncio.gather(auth_check(ctx), jwks_check(ctx))
    return [auth, jwks, clock_check(jwks_date or auth_date, ctx.settings.jwt_leeway_s)]
