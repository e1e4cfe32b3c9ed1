"""Voice Live checks: DNS and TLS, the credential, the WebSocket handshake, then the
session (:mod:`voicebridge.doctor.vlsession`).

The connection is opened exactly as ``serve`` opens it: the real SDK's ``connect()`` with
:func:`~voicebridge.voicelive.session.connect_kwargs` and the credential of
:func:`~voicebridge.voicelive.session.make_credential`, the handshake bounded by
``VOICELIVE_CONNECT_TIMEOUT_S``, and :func:`~voicebridge.voicelive.session.session_config`
as the ``session.update``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.credentials import AzureKeyCredential

from voicebridge.doctor import hints, net, vlsession
from voicebridge.doctor.context import Context
from voicebridge.doctor.report import Check, failed, passed, skipped, with_cause
from voicebridge.security import unverified_claims
from voicebridge.voicelive.session import (
    OpenSession,
    StaticTokenCredential,
    handshake,
    make_credential,
    session_config,
)

DNS_TLS, AUTH, HANDSHAKE = "voicelive.dns_tls", "voicelive.auth", "voicelive.handshake"
NAMES = (
    DNS_TLS,
    AUTH,
    HANDSHAKE,
    vlsession.AGENT,
    vlsession.AGENT_CONFIG,
    vlsession.UPDATE,
    vlsession.TRANSCRIPTION,
    vlsession.TALK,
)
BODY_CHARS = 200


@dataclass(frozen=True)
class Auth:
    kind: str  # "api-key" or "bearer"
    credential: Any  # for connect()
    headers: dict[str, str]  # the same credential as HTTP headers (to read a refusal)


async def dns_tls_check(ctx: Context) -> Check:
    url = urlsplit(ctx.settings.voicelive_endpoint)
    host, port, timeout = url.hostname or "", net.port_of(url), ctx.options.timeout_s
    fix = (
        "check the resource name in VOICELIVE_ENDPOINT; for a private endpoint this machine "
        "must use its private DNS zone; allow outbound 443; behind a TLS-inspecting proxy, "
        "trust its CA (SSL_CERT_FILE)"
    )
    try:
        addresses = await net.resolve(host, port, timeout)
    except (OSError, TimeoutError) as exc:
        seen = f"{host}: {net.describe(exc)}"
        return failed(DNS_TLS, with_cause(seen, "a wrong host name or DNS"), fix)
    where = f"{host} resolves to {', '.join(addresses[:3])}"
    try:
        tls = await net.open_probe(host, port, timeout, tls=net.secure(url.scheme))
    except (OSError, TimeoutError) as exc:
        seen = f"{where}, but port {port}: {net.describe(exc)}"
        return failed(DNS_TLS, with_cause(seen, "egress blocked, or TLS intercepted"), fix)
    if tls is not None:
        return passed(DNS_TLS, f"{where}; {tls.version}, certificate {tls.subject}")
    if net.is_loopback(host):
        return passed(DNS_TLS, f"{where}; plain {url.scheme} on loopback (the local emulator)")
    seen = f"{url.scheme}:// to {host}: no TLS"
    return failed(
        DNS_TLS,
        with_cause(seen, "Voice Live is only served over https"),
        "set VOICELIVE_ENDPOINT=https://<resource>.services.ai.azure.com",
    )


async def auth_check(ctx: Context) -> tuple[Check, Auth | None]:
    """The credential ``serve`` would use; a token is fetched once, here, and checked."""
    s = ctx.settings
    credential = make_credential(s)
    if isinstance(credential, AzureKeyCredential):
        ctx.secrets.add(credential.key)
        auth = Auth("api-key", credential, {"api-key": credential.key})
        return passed(AUTH, "API key (api-key header)"), auth
    source = "VOICELIVE_BEARER_TOKEN" if s.voicelive_bearer_token else "DefaultAzureCredential"
    try:
        token = await asyncio.wait_for(
            credential.get_token(hints.VOICELIVE_SCOPE), ctx.options.timeout_s
        )
    except TimeoutError:
        hint = hints.TOKEN_TIMEOUT_HINT
        seen = f"{source} gave no token within {ctx.options.timeout_s:g} s"
        return failed(AUTH, with_cause(seen, hint.cause), hint.fix), None
    except Exception as exc:  # azure-identity raises many kinds; all mean "no token"
        hint = hints.NO_CREDENTIAL_HINT
        reason = hints.credential_failure(str(exc)) if str(exc) else type(exc).__name__
        seen = f"{source} could not get a token: {reason[:400]}"
        return failed(AUTH, with_cause(seen, hint.cause), hint.fix), None
    finally:
        with contextlib.suppress(Exception):
            await credential.close()
    ctx.secrets.add(token.token)
    headers = {"Authorization": f"Bearer {token.token}"}
    auth = Auth("bearer", StaticTokenCredential(token.token), headers)
    claims = unverified_claims(token.token)
    if claims is None:
        return passed(AUTH, f"Entra token from {source} (opaque: audience not checked)"), auth
    problem = hints.token_problem(claims)
    if problem is not None:
        seen = f"{source} gave a token for audience {claims.get('aud')!r}"
        return failed(AUTH, with_cause(seen, problem.cause), problem.fix), auth
    minutes = (float(claims.get("exp", 0)) - time.time()) / 60
    detail = f"Entra token from {source} for {claims.get('aud')}, valid for {minutes:.0f} min"
    return passed(AUTH, detail), auth


async def _refusal_body(manager: Any, auth: Auth, timeout_s: float) -> str:
    """What the service says when it refuses the upgrade (the SDK keeps only the status):
    one more upgrade request with the same URL and credential, its body read. Best effort."""
    prepare = getattr(manager, "_prepare_url", None)
    if prepare is None:
        return ""
    headers = {
        **auth.headers,
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
    }
    try:
        url = net.http_url(str(prepare()))
        client_timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as http,
            http.get(url, headers=headers, allow_redirects=False) as resp,
        ):
            if resp.status < 400:
                return ""
            body = await resp.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return ""
    return " ".join(body.split())[:BODY_CHARS]


async def _refused(ctx: Context, auth: Auth, manager: Any, exc: BaseException) -> Check:
    s = ctx.settings
    host = s.voicelive_host
    cause = exc.__cause__ or exc
    status = getattr(cause, "status", None)
    if not isinstance(status, int):
        hint = hints.connect_error_hint(host)
        seen = f"cannot connect to {host}: {net.describe(cause)}"
        return failed(HANDSHAKE, with_cause(seen, hint.cause), hint.fix)
    body = await _refusal_body(manager, auth, ctx.options.timeout_s)
    path = urlsplit(s.voicelive_endpoint).path
    hint = hints.voicelive_http_hint(status, auth=auth.kind, endpoint_path=path, body=body)
    seen = f"HTTP {status} from {host} for the WebSocket upgrade ({auth.kind})"
    if body:
        seen += f"; the service says: {body!r}"
    return failed(HANDSHAKE, with_cause(seen, hint.cause), hint.fix)


async def handshake_check(ctx: Context, auth: Auth) -> tuple[Check, OpenSession | None]:
    s = ctx.settings
    timeout = s.voicelive_connect_timeout_s
    manager, task, started = await handshake(
        s, auth.credential, request_id=f"voicebridge-doctor-{uuid.uuid4()}", timeout_s=timeout
    )
    if task is None:
        hint = hints.VOICELIVE_TIMEOUT_HINT
        seen = (
            f"no answer to the WebSocket upgrade from {s.voicelive_host} within {timeout:g} s "
            "(VOICELIVE_CONNECT_TIMEOUT_S)"
        )
        return failed(HANDSHAKE, with_cause(seen, hint.cause), hint.fix), None
    try:
        conn = task.result()
    except Exception as exc:  # the SDK's ConnectionError, its cause the aiohttp error
        return await _refused(ctx, auth, manager, exc), None
    ms = (time.perf_counter() - started) * 1000.0
    what = f"agent {s.agent_name}" if s.mode == "agent" else f"model {s.voicelive_model}"
    detail = f"WebSocket open to {s.voicelive_host} in {ms:.0f} ms ({auth.kind}, {what})"
    return passed(HANDSHAKE, detail), OpenSession(conn, manager, ms)


async def voicelive_checks(ctx: Context) -> list[Check]:
    """Every Voice Live check, in order; those after a failure that stops them are skipped."""
    out = [await dns_tls_check(ctx)]
    auth_result, auth = await auth_check(ctx)
    out.append(auth_result)
    if out[0].status == "fail" or auth is None:
        first = DNS_TLS if out[0].status == "fail" else AUTH
        return out + [skipped(n, f"not attempted: {first} failed") for n in NAMES[2:]]
    shake, opened = await handshake_check(ctx, auth)
    out.append(shake)
    if opened is None:
        return out + [skipped(n, f"not attempted: {HANDSHAKE} failed") for n in NAMES[3:]]
    try:
        sent = session_config(ctx.settings)
        timeout = ctx.settings.voicelive_connect_timeout_s
        outcome = await vlsession.run_session(opened.connection, sent, timeout)
        out += vlsession.evaluate_session(outcome, ctx.settings, sent)
        if not ctx.options.talk:
            why = "off by default (it costs tokens): pass --talk for one text round trip"
            out.append(skipped(vlsession.TALK, why))
        elif outcome.updated is None:
            out.append(skipped(vlsession.TALK, "not attempted: no session.updated"))
        else:
            wait = max(timeout, ctx.options.timeout_s)
            out.append(await vlsession.talk(opened.connection, wait))
    finally:
        await opened.close()
    return out
