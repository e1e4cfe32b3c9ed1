"""``voicebridge call +1… --profile NAME``: place one outbound call through a running bridge.

It POSTs ``/api/calls`` (docs/outbound.md), prints the call's id, then polls
``GET /api/calls/{id}`` and prints each change of status until the call ends (or not,
with ``--no-wait``). The bearer token is ``--api-key`` or ``$VOICEBRIDGE_API_KEY`` (an
``OUTBOUND_API_KEYS`` key or an Entra access token with the app role); prefer the
variable, which stays out of the shell history and the process list.

Exit status: 0 when the request was accepted and (unless ``--no-wait``) the call was
answered and ended; 1 when it ended unanswered or failed (``no_answer``, ``busy``,
``failed``, ...) or did not end within ``--timeout``; 2 when the bridge refused the
request or could not be reached. Standard library only: it runs in the production image.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

#: Outcomes of a call that was answered and ended the normal way.
ANSWERED = ("callee_hung_up", "agent_hung_up", "transferred", "no_input", "max_duration")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("to", help="the number to call, E.164 (+15551234567)")
    parser.add_argument("--profile", default="default", help="the profile (default: default)")
    parser.add_argument(
        "--context", default=None, metavar="JSON", help='data for the agent: {"name": "Ada"}'
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the bridge (default http://127.0.0.1:8000)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer token (default: $VOICEBRIDGE_API_KEY): an API key or Entra token",
    )
    parser.add_argument("--idempotency-key", default=None, help="the same key dials once (24 h)")
    parser.add_argument(
        "--no-wait", action="store_true", help="print the id and exit; do not follow the call"
    )
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between status polls")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="stop following after this many seconds"
    )


def _request(
    url: str,
    token: str,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if body is None else "POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {"error": raw[:200].decode(errors="replace")}
    return value if isinstance(value, dict) else {"value": value}


def run(args: argparse.Namespace) -> int:
    token = args.api_key or os.environ.get("VOICEBRIDGE_API_KEY", "")
    if not token:
        print("voicebridge call: no token: pass --api-key or set VOICEBRIDGE_API_KEY")
        return 2
    body: dict[str, Any] = {"to": args.to, "profile": args.profile}
    if args.context:
        try:
            body["context"] = json.loads(args.context)
        except ValueError as exc:
            print(f"voicebridge call: --context is not JSON: {exc}")
            return 2
    base = args.url.rstrip("/")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    try:
        status, answer = _request(f"{base}/api/calls", token, body=body, headers=headers)
    except (urllib.error.URLError, OSError) as exc:
        print(f"voicebridge call: cannot reach {base}: {getattr(exc, 'reason', exc)}")
        return 2
    if status != 202:
        print(f"voicebridge call: refused: HTTP {status}: {answer.get('error', answer)}")
        return 2
    call_id = str(answer.get("id"))
    print(f"call {call_id}: {answer.get('status')} (profile {answer.get('profile')})", flush=True)
    if args.no_wait:
        return 0
    return _follow(base, token, call_id, args.poll, args.timeout)


def _follow(base: str, token: str, call_id: str, poll_s: float, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    shown = "dialling"
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        try:
            status, answer = _request(f"{base}/api/calls/{call_id}", token)
        except (urllib.error.URLError, OSError) as exc:
            print(f"  (status unavailable: {getattr(exc, 'reason', exc)})", flush=True)
            continue
        if status != 200:
            print(f"  (status: HTTP {status}: {answer.get('error', answer)})", flush=True)
            continue
        state = str(answer.get("status"))
        if state != shown:
            shown = state
            print(f"call {call_id}: {state}", flush=True)
        if state == "ended":
            outcome = answer.get("outcome")
            failure = f" ({answer['failure']})" if answer.get("failure") else ""
            print(f"call {call_id}: outcome {outcome}{failure}")
            return 0 if outcome in ANSWERED else 1
    print(f"call {call_id}: still {shown} after {timeout_s:g} s; stopped following it")
    return 1
