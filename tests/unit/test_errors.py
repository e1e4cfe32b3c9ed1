"""The one error -> WebSocket close code mapping."""

from __future__ import annotations

from voicebridge.errors import (
    AcsCodecError,
    GuardRejected,
    UpstreamUnavailable,
    VoiceLiveEventError,
    close_code,
)


def test_close_codes_follow_the_nearest_mapped_ancestor() -> None:
    assert close_code(AcsCodecError("bad")) == 1007
    assert close_code(VoiceLiveEventError("bad")) == 1007
    assert close_code(GuardRejected("too_large")) == 1011
    assert close_code(UpstreamUnavailable("down")) == 1013
    assert close_code(RuntimeError("bug")) == 1011
