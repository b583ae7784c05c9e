"""A fleet of devices in one process, running the real agent code against real services.

    from simulator import Fleet, share, spread

    async with Fleet(50, trust=[publisher_pem], tags={"gpu": share(True, 30)}) as fleet:
        await fleet.deploy(document, signing_key)
        result = await fleet.converged(document.name, document.version)

Every device is an `edge_agent.Agent`; modules run in a `SimulatedRuntime`; the control plane is
an in-memory broker (`hub="memory"`) or a real MQTT broker (`hub="mqtt://..."`). See
docs/simulator.md.
"""

from simulator._description import FleetDescription, HardwareProfile, load_fleet_file
from simulator._fleet import MEMORY, SETTLED, Convergence, Fleet, SimulatedDevice, SimulatorError
from simulator._memory import MemoryBroker, MemoryTransport
from simulator._relay import LinkRelay
from simulator._runtime import SimulatedDiskFullError, SimulatedRuntime, SimulatedStartError
from simulator._scenario import Scenario, Step, load_scenario, parse_fault, run_scenario
from simulator._tags import Share, Spread, in_share, share, spread, tags_for
from simulator._timeline import STATES, Timeline

__all__ = [
    "MEMORY",
    "SETTLED",
    "STATES",
    "Convergence",
    "Fleet",
    "FleetDescription",
    "HardwareProfile",
    "LinkRelay",
    "MemoryBroker",
    "MemoryTransport",
    "Scenario",
    "Share",
    "SimulatedDevice",
    "SimulatedDiskFullError",
    "SimulatedRuntime",
    "SimulatedStartError",
    "SimulatorError",
    "Spread",
    "Step",
    "Timeline",
    "in_share",
    "load_fleet_file",
    "load_scenario",
    "parse_fault",
    "run_scenario",
    "share",
    "spread",
    "tags_for",
]
