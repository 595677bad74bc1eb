#!/usr/bin/env python3
"""Interop: `ferrite discover modbus` against pymodbus, a server written by others.

The script starts pymodbus Modbus TCP servers holding three unit ids (1, 2
and 5) whose register maps have gaps (sparse data blocks: a read that touches
an undefined address is refused with IllegalDataAddress, as real devices do),
and counts every write any block receives. It runs

    ferrite discover modbus tcp://127.0.0.1:PORT --units 1-10 --addresses 0-999 --out WORK

and checks that exactly units 1, 2 and 5 are found, with exactly the readable
ranges of each table; that nothing was written to the server (the write
counter stays 0); that it takes less than the stated time; that a server which
stays silent for missing units (ignore_missing_slaves, as on a serial bus)
gives the same answer through timeouts, and so does RTU framing over TCP
(`rtu-over-tcp://`, a serial device server: one request at a time); and that
the drafts it wrote pass
`ferrite check` and read the server's values through `ferrite run`.

    python3 tests/interop/modbus_discover_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymodbus import FramerType
from pymodbus.datastore import ModbusServerContext, ModbusSlaveContext, ModbusSparseDataBlock
from pymodbus.pdu import bit_message
from pymodbus.pdu.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer

from common import Checks, free_port, http, start_ferrite, stop_ferrite, wait_for

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"
STATED_SECONDS = 30

WRITES = {"count": 0}


# pymodbus 3.8.6 checks the address range of register reads but not of bit
# reads: a coil read across a gap fails inside its datastore and goes out as
# a malformed exception (function code 0). Devices answer IllegalDataAddress
# there, as pymodbus does for registers; the same check, for bits:
_read_bits = bit_message.ReadCoilsRequest.update_datastore


async def _checked_read_bits(self, context):
    if not context.validate(self.function_code, self.address, self.count):
        return ExceptionResponse(self.function_code, ExceptionResponse.ILLEGAL_ADDRESS)
    return await _read_bits(self, context)


bit_message.ReadCoilsRequest.update_datastore = _checked_read_bits


class CountingBlock(ModbusSparseDataBlock):
    """A sparse block that counts the writes it is asked for."""

    def setValues(self, address, values, use_as_default=False):  # noqa: N802 (pymodbus's name)
        WRITES["count"] += 1
        return super().setValues(address, values, use_as_default)


# unit: table: [(first wire address, values)]; anything else is a gap.
MAPS = {
    1: {"hr": [(0, list(range(10))), (100, [1000 + i for i in range(20)])],
        "ir": [(0, [7, 8, 9, 10, 11])],
        "co": [(0, [i % 2 == 0 for i in range(16)])],
        "di": []},
    2: {"hr": [(10, [42, 43, 44])],
        "ir": [],
        "co": [],
        "di": [(0, [True] * 8)]},
    5: {"hr": [(0, [500 + i for i in range(125)]), (500, [65535])],
        "ir": [(200, list(range(10)))],
        "co": [],
        "di": []},
}
# What discovery must print: (unit, table, ranges).
EXPECTED = [
    (1, "coil", "0-15"), (1, "input", "0-4"), (1, "holding", "0-9, 100-119"),
    (2, "discrete", "0-7"), (2, "holding", "10-12"),
    (5, "input", "200-209"), (5, "holding", "0-124, 500"),
]


def block(spans):
    values = {}
    for first, items in spans:
        for i, v in enumerate(items):
            # pymodbus offsets wire addresses by one unless zero_mode.
            values[first + i + 1] = v
    # A block needs one value at least; address 0 of the store is never
    # reached from the wire (wire 0 is store 1).
    return CountingBlock(values or {0: 0})


def context():
    units = {unit: ModbusSlaveContext(hr=block(m["hr"]), ir=block(m["ir"]),
                                      co=block(m["co"]), di=block(m["di"]))
             for unit, m in MAPS.items()}
    WRITES["count"] = 0
    return ModbusServerContext(slaves=units, single=False)


def discover(port, work, extra=(), scheme="tcp"):
    started = time.monotonic()
    run = subprocess.run(
        [FERRITE, "discover", "modbus", f"{scheme}://127.0.0.1:{port}", "--units", "1-10",
         "--addresses", "0-999", *extra],
        capture_output=True, text=True, timeout=120, cwd=work)
    return run, time.monotonic() - started


def found_rows(stdout):
    rows = []
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1] in ("coil", "discrete", "input", "holding"):
            rows.append((int(parts[0]), parts[1], parts[2]))
    return rows


async def serve(**options):
    """A pymodbus server of the test's units on a free port: (port, stop)."""
    port = free_port()
    server = ModbusTcpServer(context(), address=("127.0.0.1", port), **options)
    serving = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.5)

    async def stop():
        closed = server.shutdown()
        if asyncio.iscoroutine(closed):
            await closed
        serving.cancel()
    return port, stop


