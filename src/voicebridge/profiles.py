"""Per-number profiles (``PROFILES_FILE``): the agent, voice, language, greeting, tools and
limits a call gets, chosen by the ACS phone number it is on (docs/outbound.md).

**The file** is YAML or JSON (``.json`` is read as strict JSON, anything else as YAML): a
mapping of profile name to profile::

    default:                          # optional: overrides of the environment's values
      numbers: ["+18005550100"]
    ventas:
      numbers: ["+18005550120"]
      VOICE_NAME: es-ES-ElviraNeural
      INSTRUCTIONS: Eres la línea de ventas de Contoso...
      TRANSCRIPTION_LANGUAGE: es-ES
      outbound:
        first_speaker: callee         # agent (greets when answered) or callee (waits)
        calling_hours: {timezone: Europe/Madrid, days: mon-fri, start: "09:00", end: "20:00"}
        max_concurrent: 5

**Rules.**

* The environment is the ``default`` profile and the base every profile overrides: a
  single-number deployment needs no file. ``PHONE_NUMBERS`` are the default profile's
  numbers unless the file's ``default`` sets ``numbers``.
* A profile has ``numbers`` (E.164; an ACS raw id's ``4:`` is dropped), ``outbound``
  (:class:`OutboundRules`) and any of the per-call settings of :data:`PROFILE_FIELDS`,
  each spelt as its environment variable (``VOICE_NAME``, or an alias such as
  ``AZURE_VOICELIVE_MODEL``) or as its field (``voice_name``), in any case. Lists and
  mappings are accepted where the variable is a list (``CALL_TOOLS``: a list;
  ``TRANSFER_TARGETS``, ``DTMF_ACTIONS``: a mapping).
* **The mode switch.** A profile that sets ``AGENT_NAME`` drops the inherited model-mode
  fields (:data:`MODEL_ONLY`: ``VOICELIVE_MODEL``, ``VOICELIVE_API_KEY``: an agent needs
  Entra ID); one that sets ``VOICELIVE_MODEL`` without ``AGENT_NAME`` drops the
  inherited agent fields (:data:`AGENT_ONLY`). A profile that sets
  ``VOICELIVE_ENDPOINT`` drops the inherited ``VOICELIVE_API_KEY`` too (a key belongs to
  one resource): it brings its own or uses Entra ID.
* **Secrets** (``VOICELIVE_API_KEY``, ``VOICELIVE_BEARER_TOKEN``) may be written
  ``env:NAME``: the value of environment variable ``NAME`` (a Key Vault reference in
  Azure), so the file itself holds none. An unset one stops start-up.
* Each profile's :class:`~voicebridge.config.Settings` is *validated* from the base's
  explicitly set values plus the profile's (every Settings rule applies: a model and
  transcription pairing Voice Live does not support, agent mode with a key, ...), so
  ``explicitly_set`` means the environment's set fields and the profile's keys.
  ``MAX_CALL_DURATION_S`` may not exceed the environment's (the per-call URL tokens and
  call records last that long).

Any problem stops start-up with one line, through :func:`~voicebridge.config.load_settings`:
``PROFILES_FILE: profile sales: TRANSCRIPTION_MODEL=whisper-1 is not supported with ...``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from voicebridge.config import Settings, describe_error, e164, env_name, parse_numbers
from voicebridge.errors import ConfigError

__all__ = [
    "AGENT_ONLY",
    "DEFAULT",
    "MODEL_ONLY",
    "PROFILE_FIELDS",
    "CallingHours",
    "OutboundRules",
    "Profile",
    "Profiles",
    "credential_key",
    "load_profiles",
    "profiles_of",
]

DEFAULT = "default"

#: The Settings a profile may set: what one call is (mode, agent or model, voice,
#: instructions, language, greeting, turn detection, tools and transfers, keypad,
#: silent caller, limits of one call, prices). Everything else (ACS, security, audio
#: rates, the service, the cluster) is the process's and comes from the environment.
PROFILE_FIELDS: tuple[str, ...] = (
    # Voice Live: where, how, which agent or model
    "voicelive_endpoint",
    "voicelive_api_key",
    "voicelive_bearer_token",
    "voicelive_model",
    "voicelive_api_version",
    "agent_name",
    "project_name",
    "agent_version",
    "foundry_resource_override",
    "agent_authentication_identity_client_id",
    # what the agent sounds like, says and hears
    "voice_name",
    "instructions",
    "transcription_model",
    "transcription_language",
    "interim_response",
    "greeting_mode",
    "greeting_text",
    "greeting_instructions",
    "vad_type",
    "vad_silence_ms",
    "noise_suppression",
    "echo_cancellation",
    # call control
    "call_tools",
    "transfer_targets",
    "transfer_announcement",
    "tool_filler_text",
    "tool_filler_after_s",
    "tool_timeout_s",
    "dtmf_inter_digit_timeout_s",
    "dtmf_max_digits",
    "dtmf_actions",
    "no_input_reprompt_s",
    "no_input_max_reprompts",
    "no_input_prompt",
    # limits of one call, and its price list
    "max_call_duration_s",
    "media_idle_timeout_s",
    "price_input_text_per_m",
    "price_input_audio_per_m",
    "price_input_cached_per_m",
    "price_output_text_per_m",
    "price_output_audio_per_m",
)
#: Inherited fields a profile in agent mode drops (unless it sets them itself).
MODEL_ONLY = ("voicelive_model", "voicelive_api_key")
#: Inherited fields a profile in model mode drops (unless it sets them itself).
AGENT_ONLY = (
    "agent_name",
    "project_name",
    "agent_version",
    "conversation_id",
    "foundry_resource_override",
    "agent_authentication_identity_client_id",
)
#: Fields whose value may be ``env:NAME``.
SECRET_FIELDS = ("voicelive_api_key", "voicelive_bearer_token")
_RESERVED = ("numbers", "outbound")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _key_index() -> dict[str, str]:
    """Every spelling of a Settings field (its name, every alias), lower case -> field."""
    index: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        index[name.lower()] = name
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    index[choice.lower()] = name
    return index


_KEYS = _key_index()


def _days(value: Any) -> tuple[str, ...]:
    """``mon-fri``, ``[mon, wed, fri]``, ``"sat,sun"`` -> the days, in week order."""
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple):
        raise ValueError("a list of days (mon..sun) or a range such as mon-fri")
    chosen: set[str] = set()
    for part in parts:
        first, _, last = str(part).strip().lower().partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"{str(part)!r} is not a day (mon..sun) or a range (mon-fri)")
        i, j = _DAYS.index(first), _DAYS.index(last or first)
        if j < i:
            raise ValueError(f"the range {part!r} runs backwards")
        chosen.update(_DAYS[i : j + 1])
    if not chosen:
        raise ValueError("at least one day")
    return tuple(d for d in _DAYS if d in chosen)


class CallingHours(BaseModel):
    """When a profile may place calls, in the callee-facing time zone: on ``days``,
    from ``start`` (inclusive) to ``end`` (exclusive), local time in ``timezone``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str
    days: tuple[str, ...] = _DAYS
    start: time
    end: time

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("days", mode="before")
    @classmethod
    def _parse_days(cls, value: Any) -> tuple[str, ...]:
        return _days(value)

    @model_validator(mode="after")
    def _window(self) -> CallingHours:
        if self.end <= self.start:
            raise ValueError("end must be later than start (no window across midnight)")
        return self

    def open_at(self, now: datetime) -> bool:
        """Whether a call may be placed at ``now`` (an aware datetime)."""
        local = now.astimezone(ZoneInfo(self.timezone))
        return _DAYS[local.weekday()] in self.days and self.start <= local.time() < self.end

    def describe(self) -> str:
        """``mon-fri 09:00-18:00 America/New_York``."""
        return f"{_describe_days(self.days)} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"

    def local(self, now: datetime) -> str:
        """``now`` in this time zone, as ``Sat 10:12``."""
        return now.astimezone(ZoneInfo(self.timezone)).strftime("%a %H:%M")


