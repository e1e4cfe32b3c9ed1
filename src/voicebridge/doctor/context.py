"""What every group of checks gets: the settings, the command-line options, and the set
of secret values seen so far (redacted from the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from voicebridge.config import Settings

ARM_ENDPOINT = "https://management.azure.com"


@dataclass(frozen=True)
class Options:
    """``voicebridge doctor``'s flags."""

    talk: bool = False
    azure: bool = False
    acs_arm_id: str | None = None
    arm_endpoint: str = ARM_ENDPOINT
    timeout_s: float = 10.0


@dataclass
class Context:
    settings: Settings
    options: Options
    #: Secret values to redact from the report: keys, tokens, connection strings.
    secrets: set[str] = field(default_factory=set)
    #: The credential for Azure Resource Manager (``--azure``); None: DefaultAzureCredential.
    arm_credential: Any = None

    def __post_init__(self) -> None:
        for name in type(self.settings).model_fields:
            value = getattr(self.settings, name, None)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                self.secrets.add(secret)
                # a connection string's key parts (accesskey=...) are secret on their own
                for part in secret.split(";"):
                    key, _, value = part.partition("=")
                    if any(word in key.lower() for word in ("key", "secret", "signature")):
                        self.secrets.add(value.strip())
