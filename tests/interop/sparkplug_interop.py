#!/usr/bin/env python3
"""Interop: pysparkplug (a Sparkplug B implementation written by others, on
paho-mqtt) against Ferrite as the Sparkplug host, over the gateway's
embedded broker.

- pysparkplug's `Client` reads the gateway's STATE message and decodes it
  with its own `State` class.
- pysparkplug's `EdgeNode`, with a `Device`, publishes NBIRTH/DBIRTH and
  NDATA/DDATA with its own `seq` counter; the values show in the REST API.
- REST writes arrive at pysparkplug as NCMD and DCMD, decoded by it.
- A message lost on the way (the edge node's seq counter is stepped once
  without publishing): after the reorder timeout the gateway asks for a
  rebirth (NCMD `Node Control/Rebirth`, decoded by pysparkplug), the node's
  other values go stale, and the rebirth brings them back.

    python3 tests/interop/sparkplug_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import sys
import threading
import time

from common import Checks, free_port, http, project, start_ferrite, stop_ferrite, until

import pysparkplug as spb

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"

MODEL = """
kind: DeviceModel
name: tank
properties:
  level: { type: float, mqtt: { metric: "Inputs/Level" } }
  count: { type: int,   mqtt: { metric: "Inputs/Count" } }
  pump:  { type: bool,  access: readwrite, mqtt: { metric: "Outputs/Pump" } }
