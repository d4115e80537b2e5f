"""The prompts, resources and completions agents reach through the gateway, under the policy, each read audited.

Reading is never held: a prompt fetch, a resource read, a subscription or a completion is allowed
or refused at once. A hidden prompt or resource is left out of every listing and refused as if it
did not exist; a denied one is listed and refused with `[POLICY DENIED]`. Every prompt fetch and
resource read writes one audit row (`prompt.get`, `resource.read`) with its outcome and a
size-bounded detail: the name or URI, the rule that decided, and how many bytes came back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import mcp_types as types
from mcp import MCPError
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from approvals.audit import Event, canonical_json
from approvals.service import ApprovalService
from gateway.errors import Tag
from gateway.policy_reads import ReadDecision, ReadPolicy
from gateway.policy_store import PolicyStore
from gateway.relay_catalog import Catalog, RelayUnavailable, Target, dump
from gateway.relay_subscriptions import Subscriptions
from gateway.relay_traffic import Traffic

log = logging.getLogger(__name__)

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"

Ctx = ServerRequestContext[Any, Any]
AgentOf = Callable[[Ctx], str]
R = TypeVar("R")

# Audit rows keep the name or URI and the prompt's arguments up to these sizes.
_NAME_LIMIT = 500
_ARGUMENTS_LIMIT = 4_096


class RelayServer(Server[Any]):
    """The gateway's MCP server: it advertises prompts, resources, completions and logging only as upstreams have them.

    Capabilities are worked out at each handshake (2025) or discovery (2026) from the upstreams'
    last known capabilities, so a gateway in front of tool-only servers offers tools only.
    """

    catalog: Catalog | None = None

    def get_capabilities(self, *args: Any, **kwargs: Any) -> types.ServerCapabilities:
        caps = super().get_capabilities(*args, **kwargs)
        if "tasks/get" in self._request_handlers and kwargs.get("protocol_version") not in MODERN_PROTOCOL_VERSIONS:
            # Held calls can be tasks in the handshake era (gateway.tasks); the 2026 era has no core tasks.
            tasks = types.ServerTasksCapability(
                list=types.TasksListCapability(),
                cancel=types.TasksCancelCapability(),
                requests=types.ServerTasksRequestsCapability(
                    tools=types.TasksToolsCapability(call=types.TasksCallCapability())
                ),
            )
            caps = caps.model_copy(update={"tasks": tasks})
        elif "tasks/get" in self._request_handlers:  # 2026: the tasks extension (gateway.tasks)
            caps = caps.model_copy(update={"extensions": {**(caps.extensions or {}), TASKS_EXTENSION: {}}})
        catalog = self.catalog
        if catalog is None:
            return caps
        update: dict[str, Any] = {}
        for field in ("prompts", "resources", "completions", "logging"):
            if not catalog.offers(field):
                update[field] = None
        if caps.resources is not None and "resources" not in update and not catalog.subscribable():
            update["resources"] = caps.resources.model_copy(update={"subscribe": False})
        return caps.model_copy(update=update)


class Relay:
    """Handlers for prompts, resources, subscriptions, completion and log levels, installed on the gateway's server."""

    def __init__(
        self,
        catalog: Catalog,
        policies: PolicyStore,
        service: ApprovalService,
        subscriptions: Subscriptions,
        traffic: Traffic,
    ) -> None:
        self.catalog = catalog
        self.policies = policies
        self.service = service
        self.subscriptions = subscriptions
        self.traffic = traffic

    def install(self, server: Server[Any], agent_of: AgentOf) -> None:
        def handler(fn: Callable[[Ctx, Any, str], Awaitable[Any]]) -> Callable[[Ctx, Any], Awaitable[Any]]:
            async def run(ctx: Ctx, params: Any) -> Any:
                return await fn(ctx, params, agent_of(ctx))

            return run

        add = server.add_request_handler
        add("prompts/list", types.PaginatedRequestParams, handler(self.list_prompts))
        add("prompts/get", types.GetPromptRequestParams, handler(self.get_prompt))
        add("resources/list", types.PaginatedRequestParams, handler(self.list_resources))
        add("resources/templates/list", types.PaginatedRequestParams, handler(self.list_templates))
        add("resources/read", types.ReadResourceRequestParams, handler(self.read_resource))
        add("resources/subscribe", types.SubscribeRequestParams, handler(self.subscribe))
        add("resources/unsubscribe", types.UnsubscribeRequestParams, handler(self.unsubscribe))
        add("completion/complete", types.CompleteRequestParams, handler(self.complete))
        add("logging/setLevel", types.SetLevelRequestParams, self.traffic.set_level)
        self.traffic.agent_of = agent_of
        server.middleware.append(self.traffic.middleware)

    # ---- listings

    async def list_prompts(self, ctx: Ctx, params: Any, agent: str) -> types.ListPromptsResult:
        rules = self.policies.current.prompts
        return types.ListPromptsResult(prompts=[p for _, p in self.catalog.prompts() if not rules.is_hidden(p.name)])

    async def list_resources(self, ctx: Ctx, params: Any, agent: str) -> types.ListResourcesResult:
        rules = self.policies.current.resources
        shown = [r for _, r in self.catalog.resources() if not rules.is_hidden(r.uri)]
        return types.ListResourcesResult(resources=shown)

    async def list_templates(self, ctx: Ctx, params: Any, agent: str) -> types.ListResourceTemplatesResult:
        rules = self.policies.current.resources
        shown = [t for _, t in self.catalog.templates() if not rules.is_hidden(t.uri_template)]
        return types.ListResourceTemplatesResult(resource_templates=shown)

    # ---- fetching

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams, agent: str) -> types.GetPromptResult:
        audit = _Audit(self.service, kind="prompt.get", agent=agent, name=params.name, arguments=params.arguments)
        target = await self._admit(audit, self.policies.current.prompts, params.name, self.catalog.prompt(params.name))
        arguments = params.arguments

        async def fetch(client: Any) -> types.GetPromptResult:
            result: types.GetPromptResult = await client.get_prompt(target.name, arguments)
            return result

        result = await self._forward(audit, target, f"prompt {target.name}", fetch)
        await audit.write("allowed", f"fetched prompt {params.name}", bytes=_size(result))
        return result

    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams, agent: str
    ) -> types.ReadResourceResult:
        audit = _Audit(self.service, kind="resource.read", agent=agent, name=params.uri)
        target = await self._admit(
            audit, self.policies.current.resources, params.uri, self.catalog.resource(params.uri)
        )

        async def fetch(client: Any) -> types.ReadResourceResult:
            result: types.ReadResourceResult = await client.read_resource(target.name)
            return result

        result = await self._forward(audit, target, f"resource {target.name}", fetch)
        if target.source.prefix:
            # The contents name the URI they came from: show it as the agent asked for it.
            contents = [c.model_copy(update={"uri": target.source.prefix + c.uri}) for c in result.contents]
            result = result.model_copy(update={"contents": contents})
        await audit.write("allowed", f"read resource {params.uri}", bytes=_size(result))
        return result

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams, agent: str) -> types.EmptyResult:
        audit = _Audit(self.service, kind="resource.subscribe", agent=agent, name=params.uri)
        target = await self._admit(
            audit, self.policies.current.resources, params.uri, self.catalog.resource(params.uri)
        )
        try:
            await self.subscriptions.add(ctx, params.uri, target)
        except RelayUnavailable as exc:
            await audit.write("failed", str(exc))
            raise MCPError(types.INTERNAL_ERROR, Tag.UPSTREAM_UNAVAILABLE.text(str(exc))) from None
        await audit.write("allowed", f"subscribed to {params.uri}")
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams, agent: str) -> types.EmptyResult:
        await self.subscriptions.remove(ctx, params.uri)
        return types.EmptyResult()

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams, agent: str) -> types.CompleteResult:
        ref = params.ref
        policy = self.policies.current
        if isinstance(ref, types.PromptReference):
            audit = _Audit(self.service, kind="prompt.complete", agent=agent, name=ref.name, quiet=True)
            target = await self._admit(audit, policy.prompts, ref.name, self.catalog.prompt(ref.name))
            own_ref: types.PromptReference | types.ResourceTemplateReference = ref.model_copy(
                update={"name": target.name}
            )
        else:
            audit = _Audit(self.service, kind="resource.complete", agent=agent, name=ref.uri, quiet=True)
            found = self.catalog.template(ref.uri) or self.catalog.resource(ref.uri)
            target = await self._admit(audit, policy.resources, ref.uri, found)
            own_ref = ref.model_copy(update={"uri": target.name})
        argument = {"name": params.argument.name, "value": params.argument.value}
        context = params.context.arguments if params.context else None

        async def fetch(client: Any) -> types.CompleteResult:
            result: types.CompleteResult = await client.complete(own_ref, argument, context)
            return result

        return await self._forward(audit, target, "completion/complete", fetch)

    # ---- one path for every request

    async def _admit(self, audit: _Audit, rules: ReadPolicy, name: str, target: Target | None) -> Target:
        """The upstream to send to, once the policy allows it; a refusal is audited and raised."""
        decision = rules.decide(name)
        audit.rule = decision.rule
        if decision.action == "hidden" or (target is None and decision.action == "allow"):
            noun = "prompt" if rules.kind == "prompts" else "resource"
            shown = json.dumps(name, ensure_ascii=False)[:_NAME_LIMIT]
            message = f"no {noun} {shown} is available through this gateway"
            if decision.action != "hidden":
                audit.rule = "unknown"
            await audit.write("denied", message)
            raise MCPError(types.INVALID_PARAMS, message)
        if decision.action == "deny" or target is None:
            await audit.write("denied", decision.message)
            raise MCPError(types.INVALID_REQUEST, Tag.POLICY_DENIED.text(_refusal(decision)))
        audit.upstream = target.source.name
        return target

    def _resource(self, uri: str) -> Target | None:
        return self.catalog.resource(uri)

    async def _forward(self, audit: _Audit, target: Target, what: str, fetch: Callable[[Any], Awaitable[R]]) -> R:
        relay = getattr(target.source, "relay", None)
        if relay is None:
            raise MCPError(types.INTERNAL_ERROR, Tag.UPSTREAM_UNAVAILABLE.text(f"{what} cannot be relayed"))
        try:
            result: R = await relay(what, fetch)
            return result
        except RelayUnavailable as exc:
            await audit.write("failed", str(exc))
            raise MCPError(types.INTERNAL_ERROR, Tag.UPSTREAM_UNAVAILABLE.text(str(exc))) from None
        except MCPError as exc:
            await audit.write("failed", f"upstream '{target.source.name}' answered: {exc.message}"[:_NAME_LIMIT])
            raise


