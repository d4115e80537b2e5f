"""The MCP side of Countersign: upstreams, policy, the downstream server, the web app and the CLI."""
