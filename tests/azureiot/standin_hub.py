"""The hub side of one device's control plane, for the tests, run inside their network namespace.

`--mode iothub` plays Azure IoT Hub's MQTT surface over a Mosquitto that listens on 8883 with
TLS: it answers `$iothub/twin/GET` and `$iothub/twin/PATCH/properties/reported` requests, pushes
`$iothub/twin/PATCH/properties/desired` patches (with `$version` in the body), routes direct
methods (`$iothub/methods/POST/{name}/?$rid=` -> `$iothub/methods/res/{status}/?$rid=`) and keeps
the device-to-cloud messages. Mosquitto does not scope `$iothub/*` per connection, so one stand-in
serves one device. Its twin outlives a broker restart, as IoT Hub's does.

`--mode mqtt` plays the publisher on modelfleet's own topics, so the same scenarios run against
the MQTT transport.

Either way the test drives it over HTTP on a Unix socket (which crosses the namespace):
`PUT /fleet/documents` (a signed document into its slot), `GET /fleet/reported` (the device's
`ReportedState` as the control plane holds it), `POST /fleet/methods/{name}` (a signed request;
the device's answer), `GET /fleet/telemetry`, `GET /ready` (200 once the broker is reached), and
in iothub mode IoT Hub's own `GET /twins/{id}`. In iothub mode it can also serve IoT Hub's
service REST API (`_twin_service.py`, TLS, SAS checked) on a second Unix socket, backed by the
same twin, for the publisher's CLI. A TCP port inside the namespace relays to the registry's Unix
socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import uuid
from typing import Any
from urllib.parse import parse_qs

import paho.mqtt.client as mqtt
from aiohttp import web

from modules.azureiot import desired_document_patch, merge_patch, state_from_summary
from modules.topics import FleetTopics
from tests.azureiot._relay import tcp_to_unix
from tests.azureiot._twin_service import TwinService


class Broker:
    """A paho client whose messages land on the asyncio loop."""

    def __init__(
        self,
        port: int,
        tls: tuple[str, str | None, str | None] | None,
        subscriptions: list[str],
        loop: asyncio.AbstractEventLoop,
    ):
        self.loop = loop
        self.queue: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        self.up = asyncio.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"standin-{uuid.uuid4().hex[:6]}"
        )
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(0.2, 1)

        def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                for topic in subscriptions:
                    client.subscribe(topic, qos=1)
                loop.call_soon_threadsafe(self.up.set)

        def on_disconnect(*_args: Any) -> None:
            loop.call_soon_threadsafe(self.up.clear)

        self.client.on_connect = on_connect
        self.client.on_disconnect = on_disconnect
        self.client.on_message = lambda _c, _u, msg: loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        self.client.connect_async("localhost", port, keepalive=5)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)


class IotHub:
    """The hub's side for one device. Its twin lives in a `TwinService`, which also serves IoT
    Hub's REST API to a publisher when the test asks for it (`--rest-socket`)."""

    def __init__(
        self,
        broker_port: int,
        tls: tuple[str, str | None, str | None],
        device: str,
        fleet: str,
        loop: asyncio.AbstractEventLoop,
        service: TwinService,
    ):
        self.device = device
        self.topics = FleetTopics(fleet)
        self.service = service
        service.add_device(device)
        service.on_desired = lambda _device, patch, version: self._push(patch, version)
        service.methods[device] = lambda name, payload: self.invoke(name, payload, 90)
        self.d2c: list[dict[str, Any]] = []
        self.methods: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self.broker = Broker(
            broker_port,
            tls,
            ["$iothub/twin/GET/#", "$iothub/twin/PATCH/properties/reported/#", "$iothub/methods/res/#",
             f"devices/{device}/messages/events/#"],
            loop,
        )  # fmt: skip

    @property
    def desired(self) -> dict[str, Any]:
        return self.service.twins[self.device]["properties"]["desired"]

    @property
    def reported(self) -> dict[str, Any]:
        return self.service.twins[self.device]["properties"]["reported"]

    @reported.setter
    def reported(self, value: dict[str, Any]) -> None:
        self.service.twins[self.device]["properties"]["reported"] = value

    async def run(self) -> None:
        while True:
            msg = await self.broker.queue.get()
            topic, _, query = msg.topic.partition("?")
            params = {k: v[0] for k, v in parse_qs(query).items()}
            rid = params.get("$rid", "")
            if topic == "$iothub/twin/GET/":
                body = json.dumps({"desired": self.desired, "reported": self.reported}).encode()
                self.broker.publish(f"$iothub/twin/res/200/?$rid={rid}", body)
            elif topic == "$iothub/twin/PATCH/properties/reported/":
                patch = json.loads(msg.payload)
                version = self.reported["$version"] + 1
                self.reported = {**merge_patch(self.reported, patch), "$version": version}
                self.broker.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"")
            elif topic.startswith("$iothub/methods/res/"):
                status = int(topic.split("/")[3])
                future = self.methods.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result((status, json.loads(msg.payload) if msg.payload else None))
            elif topic.startswith(f"devices/{self.device}/messages/events/"):
                properties = {
                    k: v[0] for k, v in parse_qs(msg.topic.split("/messages/events/", 1)[1]).items()
                }
                self.d2c.append({"properties": properties, "body": json.loads(msg.payload)})

    def _push(self, patch: dict[str, Any], version: int) -> None:
        body = json.dumps({**patch, "$version": version}).encode()
        self.broker.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body)

    async def invoke(self, name: str, payload: Any, timeout: float) -> tuple[int, Any]:
        rid = uuid.uuid4().hex[:8]
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self.methods[rid] = future
        self.broker.publish(f"$iothub/methods/POST/{name}/?$rid={rid}", json.dumps(payload).encode())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.methods.pop(rid, None)
            return 504, {"error": "the device did not answer in time"}

    # the fleet API

    def put_document(self, kind: str, name: str | None, document: str, silent: bool = False) -> None:
        """`silent`: the push is lost (the next one's `$version` then skips one)."""
        patch = desired_document_patch(kind, name, document)
        self.service.patch_desired(self.device, patch, silent=silent)

    def reported_state(self) -> dict[str, Any] | None:
        section = self.reported.get("modelfleet", {}).get("state")
        return state_from_summary(section) if section else None

    def telemetry(self) -> list[Any]:
        return [m["body"] for m in self.d2c if m["properties"].get("modelfleet-topic") == "telemetry"]

    def twin(self) -> dict[str, Any]:
        return self.service.twins[self.device]


