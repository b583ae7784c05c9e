"""The asyncio daemon on every device: receives deployments, pulls and verifies modules, runs them.

What other packages (the simulator, tests, embedding programs) may use: `Agent`, `AgentConfig`,
`load_agent_config`, and the seams an agent is built from (`ModuleRuntime`, `InstanceRecord`).
Imported on first use, so `import edge_agent` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent._agent import Agent
    from edge_agent._config import AgentConfig, load_agent_config
    from edge_agent._module_runtime import ModuleRuntime
    from edge_agent._state import InstanceRecord

_LAZY = {
    "Agent": "edge_agent._agent",
    "AgentConfig": "edge_agent._config",
    "load_agent_config": "edge_agent._config",
    "ModuleRuntime": "edge_agent._module_runtime",
    "InstanceRecord": "edge_agent._state",
}

__all__ = ["Agent", "AgentConfig", "InstanceRecord", "ModuleRuntime", "load_agent_config"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