def _describe_days(days: tuple[str, ...]) -> str:
    idx = [_DAYS.index(d) for d in days]
    if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 2:
        return f"{days[0]}-{days[-1]}"
    return ",".join(days)


class OutboundRules(BaseModel):
    """A profile's ``outbound`` block: who speaks first when the callee answers
    (``agent``: the profile's greeting; ``callee``: no greeting, the agent answers the
    callee's "hello"), when calls may be placed, and how many at once (per process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_speaker: Literal["agent", "callee"] = "agent"
    calling_hours: CallingHours | None = None
    max_concurrent: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class Profile:
    """One profile: its numbers, the Settings of its calls, its outbound rules, and the
    fields it set (on top of the environment's)."""

    name: str
    numbers: tuple[str, ...]
    settings: Settings
    outbound: OutboundRules
    keys: frozenset[str] = frozenset()

    @property
    def caller_id(self) -> str | None:
        """The number its outbound calls come from (its first), or None."""
        return self.numbers[0] if self.numbers else None

    def public(self) -> dict[str, Any]:
        """What ``GET /api/status`` shows of it: never a secret."""
        s = self.settings
        hours = self.outbound.calling_hours
        return {
            "name": self.name,
            "numbers": list(self.numbers),
            "mode": s.mode,
            "voicelive_endpoint_host": s.voicelive_host,
            "model": s.voicelive_model if s.mode == "model" else None,
            "agent": {"name": s.agent_name, "project": s.project_name, "version": s.agent_version}
            if s.mode == "agent"
            else None,
            "auth": credential_key(s)[0],
            "voice": s.voice_name,
            "language": s.transcription_language,
            "transcription": s.transcription,
            "greeting": s.greeting_mode,
            "tools": list(s.tools),
            "transfer_reasons": sorted(s.transfer_target_map),
            "outbound": {
                "first_speaker": self.outbound.first_speaker,
                "calling_hours": hours.describe() if hours is not None else None,
                "max_concurrent": self.outbound.max_concurrent,
            },
        }


class Profiles:
    """Every profile, by name and by number; :attr:`default` serves unknown numbers."""

    def __init__(self, profiles: list[Profile], source: str | None = None) -> None:
        self.by_name = {p.name: p for p in profiles}
        self.default = self.by_name[DEFAULT]
        self.by_number = {n: p for p in profiles for n in p.numbers}
        self.source = source

    def __iter__(self) -> Iterator[Profile]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str | None) -> Profile | None:
        return self.by_name.get(name or DEFAULT)

    def named(self, name: str | None) -> Profile:
        """The profile ``name``; the default one if it is unknown (a record from an
        older configuration)."""
        return self.by_name.get(name or DEFAULT) or self.default

    def for_number(self, raw_id: str | None) -> Profile:
        """The profile of the ACS number ``raw_id`` (``4:+1...`` or ``+1...``): the
        default one for an unknown number or a non-phone identity."""
        number = (raw_id or "").strip().removeprefix("4:")
        return self.by_number.get(number) or self.default