class MqttFleet:
    def __init__(self, broker_port: int, device: str, fleet: str, loop: asyncio.AbstractEventLoop):
        self.device = device
        self.topics = FleetTopics(fleet)
        self.state: dict[str, Any] | None = None
        self.seen_telemetry: list[Any] = []
        self.methods: dict[str, asyncio.Future[tuple[int, Any]]] = {}
        self.broker = Broker(
            broker_port,
            None,
            [
                self.topics.reported(device),
                self.topics.telemetry(device),
                f"{self.topics.device(device)}/methods/res/+",
            ],
            loop,
        )

    async def run(self) -> None:
        while True:
            msg = await self.broker.queue.get()
            if msg.topic == self.topics.reported(self.device):
                self.state = json.loads(msg.payload) if msg.payload else None
            elif msg.topic == self.topics.telemetry(self.device):
                self.seen_telemetry.append(json.loads(msg.payload))
            else:
                rid = msg.topic.rsplit("/", 1)[1]
                future = self.methods.pop(rid, None)
                if future is not None and not future.done():
                    answer = json.loads(msg.payload)
                    future.set_result((answer["status"], answer.get("payload")))

    def put_document(self, kind: str, name: str | None, document: str, silent: bool = False) -> None:
        assert not silent, "a broker does not lose retained messages"
        if kind == "deployments":
            topic = self.topics.deployment(name or "")
        elif kind == "override":
            topic = self.topics.desired(self.device)
        else:
            topic = self.topics.keys(self.device, name or "")
        self.broker.publish(topic, document.encode(), retain=True)

    async def invoke(self, name: str, payload: Any, timeout: float) -> tuple[int, Any]:
        rid = payload["request_id"]
        future: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self.methods[rid] = future
        self.broker.publish(self.topics.method_request(self.device, name, rid), json.dumps(payload).encode())
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.methods.pop(rid, None)
            return 504, {"error": "the device did not answer in time"}

    def reported_state(self) -> dict[str, Any] | None:
        return self.state

    def telemetry(self) -> list[Any]:
        return self.seen_telemetry


def app_for(hub: IotHub | MqttFleet) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/ready")
    async def ready(_request: web.Request) -> web.Response:
        return web.Response(status=200 if hub.broker.up.is_set() else 503)

    @routes.put("/fleet/documents")
    async def put_document(request: web.Request) -> web.Response:
        body = await request.json()
        hub.put_document(body["kind"], body.get("name"), body["document"], bool(body.get("silent")))
        return web.json_response({})

    @routes.get("/fleet/reported")
    async def reported(_request: web.Request) -> web.Response:
        return web.json_response(hub.reported_state())

    @routes.post("/fleet/methods/{name}")
    async def method(request: web.Request) -> web.Response:
        timeout = float(request.query.get("timeout", "90"))
        status, payload = await hub.invoke(request.match_info["name"], await request.json(), timeout)
        return web.json_response({"status": status, "payload": payload})

    @routes.get("/fleet/telemetry")
    async def telemetry(_request: web.Request) -> web.Response:
        return web.json_response(hub.telemetry())

    @routes.get("/twins/{device}")
    async def twin(_request: web.Request) -> web.Response:
        if not isinstance(hub, IotHub):
            raise web.HTTPNotFound()
        return web.json_response(hub.twin())

    app = web.Application()
    app.add_routes(routes)
    return app


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["iothub", "mqtt"], required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--ca")
    parser.add_argument("--cert", help="a client certificate, where the broker requires one")
    parser.add_argument("--key")
    parser.add_argument("--device", required=True)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--control", required=True, help="Unix socket for the test")
    parser.add_argument("--registry-port", type=int, required=True)
    parser.add_argument("--registry-socket", required=True)
    parser.add_argument("--rest-socket", help="serve IoT Hub's service REST API (TLS) here too")
    parser.add_argument("--rest-tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--rest-sas-key", help="the base64 key of the hub's `service` policy")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    hub: IotHub | MqttFleet
    if args.mode == "iothub":
        service = TwinService("localhost", "service", args.rest_sas_key or "")
        hub = IotHub(args.broker_port, (args.ca, args.cert, args.key), args.device, args.fleet, loop, service)
    else:
        hub = MqttFleet(args.broker_port, args.device, args.fleet, loop)
    relay = await tcp_to_unix(args.registry_port, args.registry_socket)
    runner = web.AppRunner(app_for(hub))
    await runner.setup()
    await web.UnixSite(runner, args.control).start()
    if args.rest_socket and isinstance(hub, IotHub):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.rest_tls)
        rest = web.AppRunner(hub.service.app())
        await rest.setup()
        await web.UnixSite(rest, args.rest_socket, ssl_context=context).start()
    print("ready", flush=True)
    try:
        await hub.run()
    finally:
        relay.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
