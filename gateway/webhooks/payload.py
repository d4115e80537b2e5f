"""What a webhook delivery says, and how it is signed (docs/webhooks.md is the receiver's side).

The body describes one transition, read back from the audit log, with the request as it stands
when the event is sent. The signature is HMAC-SHA256 under the webhook's secret over
`{timestamp}.{body}`, sent as `Countersign-Signature: t={timestamp},v1={hex digest}`: binding the
time lets a receiver refuse an old delivery replayed at it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from approvals.evidence import TRANSITIONS
from approvals.states import TERMINAL
from approvals.story import describe
from approvals.views import AuditEventView, RequestView

SIGNATURE_HEADER = "Countersign-Signature"
EVENT_HEADER = "Countersign-Event"
DELIVERY_HEADER = "Countersign-Delivery"


def event_body(event: AuditEventView, view: RequestView, base_url: str) -> dict[str, Any]:
    """The JSON object a receiver gets for one transition of one request."""
    status = TRANSITIONS[event.kind]
    # The request may have moved on before this transition's turn came: its story then is the log's sentence.
    story = describe(view) if view.status == status else event.message
    ended = view.ended_because.value if status in TERMINAL and view.ended_because is not None else None
    return {
        "id": event.seq,
        "type": event.kind,
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "status": status.value,
        "ended_because": ended,
        "story": story,
        "actor": event.actor,
        "message": event.message,
        "request": {
            "id": view.id,
            "tool": view.tool,
            "agent": view.agent,
            "upstream": view.upstream,
            "status": view.status.value,
            "expires_at": view.expires_at.isoformat().replace("+00:00", "Z"),
        },
        "links": {"request": f"{base_url}/approvals/{view.id}", "inbox": f"{base_url}/inbox"},
    }


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `Countersign-Signature` header's value for `body` sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
