"""The human-in-the-loop core of Countersign: approval requests, decisions, audit. Knows nothing of MCP."""
