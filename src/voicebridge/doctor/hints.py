"""Likely cause and fix for each failure the doctor can see: pure functions, no I/O.

The wording follows the deployment SOP's troubleshooting table (connection hang, 404,
401, 401 at the platform level, 400) and docs/first-call.md, which lists every hint.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: The Entra scope the Voice Live SDK asks tokens for (azure-ai-voicelive 1.3.1).
VOICELIVE_SCOPE = "https://ai.azure.com/.default"
#: Token audiences Voice Live accepts (the 2026-07-15 reference: ai.azure.com, or the
#: legacy Cognitive Services resource).
VOICELIVE_AUDIENCES = ("https://ai.azure.com", "https://cognitiveservices.azure.com")
GET_TOKEN = "az account get-access-token --resource https://ai.azure.com"
KEYS_LIST = "az cognitiveservices account keys list --name <resource> --resource-group <rg>"
EASYAUTH_FIX = (
    "let anonymous requests through to the app: in Bicep, the Container App's authConfig "
    "'current' with platform.enabled=false and globalValidation.unauthenticatedClientAction="
    "'AllowAnonymous'; or `az containerapp auth update -n <app> -g <rg> --action "
    "AllowAnonymous --enabled false` (voicebridge authenticates ACS and Event Grid itself)"
)


@dataclass(frozen=True)
class Hint:
    cause: str
    fix: str


# --------------------------------------------------------------------------- tokens


def token_problem(claims: Mapping[str, Any], now: float | None = None) -> Hint | None:
    """Why a Voice Live token would be refused: wrong audience or expired; else None."""
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if not any(isinstance(a, str) and a.rstrip("/") in VOICELIVE_AUDIENCES for a in auds):
        return Hint(
            "the token was requested for another scope than Voice Live's "
            "(https://ai.azure.com); e.g. `az account get-access-token` without --resource "
            "gives an Azure Resource Manager token",
            f"request it for the scope {VOICELIVE_SCOPE}: `{GET_TOKEN}`; in Azure, unset "
            "VOICELIVE_BEARER_TOKEN and let the managed identity fetch it",
        )
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= (time.time() if now is None else now):
        return Hint(
            "the token has expired (Entra tokens live about an hour)",
            f"get a new one: `{GET_TOKEN}`, or unset VOICELIVE_BEARER_TOKEN to let "
            "DefaultAzureCredential fetch and renew tokens",
        )
    return None


# --------------------------------------------------------------------------- Voice Live


def _auth_hint(status: int, auth: str, body: str) -> Hint:
    """401 / 403: the credential, or what it may do."""
    if status == 401:
        if auth == "api-key":
            return Hint(
                "the API key is wrong: mistyped, rotated, from another resource, or an API "
                "Management subscription key instead of the resource's own key",
                f"copy a key of the AI Foundry / AI Services resource: `{KEYS_LIST}` "
                "-> VOICELIVE_API_KEY",
            )
        if "audience" in body.lower():
            return Hint(
                "the Entra token is for the wrong audience (the service says so)",
                f"request the token for {VOICELIVE_SCOPE}: `{GET_TOKEN}`",
            )
        return Hint(
            "the Entra token was refused: wrong audience (not https://ai.azure.com), expired, "
            "or from another tenant than the resource's",
            f"request it for {VOICELIVE_SCOPE} in the resource's tenant (`{GET_TOKEN}`), or "
            "let the managed identity fetch it (unset VOICELIVE_BEARER_TOKEN)",
        )
    if auth == "api-key":
        return Hint(
            "the key is accepted but access is denied: the resource's network rules "
            "(firewall, private endpoint only) exclude this machine, or local (key) "
            "authentication is disabled on the resource",
            "allow this network in the resource's Networking settings, or use Entra ID "
            "(unset VOICELIVE_API_KEY; the identity needs the 'Cognitive Services User' role)",
        )
    return Hint(
        "the identity is authenticated but has no data-plane role on the resource (RBAC), "
        "or the resource's network rules exclude this machine",
        "assign the 'Cognitive Services User' role (the SOP's 'Cognitive Services OpenAI "
        "User' for OpenAI models; agent mode also 'Azure AI User' on the project): `az role "
        "assignment create --assignee <principal-id> --role 'Cognitive Services User' "
        "--scope <resource-id>`; assignments take a few minutes to apply",
    )


def voicelive_http_hint(status: int, *, auth: str, endpoint_path: str = "", body: str = "") -> Hint:
    """The refused WebSocket upgrade ``status`` (``auth``: ``"api-key"`` or ``"bearer"``)."""
    if status in (401, 403):
        return _auth_hint(status, auth, body)
    if status == 404:
        if endpoint_path.strip("/"):
            return Hint(
                f"VOICELIVE_ENDPOINT has the path {endpoint_path!r}: the SDK appends "
                "/voice-live/realtime to it, so the WebSocket URL does not exist",
                "set VOICELIVE_ENDPOINT to the resource root, e.g. "
                "https://<resource>.services.ai.azure.com (no /openai/... or /api/projects/... "
                "path)",
            )
        return Hint(
            "no Voice Live at this host, or the model is not deployed / not available in the "
            "resource's region (SOP: '404 Model Not Found')",
            "use the AI Foundry / AI Services endpoint https://<resource>.services.ai.azure.com "
            "(or .cognitiveservices.azure.com) of a Voice Live region, and a VOICELIVE_MODEL "
            "that Voice Live supports",
        )
    if status == 400:
        return Hint(
            "the service refused the request parameters: an unsupported VOICELIVE_API_VERSION, "
            "an unknown model name, or bad agent parameters (SOP: '400 Bad Request')",
            "use VOICELIVE_API_VERSION=2026-07-15 (the SDK's default), a model name from the "
            "Voice Live docs, and check AGENT_NAME / PROJECT_NAME / AGENT_VERSION",
        )
    if status == 429:
        return Hint(
            "throttled: the resource's rate limit or quota is exhausted",
            "retry in a minute; check the resource's quota in the Foundry portal",
        )
    if status >= 500:
        return Hint(
            "a service-side error",
            "retry; if it persists, check Azure status for the region and open a support case "
            "quoting the time of the failure",
        )
    return Hint(
        f"an unexpected HTTP {status} for the WebSocket upgrade (a proxy in between?)",
        "connect without proxies / TLS inspection, and check VOICELIVE_ENDPOINT",
    )


VOICELIVE_TIMEOUT_HINT = Hint(
    "managed identity or RBAC misconfigured fails silently, or the model is not deployed "
    "(SOP: 'Connection Hang'); a proxy or firewall that swallows the upgrade looks the same",
    "check the identity's role on the resource ('Cognitive Services User') and that the "
    "model is deployed; in model mode try an API key (VOICELIVE_API_KEY) to isolate auth; "
    "serve gives up after VOICELIVE_CONNECT_TIMEOUT_S too, so every call would hear the "
    "apology",
)

TOKEN_TIMEOUT_HINT = Hint(
    "the managed identity endpoint is unreachable or the identity is not assigned to this "
    "app (SOP: 'Connection Hang')",
    "enable the Container App's managed identity (a user-assigned one also needs "
    "AZURE_CLIENT_ID); locally, `az login`",
)

NO_CREDENTIAL_HINT = Hint(
    "DefaultAzureCredential found no usable credential: no managed identity here and no "
    "Azure CLI / environment login",
    "locally: `az login` (and `az account set -s <subscription>`); in Azure: enable the "
    "Container App's managed identity (user-assigned: set AZURE_CLIENT_ID); or set "
    "VOICELIVE_BEARER_TOKEN to the output of "
    f"`{GET_TOKEN} --query accessToken -o tsv`",
)


#: The credentials of DefaultAzureCredential that matter here: in Azure, locally.
KEY_CREDENTIALS = ("ManagedIdentityCredential", "AzureCliCredential")


def credential_failure(message: str) -> str:
    """A short reason from an azure-identity error: its first line, plus what the managed
    identity and the Azure CLI credentials said (DefaultAzureCredential lists them all)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    parts = [lines[0].rstrip(".")]
    for line in lines[1:]:
        name, _, why = line.partition(":")
        if name in KEY_CREDENTIALS:
            parts.append(f"{name}: {why.strip().split('. ')[0][:100]}")
    return "; ".join(parts)


