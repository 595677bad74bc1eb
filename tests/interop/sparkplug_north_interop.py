#!/usr/bin/env python3
"""Interop: Ferrite as a Sparkplug B edge node on Debian's Mosquitto, with
pysparkplug (a Sparkplug B implementation written by others, on paho-mqtt)
as the primary host application.

- With `primary_host = "scada"`, the gateway publishes nothing until the
  host's STATE (pysparkplug's `State`, retained) says online; then NBIRTH
  and DBIRTH, decoded by pysparkplug's `Client` (bdSeq, names, data types).
- A value published to the gateway's embedded broker reaches the host as
  DDATA by alias, which pysparkplug resolves with the birth.
- A DCMD encoded by pysparkplug is written through the gateway's checked
  path: audited as sent to the device's command topic; one over the
  model's limit is refused with an event.
- The host offline (STATE online=false): the gateway holds its data; back
  online, the births again, then the held change marked historical.
- An NCMD `Node Control/Rebirth` from pysparkplug brings the births again.
- SIGTERM: the NDEATH, decoded by pysparkplug, with the NBIRTH's bdSeq.

    python3 tests/interop/sparkplug_north_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import Checks, free_port, http, project, start_ferrite, stop_ferrite, until

import pysparkplug as spb

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"
MOSQUITTO = "/usr/sbin/mosquitto"

MODEL = """kind: DeviceModel
name: sensor
properties:
  temperature: { type: float, unit: "°C", mqtt: { topic: "sensors/{device}/temperature" } }
  interval:    { type: int, access: readwrite, min: 1, max: 3600, mqtt: { topic: "sensors/{device}/interval", command: "sensors/{device}/interval/set" } }