async def main():
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="ferrite-mbdiscover-"))
    (work / "rules").mkdir()
    (work / "ferrite.toml").write_text('[gateway]\nid = "mbdiscover"\ndata_dir = "data"\n')

    port, stop = await serve()
    run, took = await asyncio.to_thread(
        discover, port, work, ("--out", str(work), "--name", "rig"))
    print(run.stdout, end="")
    checks.check("ferrite discover modbus exits 0", run.returncode == 0, run.stderr[-600:])
    rows = found_rows(run.stdout)
    checks.check("units 1, 2 and 5 found, each table's readable ranges exact",
                 rows == EXPECTED, f"{rows}")
    checks.check("3 of 10 units answered", "3 of 10 units answered" in run.stdout, run.stdout[:200])
    checks.check("nothing was written to the server", WRITES["count"] == 0, WRITES["count"])
    checks.check(f"discovery took {took:.2f} s (stated: under {STATED_SECONDS} s)",
                 took < STATED_SECONDS, f"{took:.2f} s", show=True)

    check = await asyncio.to_thread(
        subprocess.run, [FERRITE, "check", "--config", str(work / "ferrite.toml")],
        capture_output=True, text=True, timeout=60)
    checks.check("the three drafts pass ferrite check", check.returncode == 0
                 and "checked 3 models, 3 devices" in check.stdout, check.stdout[-600:])

    # The drafts read the server's values through a running gateway.
    api_port = free_port()
    gateway = start_ferrite(FERRITE, work, api_port)
    base = f"http://127.0.0.1:{api_port}/api/v1"

    def values_of(device):
        status, body = http("GET", f"{base}/devices/{device}")
        if status != 200:
            return None
        props = body.get("properties", {})
        return props if props and all(p.get("quality") == "good" for p in props.values()) else None

    u1 = await wait_for(lambda: values_of("rig-u1"), 20, step=0.2)
    u5 = await wait_for(lambda: values_of("rig-u5"), 20, step=0.2)
    got = (u1 or {}).get("holding_105", {}).get("value"), (u1 or {}).get("coil_2", {}).get("value"), \
        (u5 or {}).get("holding_500", {}).get("value"), (u5 or {}).get("input_203", {}).get("value")
    checks.check("the drafts read the server's values (holding 105, coil 2, holding 500, input 203)",
                 got == (1005, True, 65535, 3), got)
    stop_ferrite(gateway, checks)
    checks.check("still nothing written to the server", WRITES["count"] == 0, WRITES["count"])
    await stop()

    # The same answer from servers silent for missing units, as a serial bus
    # is: timeouts instead of exceptions. First over TCP framing; then RTU
    # framing over TCP (a serial device server: the bus's rules, one request
    # at a time).
    for answer, unwritten, options, scheme in (
        ("a server silent for missing units gives the same answer",
         "and nothing was written to it", {}, "tcp"),
        ("over RTU framing (rtu-over-tcp://), the same answer",
         "and nothing was written there either", {"framer": FramerType.RTU}, "rtu-over-tcp"),
    ):
        port, stop = await serve(ignore_missing_slaves=True, **options)
        run, took = await asyncio.to_thread(discover, port, work, ("--timeout-ms", "200"), scheme)
        rows = found_rows(run.stdout)
        checks.check(f"{answer} ({took:.2f} s)",
                     run.returncode == 0 and rows == EXPECTED, f"{rows} {run.stderr[-300:]}")
        checks.check(unwritten, WRITES["count"] == 0, WRITES["count"])
        await stop()

    # Nothing listening: a clear error, exit 1.
    run, _ = await asyncio.to_thread(discover, free_port(), work)
    checks.check("no server: exit 1 with the reason", run.returncode == 1
                 and "error:" in run.stderr, f"{run.returncode} {run.stderr[-300:]}")
    sys.exit(checks.finish())


if __name__ == "__main__":
    asyncio.run(main())