def credential_key(s: Settings) -> tuple[str, str]:
    """Which Voice Live credential ``s`` uses (``voicelive.session.make_credential``):
    ``("api-key", key)``, ``("bearer", token)`` or ``("entra-id", "")``; equal keys share
    one credential object."""
    if s.voicelive_api_key is not None:
        return "api-key", s.voicelive_api_key.get_secret_value()
    if s.voicelive_bearer_token is not None:
        return "bearer", s.voicelive_bearer_token.get_secret_value()
    return "entra-id", ""


class _FromValues(Settings):
    """Settings from the given values only: no environment, no ``.env`` (a profile is
    the base's values plus its own; an inherited field it dropped must stay unset)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def profiles_of(settings: Settings) -> Profiles:
    """The profiles of ``settings`` (loaded once, then kept on it); ``ConfigError`` if
    the profiles file is wrong."""
    cached = settings._profiles
    if cached is None:
        cached = settings._profiles = load_profiles(settings)
    assert isinstance(cached, Profiles)
    return cached


def load_profiles(base: Settings) -> Profiles:
    """Read and validate ``base.profiles_file`` (none: the default profile alone)."""
    default_numbers = tuple(parse_numbers(base.phone_numbers or ""))
    if not base.profiles_file:
        return Profiles([Profile(DEFAULT, default_numbers, base, OutboundRules())])
    raw = _read(base.profiles_file)
    profiles: list[Profile] = []
    owner: dict[str, str] = {}
    names = [DEFAULT] + [n for n in raw if n != DEFAULT]
    for name in names:
        entry = raw.get(name, {})
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"PROFILES_FILE: profile name {name!r}: use 1-40 letters, digits, - or _"
            )
        if not isinstance(entry, Mapping):
            raise ConfigError(f"PROFILES_FILE: profile {name}: expected a mapping of settings")
        profile = _build(base, name, entry, default_numbers if name == DEFAULT else ())
        for number in profile.numbers:
            if number in owner:
                raise ConfigError(
                    f"PROFILES_FILE: profile {name}: numbers: {number} is already in "
                    f"profile {owner[number]} (a number belongs to one profile)"
                )
            owner[number] = name
        profiles.append(profile)
    return Profiles(profiles, source=base.profiles_file)


def _read(path: str) -> dict[Any, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PROFILES_FILE: cannot read {path}: {exc}") from None
    try:
        if path.lower().endswith(".json"):
            data = json.loads(text)
        else:
            import yaml  # pyyaml: a dependency (pyproject) for this file

            data = yaml.safe_load(text)
    except ValueError as exc:
        raise ConfigError(f"PROFILES_FILE: {path} is not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError: its first line says where
        where = str(exc).splitlines()
        detail = " ".join(line.strip() for line in where[:3]) if where else type(exc).__name__
        raise ConfigError(f"PROFILES_FILE: {path} is not valid YAML: {detail}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"PROFILES_FILE: {path}: expected a mapping of profile name to profile, "
            f"got {type(data).__name__}"
        )
    return data


def _build(
    base: Settings, name: str, entry: Mapping[Any, Any], numbers: tuple[str, ...]
) -> Profile:
    """One profile from its entry (see the module docstring); ConfigError names it."""
    where = f"PROFILES_FILE: profile {name}"
    overrides: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in entry.items():
        lowered = str(key).lower()
        if lowered in _RESERVED:
            continue
        field = _KEYS.get(lowered)
        if field is None:
            raise ConfigError(f"{where}: {key}: unknown key (numbers, outbound, or a setting)")
        if field not in PROFILE_FIELDS:
            raise ConfigError(
                f"{where}: {key}: not a per-call setting: set {env_name(field)} in the "
                "environment (docs/outbound.md lists what a profile may set)"
            )
        if field in spelt:
            raise ConfigError(f"{where}: {key}: set twice (also as {spelt[field]})")
        spelt[field] = str(key)
        overrides[field] = _value(where, field, value)
    try:
        numbers = _numbers(entry, numbers)
        rules = OutboundRules.model_validate(_field(entry, "outbound") or {})
    except ValueError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None
    if not overrides:
        return Profile(name, numbers, base, rules)
    settings = _settings(base, overrides, where)
    if settings.max_call_duration_s > base.max_call_duration_s:
        raise ConfigError(
            f"{where}: MAX_CALL_DURATION_S: may not exceed the environment's "
            f"{base.max_call_duration_s:g} (per-call URLs and records last that long)"
        )
    return Profile(name, numbers, settings, rules, frozenset(overrides))


def _field(entry: Mapping[Any, Any], name: str) -> Any:
    return next((v for k, v in entry.items() if str(k).lower() == name), None)


def _numbers(entry: Mapping[Any, Any], inherited: tuple[str, ...]) -> tuple[str, ...]:
    value = _field(entry, "numbers")
    if value is None:
        return inherited
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        raise ValueError("numbers: a list of E.164 numbers")
    try:
        parsed = [e164(str(n)) for n in value if str(n).strip()]
    except ValueError as exc:
        raise ValueError(f"numbers: {exc}") from None
    duplicate = next((n for i, n in enumerate(parsed) if n in parsed[:i]), None)
    if duplicate is not None:
        raise ValueError(f"numbers: {duplicate} is listed twice")
    return tuple(parsed)


def _value(where: str, field: str, value: Any) -> Any:
    """A profile's value for ``field``: lists and mappings joined where the variable is
    a list; ``env:NAME`` secrets read from the environment."""
    if field == "call_tools" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if field in ("transfer_targets", "dtmf_actions") and isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if field in SECRET_FIELDS and isinstance(value, str) and value.startswith("env:"):
        var = value.removeprefix("env:").strip()
        secret = os.environ.get(var, "")
        if not secret.strip():
            raise ConfigError(
                f"{where}: {env_name(field)}: environment variable {var} (env:{var}) is not set"
            )
        return SecretStr(secret)
    return value


def _settings(base: Settings, overrides: dict[str, Any], where: str) -> Settings:
    """The profile's Settings: validated from the base's set values and ``overrides``."""
    values = {name: getattr(base, name) for name in base.model_fields_set}
    dropped: tuple[str, ...] = ()
    if "agent_name" in overrides:
        dropped = MODEL_ONLY
    elif "voicelive_model" in overrides:
        dropped = AGENT_ONLY
    if "voicelive_endpoint" in overrides:
        dropped += ("voicelive_api_key",)
    for name in dropped:
        if name not in overrides:
            values.pop(name, None)
    values.update(overrides)
    try:
        return _FromValues(**values)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe_error(exc)}") from None


def _first_error(exc: ValueError) -> str:
    """``outbound.calling_hours.timezone: 'Mars/Base' is not an IANA time zone``."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    err = exc.errors()[0]
    loc = ".".join(["outbound", *(str(part) for part in err.get("loc") or ())])
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif err.get("type") == "missing":
        msg = "required"
    return f"{loc}: {msg}"
