"""The policy core: pure functions and small classes over plain values, shared by the live
scheduler and the simulator. Nothing here does I/O or reads a clock."""

from lamps.model.strategy import Strategy
from lamps.scheduler.policy.estimates import (
    CallEstimate,
    CallView,
    EngineView,
    RequestEstimate,
    RequestView,
)
from lamps.scheduler.policy.policies import (
    DEFAULT_STARVATION_THRESHOLD,
    POLICIES,
    Decision,
    Plan,
    Policy,
    create_policy,
)
from lamps.scheduler.policy.queue import RankedQueue

__all__ = [
    "DEFAULT_STARVATION_THRESHOLD",
    "POLICIES",
    "CallEstimate",
    "CallView",
    "Decision",
    "EngineView",
    "Plan",
    "Policy",
    "RankedQueue",
    "RequestEstimate",
    "RequestView",
    "Strategy",
    "create_policy",
]
