"""Signed per-call URL tokens (security.CallUrlSigner): shape, every refusal, rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest

from voicebridge.security import (
    PURPOSE_CALLBACK,
    PURPOSE_MEDIA,
    URL_TOKEN_MAX_LEN,
    CallUrlSigner,
    TokenRejected,
    parse_url_keys,
)

K1 = ("k1", bytes(range(32)))
K2 = ("k2", bytes(range(100, 140)))
T0 = 1_800_000_000.0
LIFE = 3600.0 + 900.0


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def reason(signer: CallUrlSigner, token: str, purpose: bytes, now: float = T0) -> str:
    with pytest.raises(TokenRejected) as info:
        signer.check(token, purpose, now=now)
    assert signer.verify(token, purpose, now=now) is None
    return info.value.reason


def test_round_trip_and_the_documented_shape() -> None:
    signer = CallUrlSigner([K1], lifetime_s=LIFE)
    call_id, callback, media = signer.new_call(now=T0)
    assert signer.check(callback, PURPOSE_CALLBACK, now=T0) == call_id
    assert signer.verify(media, PURPOSE_MEDIA, now=T0 + LIFE - 1) == call_id
    assert callback != media
    for token, purpose in ((callback, b"c"), (media, b"m")):
        version, kid, payload_text, mac_text = token.split(".")
        assert (version, kid) == ("1", "k1")
        assert len(payload_text) == 23 and len(mac_text) == 22 and len(token) <= 57
        payload = unb64(payload_text)
        raw_id, expiry, got_purpose = struct.unpack(">12sIc", payload)
        assert b64(raw_id) == call_id and expiry == int(T0 + LIFE) and got_purpose == purpose
        # The MAC, recomputed from the specification (docs/security.md "Per-call URLs").
        expected = hmac.new(K1[1], b"vb1|k1|" + payload, hashlib.sha256).digest()[:16]
        assert unb64(mac_text) == expected


def test_every_refusal_has_its_reason() -> None:
    signer = CallUrlSigner([K1], lifetime_s=LIFE)
    _, callback, media = signer.new_call(now=T0)
    _, kid, payload, mac = callback.split(".")
    flipped = mac[:-2] + ("AA" if not mac.endswith("AA") else "BA")
    other_payload = b64(unb64(payload)[:-1] + b"m")  # purpose swapped, old MAC kept
    malformed = [
        "",
        "nokey",
        callback + ".x",
        f"2.{kid}.{payload}.{mac}",
        f"1.{kid}.{payload}",
        f"1.{kid}.{payload}=.{mac}",
        f"1.{kid}.{payload[:-1]}.{mac}",
        f"1.{kid}.{payload}.{mac}A",
        f"1.{kid}.{payload[:-1]}*.{mac}",
        f"1.{kid}.{payload[:-1]}B.{mac}",  # non-zero trailing bits: a second spelling
        "1." + "k" * 60,
        "x" * 300,
    ]
    for token in malformed:
        assert reason(signer, token, PURPOSE_CALLBACK) == "malformed", token
    assert len(callback) <= URL_TOKEN_MAX_LEN
    assert reason(signer, f"1.k9.{payload}.{mac}", PURPOSE_CALLBACK) == "unknown_key_id"
    assert reason(signer, f"1.{kid}.{payload}.{flipped}", PURPOSE_CALLBACK) == "bad_signature"
    assert reason(signer, f"1.{kid}.{other_payload}.{mac}", PURPOSE_MEDIA) == "bad_signature"
    assert reason(signer, callback, PURPOSE_MEDIA) == "wrong_purpose"
    assert reason(signer, media, PURPOSE_CALLBACK) == "wrong_purpose"
    # Another process with other keys (or a random per-process key): not ours.
    assert reason(CallUrlSigner([("k1", b"z" * 32)]), callback, PURPOSE_CALLBACK) == (
        "bad_signature"
    )
    assert reason(CallUrlSigner(), callback, PURPOSE_CALLBACK) == "unknown_key_id"


def test_expiry_boundary() -> None:
    signer = CallUrlSigner([K1], lifetime_s=LIFE)
    call_id, callback, _ = signer.new_call(now=T0)
    expiry = int(T0 + LIFE)
    assert signer.verify(callback, PURPOSE_CALLBACK, now=expiry - 0.001) == call_id
    assert reason(signer, callback, PURPOSE_CALLBACK, now=expiry) == "expired"
    assert reason(signer, callback, PURPOSE_CALLBACK, now=expiry + 86400) == "expired"
    # A token issued long ago (the e2e test builds one the same way) is refused.
    old = signer.issue(call_id, PURPOSE_CALLBACK, now=T0 - 2 * LIFE)
    assert reason(signer, old, PURPOSE_CALLBACK) == "expired"


def test_time_defaults_to_now() -> None:
    signer = CallUrlSigner([K1])
    call_id, callback, media = signer.new_call()
    assert signer.verify(callback, PURPOSE_CALLBACK) == call_id
    assert signer.verify(media, PURPOSE_MEDIA) == call_id


def test_rotation_keeps_live_calls_and_signs_with_the_new_key() -> None:
    before = CallUrlSigner([K1], lifetime_s=LIFE)
    call_id, callback, media = before.new_call(now=T0)
    # Deployment 1 adds k2 as a verifier; deployment 2 makes it the signer: "k2:..,k1:..".
    after = CallUrlSigner([K2, K1], lifetime_s=LIFE)
    assert after.verify(callback, PURPOSE_CALLBACK, now=T0 + 60) == call_id
    assert after.verify(media, PURPOSE_MEDIA, now=T0 + 60) == call_id
    new_id, new_callback, _ = after.new_call(now=T0 + 60)
    assert new_callback.split(".")[1] == "k2"
    assert after.verify(new_callback, PURPOSE_CALLBACK, now=T0 + 60) == new_id
    assert reason(before, new_callback, PURPOSE_CALLBACK) == "unknown_key_id"
    # Once k1 is removed, its tokens are refused.
    retired = CallUrlSigner([K2], lifetime_s=LIFE)
    assert reason(retired, callback, PURPOSE_CALLBACK, now=T0 + 60) == "unknown_key_id"
    assert retired.verify(new_callback, PURPOSE_CALLBACK, now=T0 + 60) == new_id


def test_the_deprecated_single_secret_is_key_id_s0() -> None:
    signer = CallUrlSigner(b"call-url-hmac-secret-xyz")
    call_id, callback, _ = signer.new_call()
    assert callback.startswith("1.s0.") and signer.verify(callback, PURPOSE_CALLBACK) == call_id
    assert CallUrlSigner(b"call-url-hmac-secret-xyz").verify(callback, PURPOSE_CALLBACK) == call_id


def test_issue_refuses_bad_input() -> None:
    signer = CallUrlSigner([K1])
    with pytest.raises(ValueError):
        signer.issue(b64(b"x" * 12), b"x")
    with pytest.raises(ValueError):
        signer.issue("short", PURPOSE_CALLBACK)
    with pytest.raises(ValueError):
        CallUrlSigner([("bad kid!", b"k" * 32)])
    with pytest.raises(ValueError):
        CallUrlSigner([])


KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.urlsafe_b64encode(bytes(range(200, 240))).decode().rstrip("=")


def test_parse_url_keys() -> None:
    assert parse_url_keys(f"k2:{KEY_B}, k1:{KEY_A}") == [
        ("k2", bytes(range(200, 240))),
        ("k1", b"a" * 32),
    ]
    assert parse_url_keys(f"A_b-9xyZ:{KEY_A}") == [("A_b-9xyZ", b"a" * 32)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "entry 1 is not kid:base64key"),
        (KEY_A, "entry 1 is not kid:base64key"),
        (f"k1:{KEY_A},", "entry 2 is not kid:base64key"),
        (f"k1:{KEY_A},k2:", "entry 2 is not kid:base64key"),
        (f"toolongkid:{KEY_A}", "entry 1: the key id must be"),
        (f"k.1:{KEY_A}", "entry 1: the key id must be"),
        (f"k1:{KEY_A},k1:{KEY_B}", "entry 2: key id k1 appears twice"),
        ("k1:not*base64", "entry 1 (k1): the key is not base64"),
        ("k1:" + base64.b64encode(b"a" * 31).decode(), "entry 1 (k1): the key must be at least 32"),
    ],
)
def test_parse_url_keys_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url_keys(text)
    assert str(info.value).startswith(message)
    assert KEY_A not in str(info.value) and KEY_B not in str(info.value)
