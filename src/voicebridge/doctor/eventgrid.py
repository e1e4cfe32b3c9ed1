"""``--azure``: an Event Grid subscription delivers ``Microsoft.Communication.IncomingCall``
from the ACS resource to ``{PUBLIC_BASE_URL}/api/incoming-call``.

Plain REST against Azure Resource Manager (api-version 2022-06-15, as infra/ deploys):
the event subscriptions of the ACS resource itself
(``{acs id}/providers/Microsoft.EventGrid/eventSubscriptions``) and, if none delivers
IncomingCall, those of the system topics whose source is the ACS resource (how
infra/modules/eventgrid.bicep creates it). Reads show ``endpointBaseUrl``, the webhook URL
without its query string; ``getFullUrl`` is not used, as it returns the shared secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voicebridge.doctor import net
from voicebridge.doctor.context import Context
from voicebridge.doctor.report import Check, failed, passed, skipped, with_cause

NAME = "eventgrid.incoming_call"
NAMES = (NAME,)
API_VERSION = "2022-06-15"
ARM_SCOPE = "https://management.azure.com/.default"
EVENT_TYPE = "Microsoft.Communication.IncomingCall"
WEBHOOK_PATH = "/api/incoming-call"
ARM_ID_ENV = "ACS_ARM_RESOURCE_ID"
_ARM_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/[^/]+/providers/"
    r"Microsoft\.Communication/communicationServices/[^/]+$",
    re.IGNORECASE,
)
MAX_PAGES = 20
CREATE = (
    "az eventgrid system-topic event-subscription create --name incoming-call "
    "--resource-group <rg> --system-topic-name <topic> --endpoint "
    "{url} --included-event-types " + EVENT_TYPE
)


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status


async def _list(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every item of an ARM list, following ``nextLink``."""
    items: list[dict[str, Any]] = []
    next_url: str | None = url
    for _ in range(MAX_PAGES):
        if not next_url:
            break
        async with http.get(next_url) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                error = data.get("error", {}) if isinstance(data, dict) else {}
                code, message = str(error.get("code", "")), str(error.get("message", ""))
                raise ArmError(resp.status, code, message.splitlines()[0][:200] if message else "")
        items += [v for v in data.get("value", []) if isinstance(v, dict)]
        next_url = data.get("nextLink")
    return items


async def subscriptions(http: aiohttp.ClientSession, arm: str, acs_id: str) -> list[dict[str, Any]]:
    """Event subscriptions of the ACS resource, then (if none is for IncomingCall) those of
    its system topics."""
    q = f"api-version={API_VERSION}"
    subs = await _list(http, f"{arm}{acs_id}/providers/Microsoft.EventGrid/eventSubscriptions?{q}")
    if any(_delivers_incoming_call(s) for s in subs):
        return subs
    sub_id = acs_id.split("/")[2]
    topics = await _list(
        http, f"{arm}/subscriptions/{sub_id}/providers/Microsoft.EventGrid/systemTopics?{q}"
    )
    for topic in topics:
        source = str((topic.get("properties") or {}).get("source", ""))
        if source.lower() == acs_id.lower() and isinstance(topic.get("id"), str):
            subs += await _list(http, f"{arm}{topic['id']}/eventSubscriptions?{q}")
    return subs


def _delivers_incoming_call(sub: dict[str, Any]) -> bool:
    types = ((sub.get("properties") or {}).get("filter") or {}).get("includedEventTypes")
    return not types or any(str(t).lower() == EVENT_TYPE.lower() for t in types)


def _endpoint(sub: dict[str, Any]) -> tuple[str, str]:
    destination = (sub.get("properties") or {}).get("destination") or {}
    props = destination.get("properties") or {}
    url = props.get("endpointBaseUrl") or props.get("endpointUrl") or ""
    return str(destination.get("endpointType", "")), str(url)


