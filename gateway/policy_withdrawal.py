"""Open requests a new policy denies or hides end, "withdrawn by a policy change"; nothing is loosened.

A request carries what it was given when it was made, and a policy change never loosens it: a
request the new policy would allow outright, or hold for other approvers, still waits for its
decision. A change only ever takes away: a pending request, or an approved one that has not
started, whose call (tool and stored arguments) the policy in force denies or hides is cancelled
with the end reason `policy_withdrawn`, the rule's message and the policy's version, and its agent
is told `[POLICY DENIED]`. A request that is executing is never touched: the upstream may be running it.

Three moments apply this, so neither a race nor a replica that started late lets such a call run:
every reload and every start sweep the open requests; a call parked while the policy changed under
it is judged again; and an approved call is judged once more just before it would start.
"""

from __future__ import annotations

import logging
from typing import Any

from approvals.service import ApprovalService
from approvals.views import RequestView
from gateway.identity import AgentDirectory
from gateway.policy import Evaluation
from gateway.policy_store import PolicyStore
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)

# Rules that refuse a call whatever its arguments: they can be applied without the tool's schema.
_ARGUMENT_FREE = frozenset({"hide", "default"})


class PolicyWithdrawals:
    def __init__(
        self,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: Upstreams,
        agents: AgentDirectory | None = None,
    ) -> None:
        self.service = service
        # Rules on who calls judge the request's agent by its groups as the gateway knows them now.
        self.agents = agents or AgentDirectory()
        self.policies = policies
        self.upstreams = upstreams

    def refusal(self, view: RequestView) -> Evaluation | None:
        """The policy in force's refusal of the request's call; None if it does not refuse it, or cannot tell yet.

        Arguments are judged with the defaults of the tool's schema, as at intake. While the upstream the
        request names does not offer the tool, only argument-free refusals (hidden, default deny) apply;
        the rest is judged before the call would start, when that upstream must be connected anyway.
        """
        if view.damage:
            return None  # a request whose record cannot be read is never approved or run anyway
        name = self.upstreams.catalog_name(view.upstream, view.upstream_tool)
        schema = self.upstreams.input_schema(name) if name is not None else None
        arguments: dict[str, Any] = view.arguments
        evaluation = self.policies.current.evaluate(
            view.tool, arguments, schema, agent=self.agents.identity(view.agent)
        )
        if evaluation.action not in ("deny", "hidden"):
            return None
        if schema is None and evaluation.rule not in _ARGUMENT_FREE:
            return None
        return evaluation

    async def withdraw_if_refused(self, view: RequestView) -> bool:
        """End the request if the policy in force refuses its call and it has not started. True if it was ended."""
        if view.is_terminal:
            return False
        evaluation = self.refusal(view)
        if evaluation is None:
            return False
        identity = {"policy_version": self.policies.version, "rule": evaluation.rule}
        withdrawn = await self.service.withdraw(view.id, evaluation.message, policy=identity)
        if withdrawn:
            log.info("request %s withdrawn by the policy change: %s", view.id, evaluation.message)
        return withdrawn

    async def sweep(self, why: str) -> int:
        """Withdraw every open request the policy in force refuses; how many were withdrawn."""
        withdrawn = 0
        for view in await self.service.waiting():
            withdrawn += await self.withdraw_if_refused(view)
        if withdrawn:
            log.warning("%s: %d open request(s) withdrawn by the policy change", why, withdrawn)
        return withdrawn
