"""``jit mcp``: an MCP server for AI agents (the optional ``mcp`` extra).

An agent runtime starts ``jit mcp`` with the agent's workload identity; the agent gets tools to
request, list, revoke and explain credentials, and one MCP session is one task, completed when
the session ends (docs/agents.md). ``server`` holds the tools and the session; it reaches the
broker through the workload SDK (:class:`broker.client.Client`). This package imports only the
SDK and the contract modules from ``broker`` — never the server side.
"""

from __future__ import annotations

MISSING_EXTRA = "jit mcp needs the MCP SDK, the optional extra 'mcp': pip install 'jit-broker[mcp]'"

__all__ = ["MISSING_EXTRA"]
