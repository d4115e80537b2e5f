"""The shape of an interaction payload: every field the gateway reads, with the type Slack gives it.

The signature proves who sent a payload, not that it is well formed. Checking the shape once,
before anything is read, keeps a `null` action or a string where an object belongs from
raising deep in the handler (a 500, and perhaps half a decision); the payload is refused as a
whole instead (400 over HTTP, ignored in Socket Mode).
"""

from __future__ import annotations

from typing import Any


class MalformedPayload(ValueError):
    """A verified payload whose shape is not one Slack sends; nothing in it is acted on."""


def check_shape(payload: dict[str, Any]) -> None:
    """Raise MalformedPayload unless the fields this module reads have the types Slack gives them."""

    def mapping(value: object, where: str, *, optional: bool = False) -> dict[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise MalformedPayload(f"`{where}` must be an object")
        return value

    def string(value: object, where: str, *, optional: bool = False) -> None:
        if not (isinstance(value, str) or (optional and value is None)):
            raise MalformedPayload(f"`{where}` must be a string")

    kind = payload.get("type")
    string(kind, "type")
    if kind not in ("block_actions", "view_submission"):
        return  # Acknowledged and otherwise ignored (view_closed, shortcuts…): their shape is not read.
    string(mapping(payload.get("user"), "user").get("id"), "user.id")
    string(mapping(payload.get("user"), "user").get("team_id"), "user.team_id", optional=True)
    if kind == "block_actions":
        container = mapping(payload.get("container"), "container", optional=True)
        for key in ("type", "channel_id", "message_ts", "view_id"):
            string(container.get(key), f"container.{key}", optional=True)
        string(mapping(payload.get("channel"), "channel", optional=True).get("id"), "channel.id", optional=True)
        string(payload.get("trigger_id"), "trigger_id", optional=True)
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise MalformedPayload("`actions` must be a non-empty list")
        for index, action in enumerate(actions):
            action = mapping(action, f"actions[{index}]")
            for key in ("action_id", "value", "action_ts"):
                string(action.get(key), f"actions[{index}].{key}", optional=key != "action_id")
        return
    view = mapping(payload.get("view"), "view")
    for key in ("id", "callback_id", "private_metadata"):
        string(view.get(key), f"view.{key}", optional=True)
    values = mapping(
        mapping(view.get("state"), "view.state", optional=True).get("values"), "view.state.values", optional=True
    )
    for block_id, block in values.items():
        for action_id, value in mapping(block, f"view.state.values.{block_id}").items():
            field_value = mapping(value, f"view.state.values.{block_id}.{action_id}")
            string(field_value.get("value"), f"view.state.values.{block_id}.{action_id}.value", optional=True)