"""


def pub(port, topic, message):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", message, "-q", "1"],
                   check=True, timeout=20)


def main():
    checks = Checks()
    north, embedded, api_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    conf = Path(tempfile.mkdtemp(prefix="ferrite-north-mosquitto-")) / "mosquitto.conf"
    conf.write_text(f"listener {north} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)

    work = project("ferrite-north-", MODEL)
    (work / "devices" / "d1.yaml").write_text("kind: Device\nname: d1\nmodel: sensor\nmqtt: {}\n")
    with open(work / "ferrite.toml", "a") as f:
        f.write(f'[mqtt]\nlisten = "127.0.0.1:{embedded}"\n'
                f'[north]\nbroker = "mqtt://127.0.0.1:{north}"\ngroup = "plant"\nnode = "gw-1"\n'
                'primary_host = "scada"\ninterval = "50ms"\n')

    received = []
    lock = threading.Lock()

    def on_message(_client, message):
        with lock:
            received.append(message)

    def messages(kind, device=None):
        with lock:
            return [m for m in received
                    if m.topic.message_type == kind and (device is None or m.topic.device_id == device)]

    host = spb.Client(client_id="scada")
    host.subscribe(spb.Topic.from_str("spBv1.0/plant/#"), spb.QoS.AT_LEAST_ONCE, on_message)
    host.connect("127.0.0.1", port=north)
    gateway = start_ferrite(FERRITE, work, api_port)
    state_topic = spb.Topic.from_str("spBv1.0/STATE/scada")

    def state(online):
        host.publish(spb.Message(topic=state_topic,
                                 payload=spb.State(timestamp=spb.get_current_timestamp(), online=online),
                                 qos=spb.QoS.AT_LEAST_ONCE, retain=True))

    def command(kind, topic, name, datatype, value):
        """An NCMD or DCMD of one metric, encoded by pysparkplug with its data type."""
        now = spb.get_current_timestamp()
        payload = kind(timestamp=now, metrics=(spb.Metric(timestamp=now, name=name, datatype=datatype, value=value),))
        host.publish(spb.Message(topic=spb.Topic.from_str(topic), payload=payload,
                                 qos=spb.QoS.AT_MOST_ONCE, retain=False), include_dtypes=True)

    try:
        up = until(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 30)
        checks.check("the gateway serves", up)
        connected = until(lambda: (http("GET", f"{api}/api/v1/north")[1].get("status") or {}).get("connected"), 10)
        checks.check("the northbound is connected to Mosquitto", connected, http("GET", f"{api}/api/v1/north")[1])
        time.sleep(1.0)
        checks.check("before the primary host's STATE, no birth", not messages(spb.MessageType.NBIRTH),
                     len(received))

        state(True)
        nbirth = until(lambda: messages(spb.MessageType.NBIRTH))
        checks.check("the host's STATE online brings an NBIRTH, decoded by pysparkplug", bool(nbirth))
        bd_seq = None
        if nbirth:
            names = {m.name: m for m in nbirth[0].payload.metrics}
            bd_seq = names.get("bdSeq").value if "bdSeq" in names else None
            checks.check("the NBIRTH has seq 0, a bdSeq and Node Control/Rebirth",
                         nbirth[0].payload.seq == 0 and bd_seq is not None and "Node Control/Rebirth" in names,
                         sorted(names))
        dbirth = until(lambda: messages(spb.MessageType.DBIRTH, "d1"))
        checks.check("a DBIRTH for d1 on spBv1.0/plant/DBIRTH/gw-1/d1", bool(dbirth))
        if dbirth:
            types = {m.name: m.datatype for m in dbirth[0].payload.metrics}
            checks.check("its metrics carry the model's types (Double, Int64)",
                         types == {"temperature": spb.DataType.DOUBLE, "interval": spb.DataType.INT64}, types)

        pub(embedded, "sensors/d1/temperature", "21.5")

        def ddata(value, historical=None):
            for m in messages(spb.MessageType.DDATA, "d1"):
                for x in m.payload.metrics:
                    if x.name == "temperature" and x.value == value and (
                            historical is None or x.is_historical == historical):
                        return x
            return None

        got = until(lambda: ddata(21.5))
        checks.check("a new value arrives as DDATA, its alias resolved by pysparkplug to `temperature`",
                     got is not None and got.alias is not None and got.is_historical is False, got)

        command(spb.DCmd, "spBv1.0/plant/DCMD/gw-1/d1", "interval", spb.DataType.INT64, 30)

        def audited():
            status, body = http("GET", f"{api}/api/v1/audit")
            return [e for e in body if e.get("who") == "north sparkplug DCMD"] if status == 200 else []

        entries = until(audited)
        checks.check("pysparkplug's DCMD interval=30 is written through the checked path and audited",
                     bool(entries) and entries[0].get("property") == "interval" and entries[0].get("new") == 30
                     and entries[0].get("result") == "sent",
                     entries)
        command(spb.DCmd, "spBv1.0/plant/DCMD/gw-1/d1", "interval", spb.DataType.INT64, 99999)

        def refused():
            status, body = http("GET", f"{api}/api/v1/events")
            return [e for e in body if e.get("kind") == "north_write_refused"] if status == 200 else []

        events = until(refused)
        checks.check("a DCMD over the model's max is refused with a north_write_refused event",
                     bool(events) and "out_of_range" in events[0].get("message", ""), events)

        # The host goes away: the node holds its data; back, births first,
        # then what was held, marked historical.
        state(False)
        time.sleep(0.5)
        births_before = len(messages(spb.MessageType.NBIRTH))
        pub(embedded, "sensors/d1/temperature", "30.25")
        time.sleep(1.5)
        checks.check("while the host is offline, nothing is published", ddata(30.25) is None)
        north_state = http("GET", f"{api}/api/v1/north")[1].get("status") or {}
        checks.check("the change waits in the northbound backlog", north_state.get("backlog", 0) >= 1, north_state)
        state(True)
        checks.check("back online: the births again",
                     until(lambda: len(messages(spb.MessageType.NBIRTH)) > births_before))
        held = until(lambda: ddata(30.25, historical=True))
        checks.check("then the held change, marked historical", held is not None, held)

        births_before = len(messages(spb.MessageType.NBIRTH))
        command(spb.NCmd, "spBv1.0/plant/NCMD/gw-1", "Node Control/Rebirth", spb.DataType.BOOLEAN, True)
        again = until(lambda: len(messages(spb.MessageType.NBIRTH)) > births_before)
        checks.check("pysparkplug's NCMD Node Control/Rebirth brings a new NBIRTH", again)
        if again:
            latest = messages(spb.MessageType.NBIRTH)[-1].payload
            same = [m.value for m in latest.metrics if m.name == "bdSeq"] == [bd_seq]
            checks.check("the rebirth keeps the session's bdSeq and starts at seq 0",
                         same and latest.seq == 0, latest)
    finally:
        stop_ferrite(gateway, checks)
    death = until(lambda: messages(spb.MessageType.NDEATH))
    checks.check("on SIGTERM, the NDEATH, decoded by pysparkplug, carries the NBIRTH's bdSeq",
                 bool(death) and death[0].payload.bd_seq_metric.value == bd_seq, death)
    host.disconnect()
    broker.terminate()
    broker.wait(timeout=10)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
