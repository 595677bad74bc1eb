#!/usr/bin/env python3
"""Interop: Ferrite's Modbus driver against pymodbus, a device written by others.

The register images are built here with Python's `struct`, independently of
Ferrite's codec. The script starts a pymodbus TCP server with two unit ids,
runs `ferrite run` against it, and checks reads and writes through the REST API.

    python3 tests/interop/pymodbus_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import asyncio
import struct
import sys
import time

from common import Checks, free_port, http, project, same, start_ferrite, stop_ferrite

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import ModbusTcpServer

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"

MODEL = """
kind: DeviceModel
name: meter
properties:
  count:    { type: int,   access: readwrite, modbus: { table: holding, address: 0, format: u16 } }
  offset:   { type: int,   modbus: { table: holding, address: 1, format: i16 } }
  setpoint: { type: float, access: readwrite, min: 0, max: 100, modbus: { table: holding, address: 2, format: f32, order: CDAB } }
  big:      { type: int,   modbus: { table: holding, address: 4, format: u32 } }
  energy:   { type: int,   modbus: { table: input, address: 0, format: u64 } }
  temp:     { type: float, modbus: { table: input, address: 4, format: i16, scale: 0.1 } }
  volts:    { type: float, modbus: { table: input, address: 5, format: f64, order: DCBA } }
  name:     { type: string, modbus: { table: holding, address: 10, format: string(8) } }
  alarm:    { type: bool,  access: readwrite, modbus: { table: holding, address: 20, bit: 3 } }
  relay:    { type: bool,  access: readwrite, modbus: { table: coil, address: 0 } }
  door:     { type: bool,  modbus: { table: discrete, address: 2 } }
"""


def words(fmt, value):
    """Big-endian 16-bit words of `value` packed with struct format `fmt`."""
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]


def unit_context(seed):
    """Registers for one unit, built with struct (not with Ferrite's codec)."""
    hr = [0] * 64
    hr[0] = 1000 + seed
    hr[1] = words("h", -200 - seed)[0]
    hr[2:4] = list(reversed(words("f", 21.5 + seed)))            # CDAB: words swapped
    hr[4:6] = words("I", 3_000_000_000 + seed)
    text = (b"PM-0%d" % seed).ljust(8, b"\0")
    hr[10:14] = [int.from_bytes(text[i:i + 2], "big") for i in range(0, 8, 2)]
    hr[20] = 0b1001                                               # bits 0 and 3
    ir = [0] * 64
    ir[0:4] = words("Q", 0x0102030405060708 + seed)
    ir[4] = words("h", -123)[0]
    raw = struct.pack("<d", 230.25 + seed)                        # DCBA: little-endian
    ir[5:9] = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, 8, 2)]
    return ModbusSlaveContext(
        # pymodbus offsets addresses by one unless zero_mode; the leading
        # padding keeps wire address N at index N.
        hr=ModbusSequentialDataBlock(0, [0] + hr),
        ir=ModbusSequentialDataBlock(0, [0] + ir),
        co=ModbusSequentialDataBlock(0, [False] * 17),
        di=ModbusSequentialDataBlock(0, [False, False, False, True] + [False] * 13),
    )


def expected(seed):
    return {
        "count": 1000 + seed,
        "offset": -200 - seed,
        "setpoint": 21.5 + seed,
        "big": 3_000_000_000 + seed,
        "energy": 0x0102030405060708 + seed,
        "temp": -12.3,
        "volts": 230.25 + seed,
        "name": "PM-0%d" % seed,
        "alarm": True,
        "relay": False,
        "door": True,
    }


async def main():
    checks = Checks()
    units = {1: unit_context(1), 2: unit_context(2)}
    context = ModbusServerContext(slaves=units, single=False)
    modbus_port, api_port = free_port(), free_port()
    server = ModbusTcpServer(context, address=("127.0.0.1", modbus_port))
    serving = asyncio.create_task(server.serve_forever())

    work = project("ferrite-pymodbus-", MODEL)
    for unit in units:
        (work / "devices" / f"m{unit}.yaml").write_text(
            f"kind: Device\nname: m{unit}\nmodel: meter\npoll: 200ms\n"
            f"modbus-tcp: {{ host: 127.0.0.1, port: {modbus_port}, unit: {unit} }}\n"
        )
    gateway = start_ferrite(FERRITE, work, api_port)
    base = f"http://127.0.0.1:{api_port}/api/v1/devices"
    try:
        deadline = time.monotonic() + 20
        online = False
        while time.monotonic() < deadline and not online:
            await asyncio.sleep(0.1)
            statuses = []
            for unit in units:
                code, body = await asyncio.to_thread(http, "GET", f"{base}/m{unit}")
                statuses.append(code == 200 and body["status"] == "online")
            online = all(statuses)
        checks.check("both units online behind one TCP connection", online, (work / "ferrite.log").read_text()[-2000:])

        for unit in units:
            _, body = await asyncio.to_thread(http, "GET", f"{base}/m{unit}")
            props = (body or {}).get("properties", {})
            for name, want in expected(unit).items():
                got = props.get(name, {}).get("value")
                checks.check(f"unit {unit} reads {name}", same(got, want), f"got {got!r}, want {want!r}")

        # Writes, checked in pymodbus's own datastore.
        hr = lambda unit, addr, n: units[unit].getValues(3, addr, n)  # noqa: E731
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/m1/properties/setpoint", {"value": 42.25})
        checks.check("write f32 CDAB answers 200", code == 200, body)
        checks.check("f32 CDAB lands word-swapped", hr(1, 2, 2) == list(reversed(words("f", 42.25))), hr(1, 2, 2))
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/m2/properties/count", {"value": 65535})
        checks.check("write u16 to unit 2", code == 200 and hr(2, 0, 1) == [65535], (code, body, hr(2, 0, 1)))
        checks.check("unit 1 untouched by unit 2's write", hr(1, 0, 1) == [1001], hr(1, 0, 1))
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/m1/properties/alarm", {"value": False})
        checks.check("write one bit keeps the others", code == 200 and hr(1, 20, 1) == [0b0001], (code, hr(1, 20, 1)))
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/m1/properties/relay", {"value": True})
        coil = units[1].getValues(1, 0, 1)
        checks.check("write a coil", code == 200 and coil == [True], (code, body, coil))
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/m1/properties/setpoint", {"value": 250})
        checks.check("a write beyond max is refused with 400", code == 400, (code, body))
        checks.check("and never reaches the device", hr(1, 2, 2) == list(reversed(words("f", 42.25))), hr(1, 2, 2))
        code, body = await asyncio.to_thread(http, "GET", f"{base}/m1/properties/setpoint")
        checks.check("read after write round-trips", code == 200 and same(body["value"], 42.25), body)

        # pymodbus changes a value on its side; Ferrite sees it on the next poll.
        units[2].setValues(3, 1, words("h", -5))
        seen = False
        for _ in range(50):
            await asyncio.sleep(0.1)
            _, body = await asyncio.to_thread(http, "GET", f"{base}/m2/properties/offset")
            if body and body.get("value") == -5:
                seen = True
                break
        checks.check("a change on the device shows within a few polls", seen, body)
    finally:
        stop_ferrite(gateway, checks)
        await server.shutdown()
        serving.cancel()
    return checks.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