def evaluate_subscriptions(subs: Sequence[dict[str, Any]], public_base_url: str) -> Check:
    """Pass when one subscription for IncomingCall is a WebHook to PUBLIC_BASE_URL's
    ``/api/incoming-call`` and provisioned; else fail naming the nearest miss."""
    base = urlsplit(public_base_url)
    want = f"{base.netloc}{base.path.rstrip('/')}{WEBHOOK_PATH}"
    incoming = [s for s in subs if _delivers_incoming_call(s)]
    fix_create = CREATE.format(url=f"https://{want}")
    if not incoming:
        seen = f"no event subscription of the ACS resource delivers {EVENT_TYPE}"
        cause = "nothing tells voicebridge about calls: they ring and nobody answers"
        fix = f"deploy infra/ (modules/eventgrid.bicep), or `{fix_create}`"
        return failed(NAME, with_cause(seen, cause), fix)
    problems: list[str] = []
    for sub in incoming:
        kind, url = _endpoint(sub)
        state = str((sub.get("properties") or {}).get("provisioningState", ""))
        where = urlsplit(url)
        got = f"{where.netloc}{where.path.rstrip('/')}"
        name = sub.get("name", "?")
        if kind.lower() == "webhook" and got.lower() == want.lower() and state == "Succeeded":
            return passed(NAME, f"subscription {name!r} delivers {EVENT_TYPE} to {got}")
        if kind.lower() != "webhook":
            problems.append(f"{name!r} delivers to a {kind or '?'} endpoint, not a WebHook")
        elif got.lower() != want.lower():
            problems.append(f"{name!r} delivers to {got or '?'}, not {want}")
        else:
            problems.append(f"{name!r} is in provisioning state {state or '?'}")
    cause = (
        "the subscription was made for another deployment or path, or Event Grid's "
        "validation handshake with the webhook failed when it was created"
    )
    fix = (
        f"point it at https://{want} (`az eventgrid system-topic event-subscription update "
        "... --endpoint <url>`); a failed one: make /api/incoming-call reachable (the "
        "public_url checks) and create it again"
    )
    return failed(NAME, with_cause("; ".join(problems), cause), fix)


async def _token(ctx: Context) -> str | None:
    credential = ctx.arm_credential
    own = credential is None
    if own:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
    try:
        token = await asyncio.wait_for(credential.get_token(ARM_SCOPE), ctx.options.timeout_s)
    except Exception:  # any azure-identity failure means "no management credentials"
        return None
    finally:
        if own:
            with contextlib.suppress(Exception):
                await credential.close()
    ctx.secrets.add(token.token)
    return str(token.token)


async def eventgrid_check(ctx: Context) -> Check:
    opts = ctx.options
    if not opts.azure:
        why = (
            "not requested: pass --azure (with --acs-arm-id or ACS_ARM_RESOURCE_ID, and "
            "management credentials, e.g. `az login`) to check the IncomingCall subscription"
        )
        return skipped(NAME, why)
    acs_id = (opts.acs_arm_id or os.environ.get(ARM_ID_ENV) or "").rstrip("/")
    if not _ARM_ID.match(acs_id):
        seen = f"--azure needs the ACS resource's ARM id, got {acs_id or 'nothing'!r}"
        fix = (
            "pass --acs-arm-id /subscriptions/<sub>/resourceGroups/<rg>/providers/"
            "Microsoft.Communication/communicationServices/<name> (or set ACS_ARM_RESOURCE_ID)"
        )
        return failed(NAME, with_cause(seen, "the id is missing or malformed"), fix)
    token = await _token(ctx)
    if token is None:
        why = "no management credentials (DefaultAzureCredential found none)"
        return skipped(NAME, why, "`az login`, then run again with --azure")
    arm = opts.arm_endpoint.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            subs = await subscriptions(http, arm, acs_id)
    except ArmError as exc:
        cause = (
            "the signed-in account may not read the ACS resource's event subscriptions"
            if exc.status in (401, 403)
            else "the ACS resource id is wrong"
            if exc.status == 404
            else "Resource Manager refused the request"
        )
        fix = "use an account with Reader on the ACS resource, and check --acs-arm-id"
        return failed(NAME, with_cause(f"Resource Manager: {exc}", cause), fix)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        seen = f"Resource Manager at {urlsplit(arm).netloc}: {net.describe(exc)}"
        cause = "no route to Resource Manager (egress, proxy) or a wrong --arm-endpoint"
        return failed(NAME, with_cause(seen, cause), "check --arm-endpoint and outbound 443")
    return evaluate_subscriptions(subs, ctx.settings.public_base_url)
