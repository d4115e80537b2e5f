"""`countersign init`: a commented starter configuration and policy."""

from __future__ import annotations

import json
import secrets
import sys

from approvals.approvers import token_digest
from gateway.demo import DEMO_POLICY

STARTER_CONFIG = """\
# Countersign configuration. Reference: docs/configuration.md
# Any string may read an environment variable as "${{NAME}}"; keep secrets out of this file.

[server]
host = "127.0.0.1"          # address to listen on
port = 8080
# SQLite file by default (relative to this file); for several replicas use PostgreSQL:
#   database_url = "postgresql://countersign@db.internal/countersign"
database_url = "sqlite:///countersign.db"
public_url = "http://127.0.0.1:8080"   # how approvers reach this gateway (links in Slack and progress)
progress_interval = "5s"    # how often a held call reports that it is still waiting
default_max_hold = "50s"    # then a held call returns [APPROVAL PENDING], before 60 s clients give up

[policy]
file = "policy.json"        # reloaded on change and on SIGHUP; an invalid file is refused
# The starter policy.json is written for the IBKR MCP server: it allows its reads, limits previews
# to 10 a minute, holds ibkr_cancel_order and live ibkr_place_order calls for approval, hides
# ibkr_global_cancel, and DENIES EVERY TOOL IT DOES NOT NAME ("default": "deny"). A denied tool is
# still listed to agents (their calls to it are refused); only "hide" removes a tool from the list.
# To see each upstream tool and what the policy does with it: countersign tools --config THIS_FILE

# One block per MCP server behind the gateway: `command` (stdio) or `url` (streamable HTTP).
[[upstreams]]
name = "ibkr"
url = "http://127.0.0.1:8000/mcp"
# headers = {{ Authorization = "Bearer ${{IBKR_MCP_TOKEN}}" }}
# prefix = "ibkr."          # optional: prepended to this upstream's tool names

# [[upstreams]]
# name = "paper"
# command = ["{python}", "-m", "gateway.paper_broker"]   # the paper broker from this installation

# Agents authenticate to /mcp with `Authorization: Bearer <token>`.
[[agents]]
name = "trading-agent"
token = "${{COUNTERSIGN_AGENT_TOKEN}}"   # or token_sha256 = "<hex digest>"

# Approvers decide held calls (API token for the API and CLI; password for the web inbox).
[[approvers]]
name = "alice"
email = "alice@example.com"
groups = ["traders"]
# The digest of the API token `countersign init` printed; or api_token = "${{ALICE_API_TOKEN}}".
api_token_sha256 = "{api_token_sha256}"
# password_hash = "<output of: countersign hash-password>"
# slack_user = "U012ABCDEF"

[slack]
# bot_token = "${{SLACK_BOT_TOKEN}}"
# signing_secret = "${{SLACK_SIGNING_SECRET}}"
# channel = "#trading-approvals"
# mode = "http"             # or "socket" with app_token = "${{SLACK_APP_TOKEN}}"
"""


def new_api_token() -> str:
    return secrets.token_urlsafe(24)


def starter_config(api_token: str | None = None) -> str:
    """The starter file; it holds only the digest of the first approver's API token, never the token."""
    return STARTER_CONFIG.format(
        api_token_sha256=token_digest(api_token or new_api_token()), python=sys.executable.replace("\\", "/")
    )


def starter_policy() -> str:
    return json.dumps(DEMO_POLICY, indent=2) + "\n"


# What `countersign init` says about the policy it wrote; JSON has no comments to say it in.
STARTER_POLICY_SUMMARY = (
    'policy.json denies every tool it does not name ("default": "deny"); denied tools are still '
    'listed to agents, only "hide" removes them. Adjust it to your upstreams\' tools'
)