"""


def metric(name, datatype, value):
    return spb.Metric(timestamp=spb.get_current_timestamp(), name=name, datatype=datatype, value=value)


def main():
    checks = Checks()
    broker, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    work = project("ferrite-sparkplug-", MODEL)
    with open(work / "ferrite.toml", "a") as f:
        f.write(f'[mqtt]\nlisten = "127.0.0.1:{broker}"\n'
                '[mqtt.sparkplug]\nhost_id = "ferrite"\nreorder_timeout = "500ms"\n')
    (work / "devices" / "node.yaml").write_text(
        "kind: Device\nname: node\nmodel: tank\nmqtt: { sparkplug: { group: plant, node: edge-1 } }\n")
    (work / "devices" / "tank.yaml").write_text(
        "kind: Device\nname: tank\nmodel: tank\n"
        "mqtt: { sparkplug: { group: plant, node: edge-1, device: tank-1 } }\n")
    gateway = start_ferrite(FERRITE, work, api_port)
    try:
        up = until(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 30)
        checks.check("the gateway serves", up)

        # The host's STATE, as a third-party host or edge node reads it.
        states = []
        watcher = spb.Client(client_id="interop-watcher")
        state_topic = spb.Topic.from_str("spBv1.0/STATE/ferrite")
        watcher.subscribe(state_topic, spb.QoS.AT_LEAST_ONCE, lambda _c, m: states.append(m.payload))
        watcher.connect("127.0.0.1", port=broker)
        got = until(lambda: states, 10)
        checks.check("pysparkplug decodes the retained STATE on spBv1.0/STATE/ferrite",
                     bool(got) and isinstance(got[0], spb.State), got)
        checks.check("the STATE says online, with a current timestamp",
                     bool(got) and got[0].online is True and abs(got[0].timestamp - time.time() * 1000) < 60_000,
                     got)
        watcher.disconnect()

        # pysparkplug as the edge node.
        commands = []
        lock = threading.Lock()

        def on_command(_node, message):
            with lock:
                commands.append(message)

        node = spb.EdgeNode(
            group_id="plant", edge_node_id="edge-1",
            metrics=[metric("Inputs/Level", spb.DataType.DOUBLE, 1.5),
                     metric("Inputs/Count", spb.DataType.INT64, 7),
                     metric("Outputs/Pump", spb.DataType.BOOLEAN, False)],
            client=spb.Client(client_id="interop-edge-1"),
            cmd_callback=on_command)
        device = spb.Device("tank-1", metrics=[metric("Inputs/Level", spb.DataType.DOUBLE, 40.0),
                                               metric("Inputs/Count", spb.DataType.INT64, 3),
                                               metric("Outputs/Pump", spb.DataType.BOOLEAN, False)],
                            cmd_callback=on_command)
        node.register(device)
        node.connect("127.0.0.1", port=broker)

        def value(dev, prop):
            status, body = http("GET", f"{api}/api/v1/devices/{dev}/properties/{prop}")
            return body if status == 200 else None

        def value_is(dev, prop, want):
            return lambda: (value(dev, prop) or {}).get("value") == want

        checks.check("NBIRTH values arrive", until(value_is("node", "level", 1.5)), value("node", "level"))
        checks.check("DBIRTH values arrive", until(value_is("tank", "level", 40.0)), value("tank", "level"))
        node.update([metric("Inputs/Level", spb.DataType.DOUBLE, 2.25)])
        checks.check("NDATA (in seq order) is taken", until(value_is("node", "level", 2.25)),
                     value("node", "level"))
        node.update_device("tank-1", [metric("Inputs/Count", spb.DataType.INT64, 4)])
        checks.check("DDATA is taken", until(value_is("tank", "count", 4)), value("tank", "count"))

        # Writes: NCMD for the node, DCMD for its device, decoded by pysparkplug.
        status, body = http("PUT", f"{api}/api/v1/devices/node/properties/pump", {"value": True})
        checks.check("a write to the node is sent", status == 202, (status, body))
        status, body = http("PUT", f"{api}/api/v1/devices/tank/properties/pump", {"value": True})
        checks.check("a write to the device is sent", status == 202, (status, body))

        def command(kind, name):
            with lock:
                for m in commands:
                    if m.topic.message_type == kind:
                        for x in m.payload.metrics:
                            if x.name == name:
                                return x
            return None

        ncmd = until(lambda: command(spb.MessageType.NCMD, "Outputs/Pump"))
        checks.check("pysparkplug receives the NCMD with Outputs/Pump = true",
                     ncmd is not None and ncmd.value is True, ncmd)
        dcmd = until(lambda: command(spb.MessageType.DCMD, "Outputs/Pump"))
        checks.check("pysparkplug receives the DCMD on .../DCMD/edge-1/tank-1 with Outputs/Pump = true",
                     dcmd is not None and dcmd.value is True, dcmd)

        # A message lost on the way: the node's seq counter steps once
        # without a publish (pysparkplug keeps it in a private cycler).
        node._seq  # noqa: B018  the property draws the next seq
        node.update([metric("Inputs/Level", spb.DataType.DOUBLE, 3.75)])
        started = time.monotonic()
        rebirth = until(lambda: command(spb.MessageType.NCMD, "Node Control/Rebirth"), 10)
        waited = time.monotonic() - started
        checks.check("after the gap, the gateway asks for a rebirth (NCMD Node Control/Rebirth = true)",
                     rebirth is not None and rebirth.value is True, rebirth)
        checks.check("it waited the reorder timeout (500 ms) first, not much longer",
                     rebirth is not None and 0.4 <= waited <= 3.0, f"{waited:.2f} s", show=True)
        checks.check("the message held behind the gap is taken", until(value_is("node", "level", 3.75)),
                     value("node", "level"))
        count = value("node", "count") or {}
        checks.check("a value the lost message may have changed is stale until the rebirth",
                     count.get("quality") == "stale" and count.get("value") == 7, count)
        # The rebirth: pysparkplug has no rebirth command of its own, so its
        # node reconnects, which births it again (seq 0, a new bdSeq).
        node.disconnect()
        node.connect("127.0.0.1", port=broker)
        checks.check("the rebirth makes the node's values good again",
                     until(lambda: (value("node", "count") or {}).get("quality") == "good"),
                     value("node", "count"))
        node.update([metric("Inputs/Level", spb.DataType.DOUBLE, 5.5)])
        checks.check("the new session's data is taken", until(value_is("node", "level", 5.5)),
                     value("node", "level"))
        node.disconnect()
    finally:
        stop_ferrite(gateway, checks)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
