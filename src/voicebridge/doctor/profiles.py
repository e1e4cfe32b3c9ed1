"""Per-profile checks (``PROFILES_FILE``, :mod:`voicebridge.profiles`).

The file itself was validated when the settings loaded (a bad profile fails the
``settings`` check with its one line). Here: a ``profiles`` line naming each profile and
its numbers, then, for every profile whose Voice Live configuration differs from those
already checked (another endpoint, credential, agent or model, or session), the Voice Live
checks of :mod:`voicebridge.doctor.voicelive` run with that profile's settings, each named
``profile <name>: <check>``. Profiles that share a configuration are checked once.
"""

from __future__ import annotations

import hashlib
import json

from voicebridge.config import Settings
from voicebridge.doctor import voicelive
from voicebridge.doctor.context import Context, Options
from voicebridge.doctor.report import Check, passed
from voicebridge.profiles import Profiles, credential_key
from voicebridge.voicelive.session import connect_kwargs, session_config

PROFILES = "profiles"


def signature(s: Settings) -> str:
    """What makes two profiles' Voice Live checks the same: connection, credential and
    session (the credential by a hash, never its value)."""
    kind, secret = credential_key(s)
    data = {
        "connect": connect_kwargs(s),
        "credential": [kind, hashlib.sha256(secret.encode()).hexdigest()],
        "session": session_config(s),
    }
    return json.dumps(data, sort_keys=True, default=str)


def summary(profiles: Profiles) -> Check:
    parts = [f"{p.name} ({', '.join(p.numbers) or 'no numbers'})" for p in profiles]
    return passed(PROFILES, f"{len(profiles)} from {profiles.source}: {'; '.join(parts)}")


async def profile_checks(
    profiles: Profiles, options: Options, contexts: list[Context]
) -> list[Check]:
    """The ``profiles`` line and the Voice Live checks of each profile not yet covered
    by one with the same configuration (the default profile's ran as the main checks).
    Each profile's :class:`Context` is added to ``contexts`` (its secrets are redacted)."""
    checked = {signature(profiles.default.settings): profiles.default.name}
    out = [summary(profiles)]
    for profile in profiles:
        if profile is profiles.default:
            continue
        key = signature(profile.settings)
        same = checked.get(key)
        if same is not None:
            out.append(
                passed(
                    f"profile {profile.name}: voicelive",
                    f"the same Voice Live configuration as profile {same}: checked there",
                )
            )
            continue
        checked[key] = profile.name
        ctx = Context(profile.settings, options)
        contexts.append(ctx)
        for check in await voicelive.voicelive_checks(ctx):
            out.append(
                Check(
                    f"profile {profile.name}: {check.name}", check.status, check.detail, check.fix
                )
            )
    return out
