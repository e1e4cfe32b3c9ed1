"""What the fake ACS posts to the bridge: Event Grid deliveries (``IncomingCall``, the
subscription handshake) and CloudEvents callbacks, each callback with a Bearer JWT signed by
the fake's own RSA key and served as a JWKS (protocols.md §1, §3, §5).

:class:`AcsEvents` is the bottom layer of :class:`~voicebridge.sim.fake_acs.FakeAcs`: it holds
the fake's configuration and state; :class:`~.flow.CallFlow` and :class:`~.rest.CallAutomation`
sit on it.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import logging
import secrets
import time
import uuid
from collections.abc import Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from voicebridge.config import ACS_JWT_ISSUER
from voicebridge.sim.fake_acs.fastpath import FastPath
from voicebridge.sim.fake_acs.keypad import DtmfPlan
from voicebridge.sim.fake_acs.media import FakeCall, now_utc, phone
from voicebridge.sim.faults import FaultValue, check_faults

if TYPE_CHECKING:
    from voicebridge.sim.fake_acs.outbound import Callee

log = logging.getLogger(__name__)

#: ``iss`` of Call Automation tokens (protocols.md §5): the value the bridge expects.
ISSUER = ACS_JWT_ISSUER
#: Token lifetimes (protocols.md §5): 5 min for callbacks, 24 h for the media socket.
CALLBACK_TOKEN_LIFETIME_S = 5 * 60
MEDIA_TOKEN_LIFETIME_S = 24 * 3600
EVENT_PREFIX = "Microsoft.Communication."
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
#: Event Grid's delivery retry schedule (seconds after the previous attempt; learn.microsoft.com
#: "Event Grid message delivery and retry"), as far as a ringing call can use it.
EVENT_GRID_RETRY_S = (10.0, 30.0)
#: Webhook answers Event Grid retries. It retries every failure except 400, 401, 403 and
#: 413; the fake retries only the answers a live endpoint gives to ask for a retry (a
#: webhook it cannot reach is not retried here).
EVENT_GRID_RETRY_STATUSES = frozenset({404, 408, 429, 500, 502, 503, 504})
#: The response header a bridge node names itself in (cluster tests), on every HTTP response
#: and on the media WebSocket handshake; the fake records it per call (FakeCall.media_by, ...).
NODE_HEADER = "x-voicebridge-node"


def answering_of(body: bytes) -> int | None:
    """The ``answering`` int of a webhook's JSON reply, None when absent or not an int."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        return None
    answering = parsed.get("answering") if isinstance(parsed, dict) else None
    if isinstance(answering, bool) or not isinstance(answering, int):
        return None
    return answering


