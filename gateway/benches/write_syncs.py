#!/usr/bin/env python3
"""Counts the syncs a REST write costs the gateway, and times the writes.

One Modbus device (ferrite-sim, values holding still), WRITES sequential
REST writes of a changing value, `strace -f -c` on the gateway meanwhile
(fsync, fdatasync, sync_file_range: sled syncs with sync_file_range), and
5 s of the same with no writes, for what the gateway syncs on its own.
Prints one JSON line. Needs strace (Debian's package); binds 127.0.0.1.
See README.md, "A write's syncs".

    python3 gateway/benches/write_syncs.py FERRITE FERRITE_SIM [WRITES]
    python3 gateway/benches/write_syncs.py target/release/ferrite target/debug/ferrite-sim 500
"""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SYNCS = ("fsync", "fdatasync", "sync_file_range")
MODEL = ("kind: DeviceModel\nname: m\nproperties:\n"
         "  sp: { type: int, access: readwrite, modbus: { table: holding, address: 0, format: u32 } }\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(root, modbus_port):
    for sub in ("models", "devices", "rules"):
        os.makedirs(os.path.join(root, sub))
    files = {
        "ferrite.toml": '[gateway]\nid = "syncs"\ndata_dir = "data"\n',
        "models/m.yaml": MODEL,
        "devices/d.yaml": ("kind: Device\nname: d\nmodel: m\npoll: 1s\n"
                           f"modbus-tcp: {{ host: 127.0.0.1, port: {modbus_port}, unit: 1 }}\n"),
        # No [[wave]]: a writable property keeps what it is written.
        "sim.toml": 'gateway = "ferrite.toml"\ntick = "1s"\n',
    }
    for path, text in files.items():
        with open(os.path.join(root, path), "w") as f:
            f.write(text)


def put(base, value):
    req = urllib.request.Request(f"{base}/api/v1/devices/d/properties/sp",
                                 data=json.dumps({"value": value}).encode(), method="PUT",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def online(base, within):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/devices/d", timeout=2) as r:
                if json.load(r).get("status") == "online":
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the device did not come online")


def syncs_during(pid, out, action):
    """Runs `action` under `strace -c` on `pid`: the syncs by name, and what
    `action` returned."""
    tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=" + ",".join(SYNCS),
                               "-o", out, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    result = action()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(10)
    calls = {}
    with open(out) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] in SYNCS:
                calls[parts[-1]] = int(parts[3])
    return calls, result


def main():
    ferrite, sim = sys.argv[1], sys.argv[2]
    writes = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    with tempfile.TemporaryDirectory() as root:
        project(root, free_port())
        api_port = free_port()
        base = f"http://127.0.0.1:{api_port}"
        devnull = subprocess.DEVNULL
        device = subprocess.Popen([sim, "--config", f"{root}/sim.toml"], stdout=devnull, stderr=devnull)
        gateway = subprocess.Popen([ferrite, "run", "--config", f"{root}/ferrite.toml",
                                    "--listen", f"127.0.0.1:{api_port}"],
                                   stdout=devnull, stderr=devnull, env={**os.environ, "RUST_LOG": "warn"})
        try:
            online(base, 20)
            put(base, 0)
            time.sleep(1.5)
            idle, _ = syncs_during(gateway.pid, f"{root}/idle.txt", lambda: time.sleep(5))

            def write_all():
                took = []
                for value in range(1, writes + 1):
                    t = time.perf_counter()
                    if put(base, value) != 200:
                        raise SystemExit(f"write {value} failed")
                    took.append((time.perf_counter() - t) * 1000)
                return sorted(took)

            busy, took = syncs_during(gateway.pid, f"{root}/busy.txt", write_all)
            print(json.dumps({
                "ferrite": ferrite,
                "writes": writes,
                "syncs_during_writes": busy,
                "syncs_per_write": round(sum(busy.values()) / writes, 2),
                "syncs_in_5s_idle": idle,
                "write_p50_ms": round(statistics.median(took), 2),
                "write_p99_ms": round(took[max(0, int(len(took) * 0.99) - 1)], 2),
            }))
        finally:
            gateway.send_signal(signal.SIGTERM)
            device.kill()
            gateway.wait(10)
            device.wait(10)


if __name__ == "__main__":
    main()
