"""Installing model versions on the agent: resumable verified download, an explicit state machine with
atomic activation and rollback (see ``machine.py``)."""

from agent.install.machine import InstallMachine
from agent.install.states import Event, InstallProgress, ModelRef, State, Transition

__all__ = ["Event", "InstallMachine", "InstallProgress", "ModelRef", "State", "Transition"]
