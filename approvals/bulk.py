"""Rejecting every pending request of one agent: what an approver does when an agent floods the inbox.

Each request is rejected through `ApprovalService.reject`, one by one, so every rule of a single
decision holds for each: the approver must be among the request's approvers, the channel must be
one the request is decided through, a required reason must be given, and a request someone else
decided in the meantime stays decided. The outcome says which were rejected and which were
refused, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from approvals.approvers import Approver
from approvals.errors import AlreadyDecided, InvalidDecision, NotAllowed
from approvals.service import ApprovalService
from approvals.states import Status

# More than any agent may hold pending (agent_limits.max_pending_per_agent); one call stays bounded.
MAX_BULK = 10_000


@dataclass(frozen=True)
class Refused:
    request_id: str
    why: str


@dataclass
class BulkRejection:
    agent: str
    rejected: list[str] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)

    @property
    def message(self) -> str:
        text = f"rejected {len(self.rejected)} pending request(s) of agent {self.agent!r}"
        if self.refused:
            text += f"; {len(self.refused)} could not be rejected"
        return text


async def reject_pending_of(
    service: ApprovalService, agent: str, approver: Approver, channel: str, reason: str | None
) -> BulkRejection:
    """Reject each request of `agent` that is pending now; each one is decided (or refused) on its own."""
    outcome = BulkRejection(agent)
    for view in await service.list_requests(statuses={Status.PENDING}, agent=agent, limit=MAX_BULK):
        try:
            decided = await service.reject(view.id, approver, channel, reason)
        except NotAllowed as exc:
            outcome.refused.append(Refused(view.id, exc.why))
        except AlreadyDecided as exc:
            outcome.refused.append(Refused(view.id, f"already {exc.status}" + (f" by {exc.by}" if exc.by else "")))
        except InvalidDecision as exc:
            outcome.refused.append(Refused(view.id, str(exc)))
        else:
            if decided.request.status == Status.REJECTED:
                outcome.rejected.append(view.id)
            else:
                outcome.refused.append(Refused(view.id, decided.message))
    return outcome