class _Audit:
    """One audit row for one request, written once its outcome is known."""

    def __init__(
        self,
        service: ApprovalService,
        kind: str,
        agent: str,
        name: str,
        arguments: dict[str, str] | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        self.service = service
        self.kind = kind
        self.agent = agent
        self.name = name[:_NAME_LIMIT]
        self.arguments = None if arguments is None else canonical_json(arguments)
        self.rule = ""
        self.upstream: str | None = None
        # Completions are keystroke traffic: audited when refused, not each time they succeed.
        self.quiet = quiet

    async def write(self, outcome: str, message: str, **detail: Any) -> None:
        if self.quiet and outcome == "allowed":
            return
        arguments = self.arguments
        if arguments is not None and len(arguments) > _ARGUMENTS_LIMIT:
            detail["arguments_bytes"] = len(arguments.encode())
            arguments = None
        key = "prompt" if self.kind.startswith("prompt") else "uri"
        event = Event(
            kind=self.kind,
            outcome=outcome,
            message=message[:_NAME_LIMIT],
            agent=self.agent,
            upstream=self.upstream,
            arguments=arguments,
            detail={key: self.name, "rule": self.rule, **detail},
        )
        try:
            await self.service.record(event)
        except Exception as exc:
            log.error("audit event not written (%s): %s", self.kind, exc)


def _refusal(decision: ReadDecision) -> str:
    return f"{decision.message}; it was not sent upstream."


def _size(result: Any) -> int:
    return len(json.dumps(dump(result), separators=(",", ":")).encode())
