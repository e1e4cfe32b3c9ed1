"""``voicebridge doctor``: check, before the first real call, that the resources named by
the environment work together — the settings, Voice Live (DNS/TLS, auth, handshake,
session.update, agent, transcription, optionally one text turn), ACS (credentials, JWKS,
clock), PUBLIC_BASE_URL, and with ``--azure`` the Event Grid subscription. With a
``PROFILES_FILE``, the Voice Live checks also run for every profile whose configuration
differs (:mod:`voicebridge.doctor.profiles`).

One line per check, ✓ / ✗ / skipped; a ✗ names the likely cause and the fix
(docs/first-call.md lists them all). ``--json`` prints
``{"checks": [{"name", "status", "detail", "fix"}]}``. The exit status is 0 only when no
check failed. No secret is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from voicebridge.config import Settings, load_settings
from voicebridge.doctor import acs, eventgrid, public, voicelive
from voicebridge.doctor.context import ARM_ENDPOINT, Context, Options
from voicebridge.doctor.profiles import profile_checks
from voicebridge.doctor.report import (
    Check,
    exit_status,
    failed,
    passed,
    redact,
    render_text,
    skipped,
    to_json,
)
from voicebridge.errors import ConfigError
from voicebridge.profiles import profiles_of

SETTINGS = "settings"
#: Every check, in report order.
CHECK_NAMES = (SETTINGS, *voicelive.NAMES, *acs.NAMES, *public.NAMES, *eventgrid.NAMES)

__all__ = ["CHECK_NAMES", "Check", "Options", "configure", "diagnose", "run"]


def _settings_summary(s: Settings) -> str:
    if s.mode == "agent":
        what = f"agent mode (agent {s.agent_name}, project {s.project_name})"
    else:
        what = f"model mode ({s.voicelive_model})"
    vl_auth = (
        "API key"
        if s.voicelive_api_key is not None
        else "VOICELIVE_BEARER_TOKEN"
        if s.voicelive_bearer_token is not None
        else "DefaultAzureCredential"
    )
    acs_auth = "connection string" if s.acs_connection_string is not None else "managed identity"
    return f"valid: {what}, Voice Live by {vl_auth}, ACS by {acs_auth}"


async def diagnose(
    options: Options,
    *,
    overrides: Mapping[str, Any] | None = None,
    arm_credential: Any = None,
) -> list[Check]:
    """Run every check and return them in :data:`CHECK_NAMES` order, secrets redacted.

    ``overrides`` are passed to :func:`~voicebridge.config.load_settings` (tests);
    ``arm_credential`` replaces DefaultAzureCredential for Resource Manager (tests)."""
    try:
        settings = load_settings(**(overrides or {}))
    except ConfigError as exc:
        fix = "correct the variable the line names (.env.example describes each one)"
        why = "needs valid settings"
        return [failed(SETTINGS, str(exc), fix)] + [skipped(n, why) for n in CHECK_NAMES[1:]]
    profiles = profiles_of(settings)
    # The Voice Live checks run with the default profile's settings: what a call to an
    # unknown number gets (the environment, unless PROFILES_FILE's "default" changes it).
    ctx = Context(settings, options, arm_credential=arm_credential)
    vl_ctx = Context(profiles.default.settings, options) if profiles.source else ctx
    contexts = [ctx, vl_ctx]
    groups = await asyncio.gather(
        voicelive.voicelive_checks(vl_ctx),
        acs.acs_checks(ctx),
        public.public_checks(ctx),
        eventgrid.eventgrid_check(ctx),
    )
    vl_checks, acs_checks, public_checks, eventgrid_check = groups
    checks = [
        passed(SETTINGS, _settings_summary(settings)),
        *vl_checks,
        *acs_checks,
        *public_checks,
        eventgrid_check,
    ]
    if profiles.source:  # PROFILES_FILE: each profile's own Voice Live configuration
        checks += await profile_checks(profiles, options, contexts)
    return redact(checks, set().union(*(c.secrets for c in contexts)))


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``voicebridge doctor``."""
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--talk",
        action="store_true",
        help="also make one short text-only response round trip (costs a few tokens)",
    )
    parser.add_argument(
        "--azure",
        action="store_true",
        help="also check the Event Grid IncomingCall subscription (needs management "
        "credentials, e.g. az login)",
    )
    parser.add_argument(
        "--acs-arm-id",
        default=None,
        metavar="ID",
        help="/subscriptions/.../Microsoft.Communication/communicationServices/NAME "
        "(default: $ACS_ARM_RESOURCE_ID)",
    )
    parser.add_argument(
        "--arm-endpoint",
        default=ARM_ENDPOINT,
        metavar="URL",
        help=f"Azure Resource Manager (default {ARM_ENDPOINT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="timeout of each DNS/TLS/HTTP step and token request (default 10); the Voice "
        "Live handshake and session.update use VOICELIVE_CONNECT_TIMEOUT_S, as serve does",
    )


def run(args: argparse.Namespace) -> int:
    """Run the checks, print them, return 0 only if none failed."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "aiohttp", "voicebridge"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    if args.timeout <= 0:
        print("voicebridge doctor: --timeout must be positive")
        return 2
    options = Options(
        talk=args.talk,
        azure=args.azure,
        acs_arm_id=args.acs_arm_id,
        arm_endpoint=args.arm_endpoint,
        timeout_s=args.timeout,
    )
    checks = asyncio.run(diagnose(options))
    print(to_json(checks) if args.json else render_text(checks))
    return exit_status(checks)
