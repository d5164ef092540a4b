"""The device update agent: poll, download, verify, apply, gate on WER, activate.

Public surface (everything else is internal):
- `AgentConfig`, `load_config`: settings (TOML + OTA_AGENT_* environment)
- `Agent`: the daemon (`run`, `check_once`, `rollback`, `status`)
- `State`, `Event`, `Effect`, `LIFECYCLE`: the lifecycle table the daemon moves by (no I/O)
"""
from device_agent.agent.config import AgentConfig, load_config
from device_agent.agent.daemon import Agent, active_model_file
from device_agent.agent.lifecycle import LIFECYCLE, Effect, Event, State

__all__ = ["Agent", "AgentConfig", "Effect", "Event", "LIFECYCLE", "State", "active_model_file",
           "load_config"]
