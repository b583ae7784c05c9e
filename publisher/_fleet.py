"""Which control plane the publisher talks to, chosen by the scheme of the workspace's hub.

`FleetConnection` speaks MQTT to Mosquitto or the embedded hub; `IotHubFleet` speaks Azure IoT
Hub's service REST API (docs/azure-iot-hub.md). Both offer the same snapshot and calls, so the
commands and the `Service` API open whichever the workspace names, here and nowhere else.
"""

from __future__ import annotations

from publisher._hub import FleetConnection
from publisher._iothub import IotHubFleet, is_iothub
from publisher._workspace import Workspace


def open_fleet(workspace: Workspace) -> FleetConnection | IotHubFleet:
    """Use as `async with open_fleet(ws) as hub`."""
    return IotHubFleet(workspace) if is_iothub(workspace.hub) else FleetConnection(workspace)
