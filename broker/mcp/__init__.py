"""``jit mcp``: an MCP server for AI agents (the optional ``mcp`` extra).

An agent runtime starts ``jit mcp`` with the agent's workload identity; the agent gets tools to
request, list, revoke and explain credentials, and one MCP session is one task, completed when
the session ends (docs/agents.md). Modules: ``port`` (the broker calls it needs, as a
Protocol), ``http_adapter`` (those calls over HTTP, until the workload SDK replaces it),
``server`` (the tools and the session). This package imports only the contract modules
(types, errors, clock) from ``broker`` — never the server side.
"""

from __future__ import annotations

MISSING_EXTRA = "jit mcp needs the MCP SDK, the optional extra 'mcp': pip install 'jit-broker[mcp]'"

__all__ = ["MISSING_EXTRA"]
