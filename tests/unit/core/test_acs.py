"""ACS media codec: inbound parsing, the one codec error, outbound envelopes."""

from __future__ import annotations

import base64
import json

import pytest

from voicebridge.core import acs
from voicebridge.errors import AcsCodecError

PCM = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 20 ms at 16 kHz
B64 = base64.b64encode(PCM).decode()


def test_audio_metadata() -> None:
    ev = acs.parse(acs.audio_metadata_message(sample_rate=16000, subscription_id="sub"))
    assert ev == acs.AudioMetadata("sub", "PCM", 16000, 1, 640)


def test_audio_data_keeps_base64_and_decodes_pcm() -> None:
    msg = {
        "kind": "AudioData",
        "audioData": {
            "timestamp": "2024-11-15T19:16:12.925Z",
            "participantRawID": "4:+15551230001",
            "data": B64,
            "silent": False,
        },
    }
    ev = acs.parse(json.dumps(msg))
    assert isinstance(ev, acs.AudioData)
    assert ev.data == B64 and ev.pcm == PCM and not ev.silent
    assert ev.participant_raw_id == "4:+15551230001"


@pytest.mark.parametrize("with_data", [True, False])
def test_silent_frames_with_or_without_data(with_data: bool) -> None:
    zeros = base64.b64encode(bytes(640)).decode()
    ev = acs.parse(acs.audio_data_message(zeros if with_data else None, silent=True))
    assert isinstance(ev, acs.AudioData) and ev.silent
    assert ev.pcm == (bytes(640) if with_data else b"")


def test_kind_and_keys_are_case_insensitive() -> None:
    ev = acs.parse(json.dumps({"Kind": "audiodata", "AudioData": {"Data": B64}}))
    assert isinstance(ev, acs.AudioData) and ev.pcm == PCM


def test_dtmf_and_unknown() -> None:
    assert acs.parse(acs.dtmf_message("5")) == acs.DtmfData("5", "", "")
    assert acs.parse('{"kind": "TranscriptionData", "transcriptionData": {}}') == acs.Unknown(
        "TranscriptionData"
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"audioData": {}}', "missing 'kind'"),
        ('{"kind": 5}', "'kind' must be a string"),
        ('{"kind": "AudioData"}', "missing"),
        ('{"kind": "AudioData", "audioData": []}', "must be an object"),
        ('{"kind": "AudioData", "audioData": {"data": 5}}', "expected a string"),
        ('{"kind": "AudioData", "audioData": {"data": "!!!!"}}', "invalid base64"),
        ('{"kind": "AudioData", "audioData": {"data": "AAAA\\n"}}', "invalid base64"),
        ('{"kind": "AudioData", "audioData": {"data": "AAAAAAAA="}}', "invalid base64"),
        ('{"kind": "AudioData", "audioData": {"data": "AAAAAAAA"}, "x": NaN}', "not JSON"),
        ('{"kind": "AudioData", "audioData": {"data": "AAAA"}}', "odd PCM16 byte count 3"),
        ('{"kind": "AudioData", "audioData": {"silent": false}}', "missing on a non-silent"),
        ('{"kind": "AudioData", "audioData": {"data": "", "silent": "no"}}', "boolean"),
        ('{"kind": "AudioMetadata", "audioMetadata": {"channels": 1}}', "sampleRate: missing"),
        (
            '{"kind": "AudioMetadata", "audioMetadata": {"sampleRate": true, "channels": 1}}',
            "integer",
        ),
        ('{"kind": "DtmfData", "dtmfData": {"data": 3}}', "DtmfData.data"),
    ],
)
def test_malformed_input_raises_the_codec_error(text: str, needle: str) -> None:
    with pytest.raises(AcsCodecError, match=needle):
        acs.parse(text)


def test_outbound_envelopes_round_trip() -> None:
    out = acs.audio_data(B64)
    assert json.loads(out) == {"Kind": "AudioData", "AudioData": {"Data": B64}, "StopAudio": None}
    assert acs.parse_outbound(out) == acs.OutboundAudio(B64, PCM)
    stop = acs.stop_audio()
    assert json.loads(stop) == {"Kind": "StopAudio", "AudioData": None, "StopAudio": {}}
    assert acs.parse_outbound(stop) == acs.OutboundStop()
