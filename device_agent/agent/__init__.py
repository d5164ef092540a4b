"""The device update agent: poll, download, verify, apply, gate on WER, activate.

Public surface (everything else is internal):
- `AgentConfig`, `load_config`: settings (TOML + OTA_AGENT_* environment)
- `Agent`: the daemon (`run`, `check_once`, `rollback`, `status`)
- `State`, `Event`, `TRANSITION_ROWS`, `Lifecycle`: the lifecycle table (no I/O)
"""
from device_agent.agent.config import AgentConfig, load_config
from device_agent.agent.daemon import Agent, active_model_file
from device_agent.agent.lifecycle import TRANSITION_ROWS, Event, Lifecycle, State

__all__ = ["Agent", "AgentConfig", "Event", "Lifecycle", "State", "TRANSITION_ROWS", "active_model_file",
           "load_config"]
