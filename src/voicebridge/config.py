"""Settings: the only place voicebridge reads the environment (and ``.env``).

Names follow the official Voice Live agent samples (``VOICELIVE_ENDPOINT``,
``AGENT_NAME``, ...) and also accept the ``AZURE_VOICELIVE_*`` spellings. Every
secret is a :class:`~pydantic.SecretStr`. :func:`load_settings` turns any problem
into one :class:`~voicebridge.errors.ConfigError` line naming the variable.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from voicebridge.core.voicelive import model_family, transcription_models
from voicebridge.errors import ConfigError
from voicebridge.security import LEGACY_KID, parse_url_keys

#: TRANSCRIPTION_MODEL values that turn caller transcription off.
TRANSCRIPTION_OFF = ("none", "off")
#: Interim response types, spelt as azure-ai-voicelive's InterimResponseConfigType.
INTERIM_RESPONSE_TYPES = ("static_interim_response", "llm_interim_response")
#: The issuer of ACS Call Automation's JWTs and where its signing keys are published
#: (the defaults of ACS_JWT_ISSUER and ACS_OPENID_CONFIG_URL; protocols.md §5).
ACS_JWT_ISSUER = "https://acscallautomation.communication.azure.com"
ACS_OPENID_CONFIG_URL = f"{ACS_JWT_ISSUER}/calling/.well-known/acsopenidconfiguration"
#: The switch for the debug routes (:mod:`voicebridge.routes.debug`): the load test's
#: leak check sets it in the bridge it starts.
DEBUG_ENDPOINTS_ENV = "DEBUG_ENDPOINTS"


#: Call-control tools the bridge implements (CALL_TOOLS).
CALL_TOOLS = ("end_call", "transfer_to_human")
#: What a DTMF action key may do (DTMF_ACTIONS).
DTMF_ACTION_NAMES = ("transfer", "end")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
#: PHONE_TOKEN: 16-256 URL-safe characters, so it fits a URL fragment and a WebSocket
#: subprotocol (RFC 6455: an HTTP token) unchanged.
_PHONE_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")
#: The shortest OUTBOUND_API_KEYS entry accepted.
MIN_API_KEY_CHARS = 16


def e164(value: str) -> str:
    """``value`` as an E.164 number (``+`` and 7-15 digits; an ACS raw id's ``4:``
    prefix is dropped), or ValueError."""
    number = value.strip().removeprefix("4:")
    if not _E164.match(number):
        raise ValueError(f"{value!r} is not an E.164 number (+ then 7 to 15 digits)")
    return number


def parse_numbers(value: str) -> list[str]:
    """PHONE_NUMBERS: E.164 numbers, comma-separated."""
    return [e164(n) for n in value.split(",") if n.strip()]


def parse_targets(value: str) -> dict[str, str]:
    """TRANSFER_TARGETS: ``reason=target`` pairs, comma-separated; a target is an E.164
    number or an ACS user id (``8:acs:...``)."""
    targets: dict[str, str] = {}
    for pair in value.split(","):
        if not pair.strip():
            continue
        reason, sep, target = pair.partition("=")
        reason, target = reason.strip().lower(), target.strip()
        if not sep or not reason or not target:
            raise ValueError(f"expected reason=target, got {pair.strip()!r}")
        if not (_E164.match(target) or target.startswith("8:acs:")):
            raise ValueError(
                f"transfer target for {reason!r} must be an E.164 number (+15551234567) "
                "or an ACS user id (8:acs:...)"
            )
        targets[reason] = target
    return targets


def parse_dtmf_actions(value: str) -> dict[str, str]:
    """DTMF_ACTIONS: ``key=action`` pairs (``0=transfer,9=end``)."""
    actions: dict[str, str] = {}
    for pair in value.split(","):
        if not pair.strip():
            continue
        key, sep, action = pair.partition("=")
        key, action = key.strip(), action.strip().lower()
        if not sep or len(key) != 1 or key not in "0123456789ABCD":
            raise ValueError(f"expected key=action with a keypad digit, got {pair.strip()!r}")
        if action not in DTMF_ACTION_NAMES:
            raise ValueError(
                f"unknown action {action!r}: choose from {', '.join(DTMF_ACTION_NAMES)}"
            )
        actions[key] = action
    return actions


def _env(*names: str) -> Any:
    return Field(validation_alias=AliasChoices(*names))


class Settings(BaseSettings):
    """All configuration. See ``.env.example`` for every variable with a comment."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # `VOICELIVE_API_KEY=` means "not set", not an empty key
        extra="ignore",
        populate_by_name=True,
    )
    # The loaded profiles (voicebridge.profiles.profiles_of), once asked for.
    _profiles: Any = PrivateAttr(default=None)

    # ---- Voice Live
    voicelive_endpoint: str = _env("VOICELIVE_ENDPOINT", "AZURE_VOICELIVE_ENDPOINT")
    voicelive_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VOICELIVE_API_KEY", "AZURE_VOICELIVE_KEY")
    )
    voicelive_bearer_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VOICELIVE_BEARER_TOKEN")
    )
    voicelive_model: str | None = Field(
        default=None, validation_alias=AliasChoices("VOICELIVE_MODEL", "AZURE_VOICELIVE_MODEL")
    )
    voicelive_api_version: str = Field(
        default="2026-07-15",
        validation_alias=AliasChoices("VOICELIVE_API_VERSION", "AZURE_VOICELIVE_API_VERSION"),
    )
    agent_name: str | None = Field(default=None, validation_alias=AliasChoices("AGENT_NAME"))
    project_name: str | None = Field(
        default=None, validation_alias=AliasChoices("PROJECT_NAME", "AZURE_VOICELIVE_PROJECT_NAME")
    )
    agent_version: str | None = Field(default=None, validation_alias=AliasChoices("AGENT_VERSION"))
    conversation_id: str | None = Field(
        default=None, validation_alias=AliasChoices("CONVERSATION_ID")
    )
    foundry_resource_override: str | None = Field(
        default=None, validation_alias=AliasChoices("FOUNDRY_RESOURCE_OVERRIDE")
    )
    agent_authentication_identity_client_id: str | None = Field(
        default=None, validation_alias=AliasChoices("AGENT_AUTHENTICATION_IDENTITY_CLIENT_ID")
    )
    voice_name: str = Field(
        default="en-US-AvaMultilingualNeural", validation_alias=AliasChoices("VOICE_NAME")
    )
    instructions: str = Field(
        default=(
            "You are a friendly phone assistant. Keep answers short and conversational; "
            "the caller is on a phone line."
        ),
        validation_alias=AliasChoices("INSTRUCTIONS", "VOICELIVE_INSTRUCTIONS"),
    )
    voicelive_connect_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=AliasChoices("VOICELIVE_CONNECT_TIMEOUT_S")
    )

    # ---- reliability (docs/reliability.md)
    voicelive_reconnect_budget_s: float = Field(
        default=10.0, ge=0, validation_alias=AliasChoices("VOICELIVE_RECONNECT_BUDGET_S")
    )
    reconnect_buffer_s: float = Field(
        default=5.0, ge=0, le=60, validation_alias=AliasChoices("RECONNECT_BUFFER_S")
    )
    session_update_timeout_s: float = Field(
        default=5.0, gt=0, validation_alias=AliasChoices("SESSION_UPDATE_TIMEOUT_S")
    )
    response_start_timeout_s: float = Field(
        default=4.0, gt=0, validation_alias=AliasChoices("RESPONSE_START_TIMEOUT_S")
    )
    response_stall_timeout_s: float = Field(
        default=8.0, gt=0, validation_alias=AliasChoices("RESPONSE_STALL_TIMEOUT_S")
    )
    session_expiry_margin_s: float = Field(
        default=30.0, ge=0, validation_alias=AliasChoices("SESSION_EXPIRY_MARGIN_S")
    )
    acs_reconnect_grace_s: float = Field(
        default=3.0, ge=0, validation_alias=AliasChoices("ACS_RECONNECT_GRACE_S")
    )

    # ---- session behaviour
    greeting_mode: Literal["llm", "text", "none"] = Field(
        default="llm", validation_alias=AliasChoices("GREETING_MODE")
    )
    greeting_text: str = Field(
        default="Hello, thanks for calling. How can I help you today?",
        validation_alias=AliasChoices("GREETING_TEXT"),
    )
    greeting_instructions: str | None = Field(
        default=None, validation_alias=AliasChoices("GREETING_INSTRUCTIONS")
    )
    vad_type: str = Field(default="azure_semantic_vad", validation_alias=AliasChoices("VAD_TYPE"))
    vad_silence_ms: int = Field(
        default=500, ge=100, validation_alias=AliasChoices("VAD_SILENCE_MS")
    )
    noise_suppression: bool = Field(
        default=True, validation_alias=AliasChoices("NOISE_SUPPRESSION")
    )
    echo_cancellation: bool = Field(
        default=True, validation_alias=AliasChoices("ECHO_CANCELLATION")
    )
    # Unset: derived from the mode and model family (``transcription``); "none" turns
    # caller transcripts off.
    transcription_model: str | None = Field(
        default=None, validation_alias=AliasChoices("TRANSCRIPTION_MODEL")
    )
    transcription_language: str | None = Field(
        default=None, validation_alias=AliasChoices("TRANSCRIPTION_LANGUAGE")
    )
    interim_response: dict[str, Any] | None = Field(
        default=None, validation_alias=AliasChoices("INTERIM_RESPONSE")
    )

    # ---- audio
    acs_audio_rate: int = Field(default=16000, validation_alias=AliasChoices("ACS_AUDIO_RATE"))
    voicelive_audio_rate: int = Field(
        default=24000, validation_alias=AliasChoices("VOICELIVE_AUDIO_RATE")
    )
    pacing_lead_ms: int = Field(
        default=160, ge=20, le=2000, validation_alias=AliasChoices("PACING_LEAD_MS")
    )
    # Agent audio is sent to ACS in frames of this length. ACS queues what it is sent
    # whatever the size (protocols.md §4); 40 ms halves the messages of 20 ms frames
    # (-4 % bridge CPU at 150 calls, docs/performance.md) and barge-in still flushes
    # ACS's queue at once.
    acs_out_frame_ms: int = Field(
        default=40, ge=20, le=100, multiple_of=20, validation_alias=AliasChoices("ACS_OUT_FRAME_MS")
    )
    max_text_bytes: int = Field(
        default=8192, ge=256, validation_alias=AliasChoices("MAX_TEXT_BYTES")
    )
    max_message_bytes: int = Field(
        default=128 * 1024, ge=4096, validation_alias=AliasChoices("MAX_MESSAGE_BYTES")
    )

    # ---- ACS
    acs_connection_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ACS_CONNECTION_STRING")
    )
    acs_endpoint: str | None = Field(default=None, validation_alias=AliasChoices("ACS_ENDPOINT"))
    public_base_url: str = _env("PUBLIC_BASE_URL")

    # ---- security (docs/security.md)
    acs_jwt_validation: bool = Field(
        default=True, validation_alias=AliasChoices("ACS_JWT_VALIDATION")
    )
    acs_resource_id: str | None = Field(
        default=None, validation_alias=AliasChoices("ACS_RESOURCE_ID")
    )
    acs_jwt_issuer: str = Field(
        default=ACS_JWT_ISSUER, validation_alias=AliasChoices("ACS_JWT_ISSUER")
    )
    acs_openid_config_url: str = Field(
        default=ACS_OPENID_CONFIG_URL, validation_alias=AliasChoices("ACS_OPENID_CONFIG_URL")
    )
    acs_jwks_url: str | None = Field(default=None, validation_alias=AliasChoices("ACS_JWKS_URL"))
    jwt_leeway_s: float = Field(
        default=60.0, ge=0, le=600, validation_alias=AliasChoices("JWT_LEEWAY_S")
    )
    # Per-call URL token keys, "kid:base64key,kid2:base64key2": the first signs, all
    # verify (security.CallUrlSigner; docs/security.md "Per-call URLs").
    call_url_keys: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CALL_URL_KEYS")
    )
    # Deprecated: one raw key (kid "s0"), used only while CALL_URL_KEYS is unset.
    call_url_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CALL_URL_SECRET")
    )
    eventgrid_shared_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("EVENTGRID_SHARED_SECRET")
    )
    eventgrid_entra_tenant_id: str | None = Field(
        default=None, validation_alias=AliasChoices("EVENTGRID_ENTRA_TENANT_ID")
    )
    eventgrid_entra_audience: str | None = Field(
        default=None, validation_alias=AliasChoices("EVENTGRID_ENTRA_AUDIENCE")
    )
    eventgrid_entra_openid_config_url: str | None = Field(
        default=None, validation_alias=AliasChoices("EVENTGRID_ENTRA_OPENID_CONFIG_URL")
    )

    # ---- call control (docs/call-control.md): tools the agent may call, keypad, silence
    # Tools declared to the model (model mode; an agent brings its own): end_call,
    # transfer_to_human (needs TRANSFER_TARGETS). Empty: none.
    call_tools: str = Field(
        default="end_call,transfer_to_human", validation_alias=AliasChoices("CALL_TOOLS")
    )
    # "reason=target,...": a phone number in E.164 (+15551234567) or an ACS user
    # (8:acs:...), per reason the agent gives; "default" serves any other reason.
    transfer_targets: str | None = Field(
        default=None, validation_alias=AliasChoices("TRANSFER_TARGETS")
    )
    transfer_announcement: str = Field(
        default="Connecting you to a person now. Please stay on the line.",
        validation_alias=AliasChoices("TRANSFER_ANNOUNCEMENT"),
    )
    # Spoken when a tool takes longer than TOOL_FILLER_AFTER_S, so the caller never
    # hears dead air; a tool that takes longer than TOOL_TIMEOUT_S fails.
    tool_filler_text: str = Field(
        default="One moment, please.", validation_alias=AliasChoices("TOOL_FILLER_TEXT")
    )
    tool_filler_after_s: float = Field(
        default=1.5, ge=0, validation_alias=AliasChoices("TOOL_FILLER_AFTER_S")
    )
    tool_timeout_s: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("TOOL_TIMEOUT_S")
    )
    # Keypad: # submits, * clears; an entry also ends after DTMF_INTER_DIGIT_TIMEOUT_S
    # without a key or at DTMF_MAX_DIGITS. DTMF_ACTIONS "0=transfer,9=end": a key pressed
    # on an empty entry acts without the model.
    dtmf_inter_digit_timeout_s: float = Field(
        default=3.0, gt=0, validation_alias=AliasChoices("DTMF_INTER_DIGIT_TIMEOUT_S")
    )
    dtmf_max_digits: int = Field(
        default=20, ge=1, le=64, validation_alias=AliasChoices("DTMF_MAX_DIGITS")
    )
    dtmf_actions: str | None = Field(default=None, validation_alias=AliasChoices("DTMF_ACTIONS"))
    # Silent caller: after the agent's last audio, NO_INPUT_REPROMPT_S of nothing (0: off)
    # gets a re-prompt (NO_INPUT_PROMPT verbatim, else the model is asked to check in),
    # at most NO_INPUT_MAX_REPROMPTS times; then goodbye and hang-up (outcome no_input).
    no_input_reprompt_s: float = Field(
        default=8.0, ge=0, validation_alias=AliasChoices("NO_INPUT_REPROMPT_S")
    )
    no_input_max_reprompts: int = Field(
        default=2, ge=0, le=10, validation_alias=AliasChoices("NO_INPUT_MAX_REPROMPTS")
    )
    no_input_prompt: str | None = Field(
        default=None, validation_alias=AliasChoices("NO_INPUT_PROMPT")
    )
    # Estimated cost per call, USD per million tokens (defaults: OpenAI's published
    # gpt-realtime prices of 2025-08; Azure's may differ: set yours).
    price_input_text_per_m: float = Field(
        default=4.0, ge=0, validation_alias=AliasChoices("PRICE_INPUT_TEXT_PER_M")
    )
    price_input_audio_per_m: float = Field(
        default=32.0, ge=0, validation_alias=AliasChoices("PRICE_INPUT_AUDIO_PER_M")
    )
    price_input_cached_per_m: float = Field(
        default=0.4, ge=0, validation_alias=AliasChoices("PRICE_INPUT_CACHED_PER_M")
    )
    price_output_text_per_m: float = Field(
        default=16.0, ge=0, validation_alias=AliasChoices("PRICE_OUTPUT_TEXT_PER_M")
    )
    price_output_audio_per_m: float = Field(
        default=64.0, ge=0, validation_alias=AliasChoices("PRICE_OUTPUT_AUDIO_PER_M")
    )

    # ---- limits
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, validation_alias=AliasChoices("MAX_BODY_BYTES")
    )
    max_media_message_bytes: int = Field(
        default=64 * 1024, ge=4096, validation_alias=AliasChoices("MAX_MEDIA_MESSAGE_BYTES")
    )
    max_concurrent_calls: int = Field(
        default=100, ge=1, validation_alias=AliasChoices("MAX_CONCURRENT_CALLS")
    )
    media_idle_timeout_s: float = Field(
        default=120.0, gt=0, validation_alias=AliasChoices("MEDIA_IDLE_TIMEOUT_S")
    )
    max_call_duration_s: float = Field(
        default=3600.0, gt=0, validation_alias=AliasChoices("MAX_CALL_DURATION_S")
    )
    drain_grace_s: float = Field(
        default=120.0, ge=0, validation_alias=AliasChoices("DRAIN_GRACE_S")
    )

    # ---- profiles and outbound calls (docs/outbound.md)
    # A YAML or JSON file of per-number profiles (voicebridge.profiles); the environment
    # is the "default" profile and the base every profile overrides.
    profiles_file: str | None = Field(default=None, validation_alias=AliasChoices("PROFILES_FILE"))
    # The default profile's ACS numbers (E.164, comma-separated): the caller id of its
    # outbound calls. A profiles file's "default" entry may set its own.
    phone_numbers: str | None = Field(default=None, validation_alias=AliasChoices("PHONE_NUMBERS"))
    # POST /api/calls: bearer API keys (comma-separated, each >= 16 characters; Key Vault
    # in Azure) and/or an Entra ID app role; the route is absent (404) without either.
    outbound_api_keys: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OUTBOUND_API_KEYS")
    )
    outbound_entra_tenant_id: str | None = Field(
        default=None, validation_alias=AliasChoices("OUTBOUND_ENTRA_TENANT_ID")
    )
    outbound_entra_audience: str | None = Field(
        default=None, validation_alias=AliasChoices("OUTBOUND_ENTRA_AUDIENCE")
    )
    outbound_entra_role: str = Field(
        default="Calls.Create", validation_alias=AliasChoices("OUTBOUND_ENTRA_ROLE")
    )
    outbound_entra_openid_config_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OUTBOUND_ENTRA_OPENID_CONFIG_URL")
    )
    # New outbound calls per minute per process (a token bucket, bursts up to that many),
    # and outbound calls in progress per process (a profile's outbound max_concurrent too).
    outbound_rate_per_min: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("OUTBOUND_RATE_PER_MIN")
    )
    outbound_max_concurrent: int = Field(
        default=20, ge=1, validation_alias=AliasChoices("OUTBOUND_MAX_CONCURRENT")
    )
    # A request's "context": at most this many keys, this many bytes of JSON.
    outbound_context_max_bytes: int = Field(
        default=2048, ge=64, le=65536, validation_alias=AliasChoices("OUTBOUND_CONTEXT_MAX_BYTES")
    )
    outbound_context_max_keys: int = Field(
        default=20, ge=1, le=200, validation_alias=AliasChoices("OUTBOUND_CONTEXT_MAX_KEYS")
    )

    # ---- many nodes (docs/deploy.md "Scale-out"): off unless REDIS_URL is set
    # redis://[:password@]host:port/db or rediss:// (Azure Managed Redis: port 10000, TLS).
    redis_url: SecretStr | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    # "key": the password in REDIS_URL or REDIS_PASSWORD (an access key); "entra": a
    # Microsoft Entra token for the app's identity (AZURE_CLIENT_ID), renewed in the background.
    redis_auth: Literal["key", "entra"] = Field(
        default="key", validation_alias=AliasChoices("REDIS_AUTH")
    )
    redis_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_PASSWORD")
    )
    # This process's name among the nodes (default "<hostname>/<pid>").
    node_id: str | None = Field(default=None, validation_alias=AliasChoices("NODE_ID"))
    # How many nodes the app may have at most (max replicas x workers): a call is refused
    # busy only when every node is full and this many are up. Unset: when every node is full.
    max_nodes: int | None = Field(default=None, ge=1, validation_alias=AliasChoices("MAX_NODES"))
    # On SIGTERM: "wait" lets live calls finish (DRAIN_GRACE_S); "migrate" moves them to
    # other nodes by restarting ACS media streaming (unverified on real ACS: docs/deploy.md).
    drain_mode: Literal["wait", "migrate"] = Field(
        default="wait", validation_alias=AliasChoices("DRAIN_MODE")
    )
    # migrate: how long readiness stays false before calls move (the ingress must stop
    # sending this node new sockets first), and how long moving may take.
    drain_route_settle_s: float = Field(
        default=12.0, ge=0, validation_alias=AliasChoices("DRAIN_ROUTE_SETTLE_S")
    )
    drain_migrate_deadline_s: float = Field(
        default=20.0, ge=0, validation_alias=AliasChoices("DRAIN_MIGRATE_DEADLINE_S")
    )
    # Node liveness: a heartbeat every NODE_HEARTBEAT_S; a call whose owner has been silent
    # for OWNER_LOST_AFTER_S is checked with ACS and ended politely if its media is gone.
    node_heartbeat_s: float = Field(
        default=5.0, gt=0, validation_alias=AliasChoices("NODE_HEARTBEAT_S")
    )
    owner_lost_after_s: float = Field(
        default=30.0, gt=0, validation_alias=AliasChoices("OWNER_LOST_AFTER_S")
    )
    # Bearer token of GET /api/scale-metric (the KEDA metrics-api scale rule); the route
    # answers 404 while it is unset.
    scale_metric_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SCALE_METRIC_TOKEN")
    )
    # `voicebridge serve` worker processes in this container, each its own node with its
    # own SO_REUSEPORT listener (docs/deploy.md "Workers").
    workers: int = Field(default=1, ge=1, le=64, validation_alias=AliasChoices("WORKERS"))
    # Name the node in an x-voicebridge-node response header (the cluster simulator's
    # report); off in production.
    expose_node_id: bool = Field(default=False, validation_alias=AliasChoices("EXPOSE_NODE_ID"))

    # ---- the browser phone (voicebridge.phone; docs/phone.md): GET /phone, its calls and
    # socket exist only with PHONE_ENABLED=true, and need PHONE_TOKEN. Development only:
    # never set in Azure (docs/security.md "The browser phone").
    phone_enabled: bool = Field(default=False, validation_alias=AliasChoices("PHONE_ENABLED"))
    phone_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("PHONE_TOKEN")
    )

    # ---- diagnostics: GET /debug/stats (object census, heap trim) for leak hunting only
    debug_endpoints: bool = Field(
        default=False,
        # VOICEBRIDGE_STATS_CENSUS: its earlier name, when the census was on /api/stats.
        validation_alias=AliasChoices(DEBUG_ENDPOINTS_ENV, "VOICEBRIDGE_STATS_CENSUS"),
    )

    # ---- service
    log_dir: str = Field(default="./logs", validation_alias=AliasChoices("LOG_DIR"))
    log_level: str = Field(default="INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    log_format: Literal["json", "text"] = Field(
        default="json", validation_alias=AliasChoices("LOG_FORMAT")
    )
    # Traces, metrics and logs to Azure Monitor when set; telemetry is off otherwise.
    applicationinsights_connection_string: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("APPLICATIONINSIGHTS_CONNECTION_STRING")
    )
    host: str = Field(default="0.0.0.0", validation_alias=AliasChoices("HOST"))
    port: int = Field(default=8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"))

    @field_validator("voicelive_endpoint", "public_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https", "ws", "wss") or not parsed.netloc:
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("call_tools")
    @classmethod
    def _tools(cls, value: str | list[str]) -> str:
        if isinstance(value, list):
            value = ",".join(value)
        if value.strip().lower() == "none":  # an empty variable means "unset" (the default)
            return ""
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - set(CALL_TOOLS))
        if unknown:
            raise ValueError(f"unknown tool {unknown[0]!r}: choose from {', '.join(CALL_TOOLS)}")
        return ",".join(names)

    @field_validator("transfer_targets")
    @classmethod
    def _targets(cls, value: str | None) -> str | None:
        if value is not None:
            parse_targets(value)
        return value

    @field_validator("dtmf_actions")
    @classmethod
    def _dtmf_actions(cls, value: str | None) -> str | None:
        if value is not None:
            parse_dtmf_actions(value)
        return value

    @field_validator("phone_numbers")
    @classmethod
    def _numbers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_numbers(value)
        return value

    @field_validator("outbound_api_keys")
    @classmethod
    def _api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # "" (e.g. an empty Bicep parameter) means unset
        keys = [k.strip() for k in value.get_secret_value().split(",")]
        for i, key in enumerate(keys, 1):
            if len(key) < MIN_API_KEY_CHARS:
                raise ValueError(
                    f"key {i} is {'empty' if not key else 'too short'}: each key needs at "
                    f"least {MIN_API_KEY_CHARS} characters (openssl rand -base64 32)"
                )
        return value

    def outbound_keys(self) -> list[str]:
        """The OUTBOUND_API_KEYS, each stripped (empty when unset)."""
        if self.outbound_api_keys is None:
            return []
        return [k.strip() for k in self.outbound_api_keys.get_secret_value().split(",")]

    @property
    def outbound_enabled(self) -> bool:
        """POST /api/calls exists: an API key or the Entra check is configured."""
        return self.outbound_api_keys is not None or bool(self.outbound_entra_tenant_id)

    @field_validator("call_url_keys")
    @classmethod
    def _url_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # "" (e.g. an empty Bicep parameter) means unset
        parse_url_keys(value.get_secret_value())  # ValueError names the entry, not the key
        return value

    def call_url_key_ring(self) -> list[tuple[str, bytes]] | None:
        """The per-call URL keys, first one signing: CALL_URL_KEYS, else the deprecated
        CALL_URL_SECRET as kid "s0", else None (a random per-process key)."""
        if self.call_url_keys is not None:
            return parse_url_keys(self.call_url_keys.get_secret_value())
        secret = self.call_url_secret.get_secret_value() if self.call_url_secret else ""
        return [(LEGACY_KID, secret.encode())] if secret else None

    @field_validator("phone_token")
    @classmethod
    def _phone_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not _PHONE_TOKEN.match(value.get_secret_value()):
            raise ValueError(
                "must be 16-256 of A-Z a-z 0-9 . _ ~ - (python -c 'import secrets; "
                "print(secrets.token_urlsafe(24))')"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("acs_audio_rate", "voicelive_audio_rate")
    @classmethod
    def _rate(cls, value: int) -> int:
        if value not in (16000, 24000):
            raise ValueError("must be 16000 or 24000")
        return value

    @field_validator("interim_response", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else None
        return value

    @field_validator("interim_response")
    @classmethod
    def _interim_spelling(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """The ``type`` as the installed SDK serialises it (``static_interim_response``;
        the 2026-07-15 reference's hyphenated spelling is accepted and rewritten)."""
        if value is None:
            return None
        kind = str(value.get("type", "")).strip().lower().replace("-", "_")
        if kind not in INTERIM_RESPONSE_TYPES:
            raise ValueError(f"type must be one of {', '.join(INTERIM_RESPONSE_TYPES)}")
        return {**value, "type": kind}

    @model_validator(mode="after")
    def _mode(self) -> Settings:
        if self.agent_name and not self.project_name:
            raise ValueError("PROJECT_NAME: required when AGENT_NAME is set")
        if self.project_name and not self.agent_name and not self.voicelive_model:
            raise ValueError("AGENT_NAME: required when PROJECT_NAME is set")
        if not self.agent_name and not self.voicelive_model:
            raise ValueError("VOICELIVE_MODEL: set it (model mode) or AGENT_NAME (agent mode)")
        if self.agent_name and self.voicelive_api_key is not None:
            raise ValueError(
                "VOICELIVE_API_KEY: agent mode needs Entra ID; remove the key "
                "(DefaultAzureCredential or VOICELIVE_BEARER_TOKEN is used)"
            )
        if self.acs_connection_string is None and not self.acs_endpoint:
            raise ValueError("ACS_CONNECTION_STRING: set it, or ACS_ENDPOINT for managed identity")
        if self.acs_jwt_validation and not self.acs_resource_id:
            raise ValueError(
                "ACS_RESOURCE_ID: required while ACS_JWT_VALIDATION is on (the ACS resource's "
                "Immutable Resource ID, a GUID); ACS_JWT_VALIDATION=false is for development only"
            )
        if self.redis_url is not None and self.call_url_keys is None and not self.call_url_secret:
            raise ValueError(
                "CALL_URL_KEYS: required when REDIS_URL is set (every node must verify the "
                "per-call URLs every other node signed; docs/security.md)"
            )
        if self.phone_enabled and self.phone_token is None:
            raise ValueError(
                "PHONE_TOKEN: required when PHONE_ENABLED=true (`voicebridge phone` makes one)"
            )
        if self.owner_lost_after_s <= 2 * self.node_heartbeat_s:
            raise ValueError("OWNER_LOST_AFTER_S: must be more than twice NODE_HEARTBEAT_S")
        self._check_transcription()
        if self.interim_response is not None and self.model_family == "realtime":
            raise ValueError(
                f"INTERIM_RESPONSE: not supported with VOICELIVE_MODEL={self.voicelive_model} "
                "(realtime models do not support interim responses); unset it, or use an "
                "agent or a non-realtime model"
            )
        if bool(self.outbound_entra_tenant_id) != bool(self.outbound_entra_audience):
            raise ValueError(
                "OUTBOUND_ENTRA_AUDIENCE: set both it and OUTBOUND_ENTRA_TENANT_ID, or neither"
            )
        if bool(self.eventgrid_entra_tenant_id) != bool(self.eventgrid_entra_audience):
            raise ValueError(
                "EVENTGRID_ENTRA_AUDIENCE: set both it and EVENTGRID_ENTRA_TENANT_ID, or neither"
            )
        return self

    def _check_transcription(self) -> None:
        chosen = (self.transcription_model or "").strip()
        if not chosen or chosen.lower() in TRANSCRIPTION_OFF:
            return
        supported = transcription_models(self.mode, self.voicelive_model)
        if chosen in supported:
            return
        against = (
            f"VOICELIVE_MODEL={self.voicelive_model}"
            if self.mode == "model"
            else f"AGENT_NAME={self.agent_name} (agent mode)"
        )
        raise ValueError(
            f"TRANSCRIPTION_MODEL={chosen} is not supported with {against}: use one of "
            f"{', '.join(supported)}, or none (unset picks {supported[0]})"
        )

    # ---- derived

    @property
    def mode(self) -> Literal["agent", "model"]:
        return "agent" if self.agent_name else "model"

    @property
    def model_family(self) -> str:
        """``"realtime"`` (gpt-realtime family, model mode) or ``"other"``."""
        return model_family(self.mode, self.voicelive_model)

    @property
    def transcription(self) -> str | None:
        """The input transcription model to configure: ``TRANSCRIPTION_MODEL``, or the
        family's default when unset; None when turned off (``none``)."""
        chosen = (self.transcription_model or "").strip()
        if chosen.lower() in TRANSCRIPTION_OFF:
            return None
        return chosen or transcription_models(self.mode, self.voicelive_model)[0]

    def explicitly_set(self, name: str) -> bool:
        """Whether the operator set field ``name`` (environment, ``.env`` or an
        override), rather than it holding its default."""
        return name in self.model_fields_set

    @property
    def voicelive_host(self) -> str:
        return urlparse(self.voicelive_endpoint).netloc

    @property
    def tools(self) -> tuple[str, ...]:
        """The call-control tools in use (transfer only with somewhere to transfer to)."""
        names = [n for n in self.call_tools.split(",") if n]
        if not self.transfer_targets:
            names = [n for n in names if n != "transfer_to_human"]
        return tuple(names)

    @property
    def transfer_target_map(self) -> dict[str, str]:
        return parse_targets(self.transfer_targets) if self.transfer_targets else {}

    @property
    def dtmf_action_map(self) -> dict[str, str]:
        return parse_dtmf_actions(self.dtmf_actions) if self.dtmf_actions else {}

    @property
    def clustered(self) -> bool:
        """True when nodes share call state through Redis (REDIS_URL set)."""
        return self.redis_url is not None

    @property
    def node_name(self) -> str:
        """This process's node id: NODE_ID, or ``<hostname>/<pid>``."""
        return self.node_id or f"{socket.gethostname()}/{os.getpid()}"

    @property
    def media_base_url(self) -> str:
        """``wss://`` (or ``ws://`` for a plain-http loopback base) form of the public URL."""
        parsed = urlparse(self.public_base_url)
        scheme = "wss" if parsed.scheme in ("https", "wss") else "ws"
        return f"{scheme}://{parsed.netloc}{parsed.path}"


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    return name.upper()


_FIELD_ENV = {name: _env_name(name) for name in Settings.model_fields}


def env_name(name: str) -> str:
    """The environment variable of Settings field ``name`` (its first alias)."""
    return _FIELD_ENV.get(name, name.upper())


def describe_error(exc: ValidationError) -> str:
    """The first problem of a Settings validation, as ``VARIABLE: what is wrong``."""
    err = exc.errors()[0]
    loc = err.get("loc") or ()
    name = str(loc[0]) if loc else ""
    var = env_name(name) if name else ""
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "required but not set"
    if not var or msg.startswith(var + ":") or msg.startswith(var + "="):
        return msg  # model-level checks name their variable
    return f"{var}: {msg}"


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from env/.env (plus ``overrides``) and load its profiles
    (``PROFILES_FILE``, :mod:`voicebridge.profiles`), or raise one ``ConfigError`` line
    naming the offending variable (and profile)."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None
    from voicebridge.profiles import profiles_of  # profiles builds on this module

    profiles_of(settings)  # validated now: a bad profile stops start-up here
    return settings