def iso7(moment: datetime) -> str:
    """Event Grid style time, 7 fractional digits: ``2022-08-25T19:27:24.2415391Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


class AcsEvents(abc.ABC):
    """The fake's state, its tokens, and what it posts (see the module docstring); the
    constructor's arguments are described on :class:`~voicebridge.sim.fake_acs.FakeAcs`."""

    def __init__(
        self,
        *,
        access_key: str | None = None,
        resource_id: str | None = None,
        acs_rate: int = 16000,
        speed: float = 1.0,
        hangup_after_audio_s: float = 1.0,
        ring_timeout_s: float = 30.0,
        faults: Mapping[str, FaultValue] | None = None,
        fast: bool = False,
    ) -> None:
        self.faults = check_faults(faults, "acs")
        if acs_rate not in (16000, 24000):
            raise ValueError("acs_rate must be 16000 (pcm16KMono) or 24000 (pcm24KMono)")
        if not speed > 0:
            raise ValueError("speed must be positive")
        if hangup_after_audio_s < 0:
            raise ValueError("hangup_after_audio_s must be >= 0")
        self.access_key = access_key or base64.b64encode(secrets.token_bytes(64)).decode()
        base64.b64decode(self.access_key, validate=True)  # the SDK decodes it too (§2.1)
        self.resource_id = resource_id or str(uuid.uuid4())
        self.acs_rate = acs_rate
        self.speed = float(speed)
        self.hangup_after_audio_s = float(hangup_after_audio_s)
        self.ring_timeout_s = float(ring_timeout_s)
        self.issuer = ISSUER
        self.requests: list[dict[str, Any]] = []
        self.calls: dict[str, FakeCall] = {}
        self.placed: list[FakeCall] = []
        self.internal_errors: list[str] = []  # bugs in the fake itself; tests assert empty
        #: ``callConnections:answer`` requests received (every call, refused ones included)
        self.answer_requests = 0
        self._by_context: dict[str, FakeCall] = {}
        # Outbound calls (.outbound): what callees say and do, createCall retries.
        self._callee_audio = b""
        self._callees: dict[str, Callee] = {}
        self._create_repeats: dict[str, FakeCall] = {}
        self._outbound_added = asyncio.Event()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(16)
        #: the opt-in speed-ups (``fast=True``); None: the plain reference paths
        self.fastpath: FastPath | None = FastPath() if fast else None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._endpoint: str | None = None
        self._topic = (
            f"/subscriptions/{uuid.uuid4()}/resourcegroups/voicebridge-sim/providers"
            "/microsoft.communication/communicationservices/fake-acs"
        )

    # ---------------------------------------------------------------- addresses

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``; only after :meth:`start`.

        Pass it to ``CallAutomationClient`` as is: with a trailing slash, SDK 1.6.0
        signs the host as ``127.0.0.1:PORT/`` and every request gets 401.
        """
        if self._endpoint is None:
            raise RuntimeError("FakeAcs.start() has not been called")
        return self._endpoint

    @property
    def connection_string(self) -> str:
        return f"endpoint={self.endpoint}/;accesskey={self.access_key}"

    @property
    def jwks_url(self) -> str:
        return f"{self.endpoint}/calling/keys"

    @property
    def openid_config_url(self) -> str:
        return f"{self.endpoint}/calling/.well-known/acsopenidconfiguration"

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set served at :attr:`jwks_url`."""
        key = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        key.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [key]}

    def sign_jwt(
        self,
        *,
        lifetime_s: float = CALLBACK_TOKEN_LIFETIME_S,
        kid: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An RS256 token as Call Automation signs it (protocols.md §5).

        Claims ``iss``, ``aud`` (= :attr:`resource_id`), ``iat``, ``nbf`` and ``exp``
        (now + ``lifetime_s``); header ``kid``. For abuse tests: ``**claims``
        override claims (``None`` removes one), ``kid`` changes the header kid,
        ``key`` signs with another RSA key, ``headers`` adds header fields.

        Tokens are whole-second and RS256 (PKCS #1 v1.5) signatures deterministic, so with
        the fast path a plain token is signed once per second and lifetime and then reused:
        the same bytes signing again would give, for a few hundred microseconds less per
        callback.
        """
        now = int(time.time())
        plain = kid is None and key is None and not headers and not claims
        memo = self.fastpath if plain else None
        memo_key = (now, int(lifetime_s), self.issuer, self.resource_id, self._kid, self._key)
        if memo is not None and (known := memo.token(memo_key)) is not None:
            return known
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.resource_id,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_s),
        }
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        header = {"kid": kid or self._kid, **(headers or {})}
        token = jwt.encode(payload, key or self._key, algorithm="RS256", headers=header)
        if memo is not None:
            memo.remember_token(memo_key, token)
        return token

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, tracked so :meth:`stop` can cancel it.

        A failure is logged and kept in :attr:`internal_errors`: a bug in the fake
        must be loud, not a hung test.
        """
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("fake ACS task %s failed", task.get_name(), exc_info=exc)
            self.internal_errors.append(f"{task.get_name()}: {type(exc).__name__}: {exc}")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("FakeAcs.start() has not been called")
        return self._session

    async def place_call(
        self,
        *,
        webhook_url: str,
        caller_pcm: bytes,
        caller: str = "+15551230001",
        recipient: str = "+18005550100",
        schema: str = "eventgrid",
        fail_answer: bool = False,
        faults: Mapping[str, FaultValue] | None = None,
        call_connection_id: str | None = None,
        dtmf: DtmfPlan | None = None,
    ) -> FakeCall:
        """Ring the bridge: POST an ``IncomingCall`` event to ``webhook_url`` (§1).

        ``caller_pcm`` is PCM16LE mono at :attr:`acs_rate`: what the caller says,
        from the first media frame on. ``schema`` is ``"eventgrid"`` (an array,
        ``application/json``) or ``"cloudevents"`` (one structured CloudEvent).
        With ``fail_answer`` the answer REST call succeeds but ``AnswerFailed`` is
        posted instead of ``CallConnected``. Returns once the webhook replied (its
        status is in :attr:`FakeCall.incoming_call_status`, 0 if it could not be
        reached); the call then lives on in the background.

        ``faults`` (``acs-*`` names, as for the fake) apply to this call only, on top of
        the fake-wide ones. ``call_connection_id`` is the id the answer will assign
        (default: a new UUID), so a test can know it before the bridge does — e.g. to
        fault the Voice Live session the bridge opens for this call, which carries it as
        ``x-ms-client-request-id``. ``ValueError`` for bad faults, an unknown schema, or
        an id another call of this fake already has or will get.

        ``dtmf`` is what the caller keys: ``[(at_s, "1234#"), ...]``, each key a ``DtmfData``
        message 0.25 s of call time after the previous one from ``at_s`` on, sent only when
        the answer enabled DTMF tones (:mod:`.keypad`; ``dtmf_from_segments`` reads it from a
        caller script). ``ValueError`` for a bad plan.
        """
        if schema not in ("eventgrid", "cloudevents"):
            raise ValueError("schema must be 'eventgrid' or 'cloudevents'")
        if call_connection_id is not None and (
            call_connection_id in self.calls
            or any(c._preset_connection_id == call_connection_id for c in self.placed)
        ):
            raise ValueError(f"call connection id {call_connection_id!r} is already in use")
        self._client()
        call = FakeCall(
            self,
            caller=caller,
            recipient=recipient,
            caller_pcm=caller_pcm,
            schema=schema,
            fail_answer=fail_answer,
            faults=faults,
            call_connection_id=call_connection_id,
            dtmf=dtmf,
        )
        self.placed.append(call)
        call.webhook_url = webhook_url
        self._by_context[call.incoming_call_context] = call
        call.incoming_call_event = self._incoming_call_event(call)
        call._ring_task = self._spawn(self._ring_timeout(call), f"ring-{call.event_id[:8]}")
        status = await self._deliver_incoming(call, webhook_url)
        if status in EVENT_GRID_RETRY_STATUSES:
            self._spawn(self._retry_incoming(call, webhook_url), f"retry-{call.event_id[:8]}")
        return call

    async def _retry_incoming(self, call: FakeCall, webhook_url: str) -> None:
        """Event Grid's retries of a delivery the webhook answered with a status it retries
        (:data:`EVENT_GRID_RETRY_STATUSES`): the same event again after each step of
        :data:`EVENT_GRID_RETRY_S` (call time), while the call still rings."""
        for delay in EVENT_GRID_RETRY_S:
            await asyncio.sleep(delay / self.speed)
            if call.answered.is_set() or call._ending:
                return
            if await self._deliver_incoming(call, webhook_url) not in EVENT_GRID_RETRY_STATUSES:
                return

    def _incoming_call_event(self, call: FakeCall) -> dict[str, Any]:
        """The ``IncomingCall`` event of ``call``, in its schema (§1)."""
        data = {
            "to": phone(call.recipient),
            "from": phone(call.caller),
            "serverCallId": call.server_call_id,
            "callerDisplayName": "",
            "incomingCallContext": call.incoming_call_context,
            "correlationId": call.correlation_id,
        }
        subject = f"/caller/4:{call.caller}/recipient/4:{call.recipient}"
        event_type = EVENT_PREFIX + "IncomingCall"
        if call.schema == "eventgrid":
            return {
                "id": call.event_id,
                "topic": self._topic,
                "subject": subject,
                "data": data,
                "eventType": event_type,
                "dataVersion": "1.0",
                "metadataVersion": "1",
                "eventTime": iso7(now_utc()),
            }
        return {
            "specversion": "1.0",
            "type": event_type,
            "source": self._topic,
            "id": call.event_id,
            "time": iso7(now_utc()),
            "subject": subject,
            "datacontenttype": "application/json",
            "data": data,
        }

    async def redeliver_incoming_call(
        self, call: FakeCall, webhook_url: str | None = None, *, times: int = 1
    ) -> int:
        """POST the same ``IncomingCall`` again, ``times`` times one after the other, as
        Event Grid's at-least-once retries do.

        The same event (same id, same ``incomingCallContext``), ``aeg-delivery-count`` one
        higher each time; the bridge should de-duplicate (§1). ``webhook_url`` defaults to
        the one :meth:`place_call` used. Each delivery is recorded in
        :attr:`FakeCall.incoming_deliveries`. Returns the status of the last one (0: no reply).
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        url = webhook_url or call.webhook_url
        if url is None:
            raise ValueError("no webhook URL: the call was not placed by this fake")
        status = 0
        for _ in range(times):
            status = await self._deliver_incoming(call, url)
        return status

    async def _deliver_incoming(self, call: FakeCall, webhook_url: str) -> int:
        if call.schema == "eventgrid":
            body = json.dumps([call.incoming_call_event])
            content_type = "application/json; charset=utf-8"
        else:
            body = json.dumps(call.incoming_call_event)
            content_type = "application/cloudevents+json; charset=utf-8"
        headers = {
            "Content-Type": content_type,
            "aeg-event-type": "Notification",
            "aeg-subscription-name": "VOICEBRIDGE-INCOMING-CALL",
            "aeg-delivery-count": str(call.delivery_count),
            "aeg-data-version": "1.0",
            "aeg-metadata-version": "1",
        }
        call.delivery_count += 1
        call._log("incoming_call_post", {"delivery": call.delivery_count - 1})
        status = 0
        delivery: dict[str, Any] = {"node": None, "status": 0, "answering": None}
        try:
            async with self._client().post(webhook_url, data=body, headers=headers) as resp:
                status = resp.status
                delivery["node"] = resp.headers.get(NODE_HEADER)
                delivery["answering"] = answering_of(await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            call._log("incoming_call_failed", {"error": f"{type(exc).__name__}: {exc}"})
        delivery["status"] = status
        call.incoming_deliveries.append(delivery)
        call.incoming_call_status = status
        call._log("incoming_call_status", {"status": status})
        return status

    async def validate_subscription(
        self, webhook_url: str, *, schema: str = "eventgrid"
    ) -> dict[str, Any]:
        """Run Event Grid's endpoint-validation handshake against ``webhook_url`` (§1).

        ``eventgrid``: POST a ``SubscriptionValidationEvent``; the bridge must reply
        200 with ``{"validationResponse": code}``. ``cloudevents``: OPTIONS with
        ``WebHook-Request-Origin``; the bridge must reply 200 with
        ``WebHook-Allowed-Origin``. Returns ``{"status", "body", "headers", "ok"}``
        plus ``validation_code`` (eventgrid) — ``ok`` says whether the reply is one
        Event Grid would accept.
        """
        session = self._client()
        if schema == "cloudevents":
            origin = "eventgrid.azure.net"
            async with session.options(
                webhook_url, headers={"WebHook-Request-Origin": origin}
            ) as resp:
                text = await resp.text()
                allowed = resp.headers.get("WebHook-Allowed-Origin")
                return {
                    "status": resp.status,
                    "body": text,
                    "headers": dict(resp.headers),
                    "ok": resp.status == 200 and allowed in (origin, "*"),
                }
        code = str(uuid.uuid4())
        event = {
            "id": str(uuid.uuid4()),
            "topic": self._topic,
            "subject": "",
            "data": {
                "validationCode": code,
                "validationUrl": (
                    "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/"
                    f"voicebridge/validate?id={code}&t={iso7(now_utc())}"
                    "&apiVersion=2018-05-01-preview&token=fake"
                ),
            },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": iso7(now_utc()),
            "metadataVersion": "1",
            "dataVersion": "1",
        }
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "aeg-event-type": "SubscriptionValidation",
            "aeg-subscription-name": "VOICEBRIDGE-INCOMING-CALL",
            "aeg-delivery-count": "0",
            "aeg-data-version": "1",
            "aeg-metadata-version": "1",
        }
        async with session.post(webhook_url, data=json.dumps([event]), headers=headers) as resp:
            text = await resp.text()
            try:
                parsed: Any = json.loads(text) if text else None
            except ValueError:
                parsed = None
            ok = (
                resp.status == 200
                and isinstance(parsed, dict)
                and parsed.get("validationResponse") == code
            )
            return {
                "status": resp.status,
                "body": parsed if parsed is not None else text,
                "headers": dict(resp.headers),
                "validation_code": code,
                "ok": ok,
            }

    @abc.abstractmethod
    async def _end(self, call: FakeCall, reason: str) -> None:
        """End ``call``: the call-flow layer implements it (:meth:`~.flow.CallFlow._end`);
        the ring timeout here needs it, so the layer declares it abstract."""

    async def _ring_timeout(self, call: FakeCall) -> None:
        await asyncio.sleep(self.ring_timeout_s)
        if not call.answered.is_set() and not call._ending:
            reason = "answer_failed" if call._answer_attempts else "not_answered"
            await self._end(call, reason)

    # ---------------------------------------------------------------- callbacks

    def _cloud_event(
        self,
        call: FakeCall,
        kind: str,
        extra: Mapping[str, Any] | None,
        operation_context: str | None,
        result: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """One callback CloudEvent (§3)."""
        event_type = EVENT_PREFIX + kind
        source = f"calling/callConnections/{call.call_connection_id}"
        data: dict[str, Any] = {
            "callConnectionId": call.call_connection_id,
            "serverCallId": call.server_call_id,
            "correlationId": call.correlation_id,
            "operationContext": operation_context,
            "resultInformation": dict(
                result or {"code": 200, "subCode": 0, "message": "Action completed successfully."}
            ),
            "version": call.api_version,
            "publicEventType": event_type,
        }
        if operation_context is None:
            del data["operationContext"]
        data.update(extra or {})
        return {
            "id": str(uuid.uuid4()),
            "source": source,
            "type": event_type,
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "time": now_utc().isoformat(),
            "subject": source,
            "data": data,
        }

    async def _post_event(
        self,
        call: FakeCall,
        kind: str,
        extra: Mapping[str, Any] | None = None,
        *,
        operation_context: str | None = None,
        uri: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> int:
        """POST one callback (a one-element CloudEvents array) with a fresh JWT.

        Serialised per call so events arrive in the order they happened. Returns the
        bridge's HTTP status, 0 when it could not be reached; never raises.
        """
        target = uri or call.callback_uri
        if target is None or call._media_dropped:
            return 0
        context = operation_context if operation_context is not None else call.operation_context
        event = self._cloud_event(call, kind, extra, context, result)
        async with call._cb_lock:
            status = await self._post_once(call, target, event, kind)
            if "acs-duplicate-callbacks" in call.faults:
                call._fired("acs-duplicate-callbacks", type=kind, id=event["id"])
                await self._post_once(call, target, event, kind, duplicate=True)
        if kind in ("MediaStreamingStarted", "MediaStreamingFailed"):
            call._media_started_posted.set()
        return status

    async def _post_once(
        self,
        call: FakeCall,
        target: str,
        event: dict[str, Any],
        kind: str,
        *,
        duplicate: bool = False,
    ) -> int:
        """One POST of ``event`` with a fresh JWT; recorded in the call's callbacks."""
        sent_at = time.monotonic()
        token = self.sign_jwt(lifetime_s=CALLBACK_TOKEN_LIFETIME_S)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        status = 0
        node: str | None = None
        detail: dict[str, Any] = {"type": kind}
        if duplicate:
            detail["duplicate"] = True
        try:
            async with self._client().post(
                target, data=json.dumps([event]), headers=headers
            ) as resp:
                status = resp.status
                node = resp.headers.get(NODE_HEADER)
                await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The bridge may already have dropped the call; that is its right.
            detail["error"] = f"{type(exc).__name__}: {exc}"
        detail["status"] = status
        call._callbacks.append((sent_at, kind, status))
        call.callbacks_by.append({"type": kind, "node": node, "status": status})
        call._timeline.append((sent_at, "callback", detail))
        return status

    def _media_update(self, status: str, details: str) -> dict[str, Any]:
        return {
            "mediaStreamingUpdate": {
                "contentType": "Audio",
                "mediaStreamingStatus": status,
                "mediaStreamingStatusDetails": details,
            }
        }
