"""The tool runner: a registry of safe tools (calculator, emulated API types, HTTP, MCP) behind
the ToolRunner service (DESIGN.md section 9)."""
