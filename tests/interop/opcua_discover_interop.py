#!/usr/bin/env python3
"""Interop: `ferrite discover opcua` against asyncua, a server written by others.

The script starts an asyncua server with a nested address space of 500
variables (Plant/Area1..5/Machine1..10, ten variables each) of mixed
DataTypes: the scalars, a Duration (a subtype of Double) and an enumeration;
AnalogItemType-style variables with EURange and EngineeringUnits properties;
read-only and writable ones. Beside them it holds what discovery must skip,
each for its reason: an array, a DateTime, a ByteString, a method, and a
property of an object (Plant's Manufacturer).

It then does what docs/onboarding.md tells a user to do, against a gateway
that is already running on an empty project:

    ferrite discover opcua ENDPOINT --name plant --out PROJECT --pki PROJECT/data/pki
    ferrite check --config PROJECT/ferrite.toml

and waits for the 500 values to show in the REST API (the gateway adds the
device live from its folders). It checks the written model (names, types,
DataTypes, access, min/max from EURange, units), the skipped list, that every
value the gateway reads is the value asyncua holds, that a write lands in
asyncua's address space in the node's type and one outside EURange is
refused, and that discovery itself wrote nothing. It prints the time from
"I have an endpoint" to "values in the REST API".

    python3 tests/interop/opcua_discover_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import asyncio
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from asyncua import Server, ua

from common import Checks, free_port, http, same, start_ferrite, stop_ferrite, wait_for

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"
AREAS, MACHINES = 5, 10

# name: (VariantType or DataType id, model type, DataType in the model,
#        writable, EURange, unit, value for (area, machine))
VARIABLES = {
    "Temperature": (ua.VariantType.Double, "float", "Double", False, (-20.0, 150.0), "°C",
                    lambda a, m: 20.0 + a + m / 100),
    "Pressure": (ua.VariantType.Float, "float", "Float", True, (0.0, 10.0), "bar",
                 lambda a, m: 1.5 + a / 4),
    "Count": (ua.VariantType.UInt32, "int", "UInt32", False, None, None,
              lambda a, m: 4_000_000_000 - a * 100 - m),
    "Mode": (ua.VariantType.Int16, "int", "Int16", True, (0.0, 5.0), None,
             lambda a, m: (a + m) % 5),
    "Running": (ua.VariantType.Boolean, "bool", "Boolean", True, None, None,
                lambda a, m: (a + m) % 2 == 0),
    "Label": (ua.VariantType.String, "string", "String", True, None, None,
              lambda a, m: f"A{a}-M{m} grün"),
    "Level": (ua.VariantType.Byte, "int", "Byte", False, (0.0, 255.0), "%",
              lambda a, m: a * 10 + m),
    "Offset": (ua.VariantType.SByte, "int", "SByte", True, None, None,
               lambda a, m: -a - m),
    "Total": (ua.VariantType.Int64, "int", "Int64", False, None, "kWh",
              lambda a, m: -(2 ** 40) - a * 1000 - m),
    "Cycle": ("Duration", "float", "Double", False, None, "ms",
              lambda a, m: 250.0 * a + m),
}


def path_name(a, m, var):
    return f"Plant.Area{a}.Machine{m}.{var}"


async def build(server, idx):
    objects = server.nodes.objects
    plant = await objects.add_object(idx, "Plant")
    await plant.add_property(ua.NodeId("Plant.Manufacturer", idx), ua.QualifiedName("Manufacturer", 0), "ACME")
    skipped = {
        "Recipe": await plant.add_variable(idx, "Recipe", ua.Variant([1.0, 2.0, 3.0], ua.VariantType.Double)),
        "Started": await plant.add_variable(idx, "Started", ua.Variant(datetime.datetime(2026, 1, 1), ua.VariantType.DateTime)),
        "Serial": await plant.add_variable(idx, "Serial", ua.Variant(b"\x01\x02", ua.VariantType.ByteString)),
    }
    await plant.add_method(idx, "Reset", lambda parent: [], [], [])
    # An enumeration: its values travel as Int32.
    state = await plant.add_variable(idx, "State", ua.Variant(0, ua.VariantType.Int32),
                                     datatype=ua.NodeId(ua.ObjectIds.ServerState))
    nodes = {}
    for a in range(1, AREAS + 1):
        area = await plant.add_folder(idx, f"Area{a}")
        for m in range(1, MACHINES + 1):
            machine = await area.add_object(idx, f"Machine{m}")
            for var, (vtype, _, _, writable, eurange, unit, value) in VARIABLES.items():
                v = value(a, m)
                if vtype == "Duration":
                    node = await machine.add_variable(
                        idx, var, ua.Variant(v, ua.VariantType.Double),
                        datatype=ua.NodeId(ua.ObjectIds.Duration))
                else:
                    node = await machine.add_variable(idx, var, ua.Variant(v, vtype))
                if writable:
                    await node.set_writable()
                if eurange:
                    await node.add_property(ua.NodeId(f"{path_name(a, m, var)}.EURange", idx),
                                            ua.QualifiedName("EURange", 0),
                                            ua.Range(Low=eurange[0], High=eurange[1]))
                if unit:
                    eu = ua.EUInformation(DisplayName=ua.LocalizedText(unit), Description=ua.LocalizedText(unit))
                    await node.add_property(ua.NodeId(f"{path_name(a, m, var)}.EngineeringUnits", idx),
                                            ua.QualifiedName("EngineeringUnits", 0), eu)
                nodes[path_name(a, m, var)] = (node, v)
    nodes["Plant.State"] = (state, 0)
    return nodes, skipped


def property_problems(props, name, ty, datatype, access, eurange, unit):
    """What is wrong with property `name` of the written model (parsed
    with PyYAML, a reader Ferrite did not write), or an empty list."""
    p = props.get(name)
    if p is None:
        return [f"{name}: missing"]
    want = {"type": ty, "access": access, "unit": unit,
            "min": eurange[0] if eurange else None, "max": eurange[1] if eurange else None}
    got = {k: p.get(k) for k in want}
    problems = [f"{name}.{k}: {got[k]!r}, wanted {v!r}" for k, v in want.items() if got[k] != v]
    if p.get("opcua", {}).get("datatype") != datatype:
        problems.append(f"{name}.opcua.datatype: {p.get('opcua')}, wanted {datatype}")
    if "description" in p:
        problems.append(f"{name}: a description that only repeats the name: {p['description']!r}")
    return problems


async def main():
    checks = Checks()
    ua_port = free_port()
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{ua_port}/discover"
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:ferrite:interop:discover")
    nodes, skipped = await build(server, idx)
    checks.check("asyncua serves 501 variables to discover", len(nodes) == 501, len(nodes))

    work = Path(tempfile.mkdtemp(prefix="ferrite-discover-"))
    for sub in ("models", "devices", "rules"):
        (work / sub).mkdir()
    (work / "ferrite.toml").write_text('[gateway]\nid = "discover"\ndata_dir = "data"\n')
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}/api/v1"
    async with server:
        gateway = start_ferrite(FERRITE, work, api_port)
        up = await wait_for(lambda: http("GET", f"{base}/devices")[0] == 200, 20)
        checks.check("ferrite runs on an empty project", bool(up))

        # "I have an endpoint": the clock starts.
        t0 = time.monotonic()
        run = await asyncio.to_thread(
            subprocess.run,
            [FERRITE, "discover", "opcua", endpoint, "--name", "plant", "--out", str(work),
             "--pki", str(work / "data" / "pki")],
            capture_output=True, text=True, timeout=120)
        t_discovered = time.monotonic() - t0
        print(run.stdout, end="")
        checks.check("ferrite discover opcua exits 0", run.returncode == 0, run.stderr)
        checks.check("501 variables became properties (500 and an enumeration)",
                     "501 variables as properties" in run.stdout, run.stdout[:300])
        for name, why in [("Plant/Recipe", "an array"), ("Plant/Started", "a DateTime"),
                          ("Plant/Serial", "a ByteString"), ("Plant/Reset", "a method")]:
            checks.check(f"{name} is skipped as {why}",
                         any(line.startswith(f"skipped {name} (") and why in line
                             for line in run.stdout.splitlines()), run.stdout[:600])
        checks.check("the object's Manufacturer property is left out by default",
                     "1 properties of objects left out" in run.stdout, run.stdout[:300])

        check = await asyncio.to_thread(
            subprocess.run, [FERRITE, "check", "--config", str(work / "ferrite.toml")],
            capture_output=True, text=True, timeout=60)
        checks.check("ferrite check passes on the written files", check.returncode == 0,
                     check.stdout[-800:])

        written = yaml.safe_load((work / "models" / "plant.yaml").read_text())
        props = written.get("properties", {})
        bad = []
        for a in range(1, AREAS + 1):
            for m in range(1, MACHINES + 1):
                for var, (_, ty, datatype, writable, eurange, unit, _) in VARIABLES.items():
                    bad += property_problems(props, path_name(a, m, var), ty, datatype,
                                             "readwrite" if writable else "read", eurange, unit)
        bad += property_problems(props, "Plant.State", "int", "Int32", "read", None, None)
        checks.check("every property has its type, DataType, access, EURange and unit",
                     not bad, f"{len(bad)} wrong, such as {bad[:2]}")

        # Values in the REST API: the gateway picked the files up live.
        def all_values():
            status, body = http("GET", f"{base}/devices/plant")
            if status != 200:
                return None
            props = body.get("properties", {})
            good = [n for n, p in props.items() if p.get("quality") == "good"]
            return props if len(good) == 501 else None

        values = await wait_for(all_values, 60, step=0.1)
        t_values = time.monotonic() - t0
        checks.check("the device was added live and all 501 values are good", values is not None,
                     http("GET", f"{base}/devices/plant")[1])
        if values:
            wrong = [(n, values[n].get("value"), v) for n, (_, v) in nodes.items()
                     if not same(values.get(n, {}).get("value"), v)]
            checks.check("every value the gateway reads is asyncua's", not wrong,
                         f"{len(wrong)} differ, such as {wrong[:3]}")
        checks.check(f"endpoint to values in the REST API: {t_values:.2f} s "
                     f"(discover {t_discovered:.2f} s); target 60 s",
                     t_values < 60, f"{t_values:.2f} s", show=True)

        # Discovery wrote nothing: every value is still the one set at start.
        changed = []
        for n, (node, v) in nodes.items():
            now = await node.read_value()
            if not same(now, v):
                changed.append((n, now, v))
        checks.check("discovery wrote nothing to the server", not changed, changed[:3])

        # Writes go through the written model's checks, in the node's type.
        mode = path_name(1, 1, "Mode")
        # The REST calls run on a thread: asyncua serves from this loop.
        status, body = await asyncio.to_thread(
            http, "PUT", f"{base}/devices/plant/properties/{mode}", {"value": 3})
        node = nodes[mode][0]
        now = await node.read_data_value()
        checks.check("a write lands in asyncua as an Int16",
                     status == 200 and now.Value.Value == 3 and now.Value.VariantType == ua.VariantType.Int16,
                     f"{status} {body} {now.Value}")
        status, body = await asyncio.to_thread(
            http, "PUT", f"{base}/devices/plant/properties/{mode}", {"value": 9})
        checks.check("a write outside EURange is refused", status in (400, 422), f"{status} {body}")
        temp = path_name(1, 1, "Temperature")
        status, body = await asyncio.to_thread(
            http, "PUT", f"{base}/devices/plant/properties/{temp}", {"value": 30})
        checks.check("a read-only variable refuses writes", status in (403, 405, 409), f"{status} {body}")

        stop_ferrite(gateway, checks)
    sys.exit(checks.finish())


if __name__ == "__main__":
    asyncio.run(main())
