"""The policy document: parse and validate it, and evaluate a tool call against it.

The model and its evaluation live in `gateway.policy_model`, the parser in `gateway.policy_document`,
lint warnings and `explain` in `gateway.policy_report`; this module gathers the names callers import.

The format is PolicyLayer's (``version``, ``default``, ``hide``, ``all_tools``, ``tools`` with ``deny_if``,
``require`` and ``limits``), so its published documents load unchanged. Countersign adds
``require_approval`` rules and an ``approval`` block per tool (and on ``all_tools``), which park a call
for a human instead of refusing it.
"""

from __future__ import annotations

from gateway.policy_document import PolicyError, load_policy, parse_policy
from gateway.policy_model import (
    Action,
    ApprovalSettings,
    Channel,
    Condition,
    Default,
    Evaluation,
    Limit,
    Op,
    Policy,
    Rule,
    Scope,
    ToolPolicy,
    Window,
)

__all__ = [
    "Action",
    "ApprovalSettings",
    "Channel",
    "Condition",
    "Default",
    "Evaluation",
    "Limit",
    "Op",
    "Policy",
    "PolicyError",
    "Rule",
    "Scope",
    "ToolPolicy",
    "Window",
    "load_policy",
    "parse_policy",
]