def connect_error_hint(host: str) -> Hint:
    return Hint(
        f"nothing accepts connections at {host}: a wrong host or port, or egress blocked",
        "check VOICELIVE_ENDPOINT, and that this machine may open outbound 443 to it",
    )


#: Session fields of voicebridge's session.update -> the settings that set them.
FIELD_SETTINGS: dict[str, tuple[str, ...]] = {
    "voice": ("VOICE_NAME",),
    "turn_detection": ("VAD_TYPE", "VAD_SILENCE_MS"),
    "input_audio_noise_reduction": ("NOISE_SUPPRESSION",),
    "input_audio_echo_cancellation": ("ECHO_CANCELLATION",),
    "input_audio_transcription": ("TRANSCRIPTION_MODEL", "TRANSCRIPTION_LANGUAGE"),
    "instructions": ("INSTRUCTIONS",),
    "interim_response": ("INTERIM_RESPONSE",),
    "input_audio_sampling_rate": ("VOICELIVE_AUDIO_RATE",),
    "output_audio_format": ("VOICELIVE_AUDIO_RATE",),
}


def conflict_fields(message: str, param: str | None, sent: Iterable[str]) -> list[str]:
    """The session fields a ``max_config_attempts_exceeded`` error names (its ``param``
    and any field of what was sent that its message mentions), in the order sent."""
    named = set(re.findall(r"[a-z_]+", f"{param or ''} {message}"))
    return [f for f in sent if f in named]


def agent_config_hint(fields: list[str]) -> Hint:
    settings = sorted({s for f in fields for s in FIELD_SETTINGS.get(f, ())})
    names = ", ".join(fields) or "some session fields"
    envs = ", ".join(settings) or "the session settings"
    return Hint(
        f"voicebridge's session.update sets {names}, which the agent stores with other "
        "values: the service refuses the configuration and closes the session, so every call "
        "would hear silence, then the apology",
        f"unset {envs} (in agent mode voicebridge then leaves these to the agent), or set "
        "them to the agent's values, or change the agent in the Foundry portal",
    )


def agent_not_found_hint(agent: str | None, project: str | None) -> Hint:
    return Hint(
        f"there is no agent {agent!r} in project {project!r}, or the identity cannot see it",
        "compare AGENT_NAME, PROJECT_NAME (and AGENT_VERSION) with the project's Agents list "
        "in the Foundry portal (names are case-sensitive); the identity needs 'Azure AI User' "
        "on the project",
    )


def transcription_hint(chosen: str | None, model: str | None) -> Hint:
    return Hint(
        f"input transcription {chosen!r} is not supported with {model or 'this agent'!r}: "
        "azure-speech is for non-multimodal models and agents; the gpt-realtime family takes "
        "whisper-1 or gpt-4o(-mini)-transcribe. Without it there are no caller transcripts",
        "set TRANSCRIPTION_MODEL to a model the service lists as supported (unset picks the "
        "default for the model family), or TRANSCRIPTION_MODEL=none to go without",
    )
