"""What the fake posts: Event Grid ``IncomingCall`` (both schemas), the subscription handshake,
and the JWTs of callbacks and the media socket, verified against its JWKS.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jwt
import pytest
from azure.core.messaging import CloudEvent
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.sim.fake_acs.bridgelet import (
    connected_call,
    until,
)
from voicebridge.sim import fake_acs


async def test_incoming_call_eventgrid_shape_and_redelivery(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert call.incoming_call_status == 200
    headers, body = bridge.incoming[0]
    assert headers["aeg-event-type"] == "Notification"
    assert headers["aeg-delivery-count"] == "0"
    assert headers["aeg-subscription-name"]
    assert headers["Content-Type"].startswith("application/json")
    assert isinstance(body, list) and len(body) == 1
    event = body[0]
    assert event["eventType"] == "Microsoft.Communication.IncomingCall"
    assert event["subject"] == "/caller/4:+15551230001/recipient/4:+18005550100"
    assert event["dataVersion"] == "1.0" and event["metadataVersion"] == "1"
    data = event["data"]
    assert data["from"] == {
        "kind": "phoneNumber",
        "rawId": "4:+15551230001",
        "phoneNumber": {"value": "+15551230001"},
    }
    assert data["to"]["rawId"] == "4:+18005550100"
    assert data["incomingCallContext"] == call.incoming_call_context
    assert data["serverCallId"] == call.server_call_id
    assert data["correlationId"] == call.correlation_id

    other = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"")
    assert other.incoming_call_context != call.incoming_call_context

    assert await fake.redeliver_incoming_call(call, bridge.webhook) == 200
    again_headers, again = bridge.incoming[-1]
    assert again_headers["aeg-delivery-count"] == "1"
    assert again[0]["id"] == event["id"]


async def test_incoming_call_cloudevents_shape(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    call = await fake.place_call(webhook_url=bridge.webhook, caller_pcm=b"", schema="cloudevents")
    headers, body = bridge.incoming[0]
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    parsed = CloudEvent.from_dict(body)
    assert parsed.type == "Microsoft.Communication.IncomingCall"
    assert parsed.data["incomingCallContext"] == call.incoming_call_context


async def test_validate_subscription_both_schemas(harness: Any) -> None:
    fake, bridge = await harness(answer=False)
    result = await fake.validate_subscription(bridge.webhook)
    assert result["ok"] and result["body"] == {"validationResponse": result["validation_code"]}
    headers, body = bridge.incoming[0]
    assert headers["aeg-event-type"] == "SubscriptionValidation"
    assert body[0]["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert (await fake.validate_subscription(bridge.webhook, schema="cloudevents"))["ok"]


async def test_jwks_verifies_the_tokens_it_signs(harness: Any) -> None:
    fake, bridge = await harness()
    call = await connected_call(fake, bridge)
    await until(lambda: len(bridge.callbacks) >= 1)
    media_token = bridge.media_headers["Authorization"].removeprefix("Bearer ")
    callback_token = bridge.callbacks[0][0]["Authorization"].removeprefix("Bearer ")
    # PyJWKClient fetches with blocking urllib: keep it off the loop serving the JWKS.
    client = jwt.PyJWKClient(fake.jwks_url)

    def verify(token: str) -> dict[str, Any]:
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(
            token, key.key, algorithms=["RS256"], issuer=fake_acs.ISSUER, audience=fake.resource_id
        )

    media_claims = await asyncio.to_thread(verify, media_token)
    callback_claims = await asyncio.to_thread(verify, callback_token)
    assert media_claims["exp"] - media_claims["iat"] == 24 * 3600
    assert callback_claims["exp"] - callback_claims["iat"] == 5 * 60
    assert jwt.get_unverified_header(media_token)["kid"] == fake.jwks()["keys"][0]["kid"]

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        await asyncio.to_thread(verify, fake.sign_jwt(key=foreign))
    with pytest.raises(jwt.MissingRequiredClaimError):
        await asyncio.to_thread(verify, fake.sign_jwt(aud=None))
    with pytest.raises(jwt.ExpiredSignatureError):
        await asyncio.to_thread(verify, fake.sign_jwt(exp=1))

    async with aiohttp.ClientSession() as session, session.get(fake.openid_config_url) as resp:
        config = await resp.json()
    assert config["issuer"] == fake_acs.ISSUER and config["jwks_uri"] == fake.jwks_url
    await call.hang_up()
