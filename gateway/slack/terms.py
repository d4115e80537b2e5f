"""The Slack thread reply that tells approvers a request was escalated to them, once per step.

The message itself shows the request's terms (`messages.terms_section`); this is the notice.
"""

from __future__ import annotations

from approvals.approvers import ApproverDirectory
from approvals.escalation import EscalationStep
from approvals.views import RequestView
from gateway.slack.messages import Links, escape, link, slack_date

# The outbox kind of the notice for escalation step N (1-based): one item, so one notice, per step.
ESCALATION_KIND = "escalation"


def escalation_kind(step: int) -> str:
    return f"{ESCALATION_KIND}{step}"


def escalation_text(view: RequestView, step: EscalationStep, approvers: ApproverDirectory, links: Links) -> str:
    """The thread reply for a step just taken: who may decide now, mentioning those Slack knows."""
    mentions = [f"<@{a.slack_user}>" for a in approvers.allowed_for(step.approvers) if a.slack_user]
    who = escape(", ".join(step.approvers)) + (f" ({' '.join(mentions)})" if mentions else "")
    return (
        f":rotating_light: Escalated: nobody has decided yet, so {who} may decide this request now. It expires "
        f"{slack_date(view.expires_at)}. Decide here or in the {link(links.request(view.id), 'inbox')}."
    )
