"""The tools a run offers the model, one module per tool, and the Toolbox that answers their calls.

Client tools act through the run's `Hands`, inside its sandbox: `bash`, and `editor`
(str_replace_based_edit_tool, whose code is app.hands.editor, run where the files are). `memory`
(memory_20250818, the run's `/memories` folder) and `connectors` (`<connector>__<tool>`, MCP
servers) run in the worker. `server` tools (web_search, web_fetch) are only declared: Anthropic
runs them. `toolbox.Toolbox` offers the enabled ones and dispatches each `tool_use` block.
"""
