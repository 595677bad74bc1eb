"""Crash campaign: `kill -9` the gateway at random points under write and
poll load, restart it on the same data dir, and check that nothing it had
acknowledged was lost, that the store reads back whole, and that the
control plane ends up with exactly the gateway's history.

Each trial:
  1. starts `ferrite run` on the campaign's data dir (after a kill, this is
     the recovery) and times how long it takes to serve again;
  2. checks the previous trial's acknowledgements:
     - every write answered 200 is in the audit log (who, value, ok);
     - on the device itself (its holding registers, read over Modbus TCP
       by this script): the last acknowledged value, or one written after
       it whose answer the kill cut off;
     - every distinct reading the API showed (GET property: the live view,
       which is only updated after the store's fsync) is in the history;
  3. checks the store: every history reads back in full, in time order,
     with counters that never go down; the audit log and events read back;
  4. puts load on it (writes to a setpoint, one after the other, each value
     used once in the whole campaign; reads of three counting devices
     polled every 20 ms, plus history reads) for a random 0.3 to 2.5 s,
     and `kill -9`s it mid-flow.

The gateway syncs to `ferrite-cloud` all along (`[cloud]`, enrolled with
`ferrite-cloud gateway add`, its embedded broker behind the login guard),
so the outbox and the uplink are under `kill -9` too. After the trials the
devices stop, the outbox drains, and the control plane's history of every
device must equal the gateway's: the same values at the same times, in
order, each once.

The devices are `ferrite-sim` (Modbus TCP) with counters that only rise, so
each reading has a unique value. Figures count distinct values, never
repeated GETs.

With `--upgrade-from OLD_FERRITE`, the first half of the trials run an
older gateway and the rest FERRITE on the same data dir: an upgrade after a
`kill -9`, under the same checks (docs/gateway.md, "Upgrading").

Usage: python3 crash.py FERRITE FERRITE_SIM FERRITE_CLOUD [--trials N] [--seed S]
                        [--upgrade-from OLD_FERRITE]
Prints a line per trial and a summary; exits 1 on any loss or corruption.
"""
import argparse
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from campaign import history as history_of  # noqa: E402
from campaign import http  # noqa: E402
from common import free_port  # noqa: E402

DEVICES = ["d1", "d2", "d3"]
MODEL = """kind: DeviceModel
name: line
properties:
  count: { type: int, modbus: { table: holding, address: 0, format: u32 } }
  setpoint: { type: int, access: readwrite, min: 0, max: 4000000000, modbus: { table: holding, address: 10, format: u32 } }
"""


def device_file(name, port, unit):
    return (f"kind: Device\nname: {name}\nmodel: line\npoll: 20ms\ntimeout: 500ms\n"
            f"modbus-tcp: {{ host: 127.0.0.1, port: {port}, unit: {unit} }}\n")


def make_project(work, modbus_port, cloud_mqtt_port):
    for sub in ("models", "devices", "rules"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "ferrite.toml").write_text(
        '[gateway]\nid = "crash"\ndata_dir = "data"\n'
        f'[cloud]\nbroker = "mqtt://127.0.0.1:{cloud_mqtt_port}"\npassword_file = "gateways/crash.secret"\n'
        'batch_interval = "200ms"\nack_timeout = "3s"\n')
    (work / "models" / "line.yaml").write_text(MODEL)
    for unit, name in enumerate(DEVICES, start=1):
        (work / "devices" / f"{name}.yaml").write_text(device_file(name, modbus_port, unit))
    waves = "".join(
        f'[[wave]]\ndevice = "{d}"\nproperty = "count"\nshape = "counter"\nmin = {i * 1_000_000}\nrate = 50\n'
        for i, d in enumerate(DEVICES))
    (work / "sim.toml").write_text(f'gateway = "ferrite.toml"\ntick = "20ms"\n{waves}')


class Load:
    """Writers and readers against one gateway incarnation."""

    def __init__(self, base, next_value):
        self.base = base
        self.stop = threading.Event()
        self.next_value = next_value
        self.acked_writes = []      # (device, setpoint value) answered 200, in order
        self.attempted = {d: [] for d in DEVICES}  # setpoint values sent, in order
        self.seen = set()           # distinct (device, count value) shown by the API
        self.threads = [threading.Thread(target=self.writer, args=(d,), daemon=True) for d in DEVICES[:2]]
        self.threads += [threading.Thread(target=self.reader, daemon=True) for _ in range(2)]
        self.lock = threading.Lock()

    def writer(self, device):
        while not self.stop.is_set():
            with self.lock:
                value = self.next_value[0]
                self.next_value[0] = value + 1
                self.attempted[device].append(value)
            status, _ = http("PUT", f"{self.base}/api/v1/devices/{device}/properties/setpoint", {"value": value})
            if status == 200:
                with self.lock:
                    self.acked_writes.append((device, value))

    def reader(self):
        while not self.stop.is_set():
            device = random.choice(DEVICES)
            status, body = http("GET", f"{self.base}/api/v1/devices/{device}/properties/count")
            if status == 200 and body and body.get("value") is not None:
                with self.lock:
                    self.seen.add((device, body["value"]))
            if random.random() < 0.2:
                http("GET", f"{self.base}/api/v1/devices/{device}/properties/count/history?limit=100")

    def start(self):
        for t in self.threads:
            t.start()

    def halt(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def audit_values(base, device, wanted):
    """The setpoint values of successful writes to `device` in the audit
    log, paging back from the newest until every one of `wanted` is seen or
    the log ends."""
    values, before = set(), None
    while not wanted <= values:
        query = {"device": device, "limit": "1000"}
        if before is not None:
            query["before"] = str(before)
        status, page = http("GET", f"{base}/api/v1/audit?" + urllib.parse.urlencode(query))
        if status != 200:
            raise RuntimeError(f"audit: HTTP {status} {page}")
        for entry in page:
            if entry.get("result") == "ok" and entry.get("property") == "setpoint":
                values.add(entry.get("new"))
        if len(page) < 1000:
            break
        before = page[-1]["seq"]
    return values


def modbus_u32(port, unit, address):
    """Holding registers `address` and `address + 1` of `unit`, as a u32
    (ABCD), read straight from the device with Modbus TCP function 3."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(struct.pack(">HHHBBHH", 1, 0, 6, unit, 3, address, 2))
        answer = b""
        while len(answer) < 13:
            chunk = conn.recv(13 - len(answer))
            if not chunk:
                raise RuntimeError(f"unit {unit}: the device closed the connection")
            answer += chunk
    if answer[7] != 3 or answer[8] != 4:
        raise RuntimeError(f"unit {unit}: unexpected answer {answer.hex()}")
    return struct.unpack(">I", answer[9:13])[0]


def device_problems(load, modbus_port):
    """Each written device holds its last acknowledged value, or a value
    written after it whose answer the kill cut off."""
    problems = []
    for unit, device in enumerate(DEVICES, start=1):
        acked = [v for d, v in load.acked_writes if d == device]
        if not acked:
            continue
        attempted = load.attempted[device]
        later = attempted[attempted.index(acked[-1]):]
        held = modbus_u32(modbus_port, unit, 10)
        if held not in later:
            problems.append(f"{device}: holds {held}, not its last acknowledged write {acked[-1]} "
                            f"nor one after it {later[1:]}")
    return problems


def check_store(base):
    """Reads everything back; returns the problems found."""
    problems, histories = [], {}
    for device in DEVICES:
        try:
            history = history_of(base, device)
        except RuntimeError as e:
            problems.append(str(e))
            continue
        histories[device] = history
        for a, b in zip(history, history[1:]):
            if not a["ts"] < b["ts"]:
                problems.append(f"{device}: history out of time order at {a['ts']}, {b['ts']}")
                break
            if b["value"] < a["value"]:
                problems.append(f"{device}: the counter went down {a} -> {b}")
                break
    for path in ("/api/v1/events?limit=1000", "/api/v1/audit?limit=1000", "/api/v1/devices"):
        status, _ = http("GET", base + path)
        if status != 200:
            problems.append(f"GET {path}: HTTP {status}")
    return problems, histories


def cloud_history(cloud_base, device):
    """Every change of device.count the control plane holds, in its order."""
    out, after = [], 0
    while True:
        status, page = http("GET", f"{cloud_base}/api/v1/gateways/crash/devices/{device}/properties/count/history?"
                                   + urllib.parse.urlencode({"after": str(after), "limit": "10000"}))
        if status != 200:
            return out
        out.extend((p["ts"], p["value"]) for p in page)
        if len(page) < 10000:
            return out
        after = page[-1]["seq"]


def sync_check(base, cloud_base, sim):
    """Stops the devices, waits for the outbox to drain, and compares the
    control plane's history of each device with the gateway's. Returns
    (points synced, missing, doubled, ok)."""
    sim.terminate()
    sim.wait(timeout=10)
    time.sleep(1.0)

    def drained():
        status, body = http("GET", base + "/api/v1/sync")
        return status == 200 and body.get("backlog") == 0 and body.get("connected")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not drained():
        time.sleep(0.2)
    synced = missing = doubled = 0
    ok = drained()
    if not ok:
        print(f"sync: the outbox did not drain: {http('GET', base + '/api/v1/sync')[1]}")
    for device in DEVICES:
        local = [(p["ts"], p["value"]) for p in history_of(base, device)]
        remote = cloud_history(cloud_base, device)
        synced += len(remote)
        missing += len(set(local) - set(remote))
        doubled += len(remote) - len(set(remote))
        same = [(t, v) for t, v in remote] == [(t, v) for t, v in local]
        # Times may differ in their last digits by format; compare values and order too.
        if not same and [v for _, v in remote] != [v for _, v in local]:
            ok = False
            print(f"sync: {device}: control plane {len(remote)} points, gateway {len(local)}; "
                  f"missing {sorted(set(local) - set(remote))[:3]}")
    print(f"sync: the control plane holds {synced} points; missing {missing}, doubled {doubled}", flush=True)
    return synced, missing, doubled, ok and missing == 0 and doubled == 0


def wait_serving(base, proc, seconds=20):
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if proc.poll() is not None:
            return None
        status, _ = http("GET", base + "/api/v1/devices")
        if status == 200:
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ferrite")
    parser.add_argument("sim")
    parser.add_argument("cloud")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--upgrade-from", metavar="OLD_FERRITE",
                        help="run the first half of the trials with this (older) ferrite, the rest "
                             "with FERRITE: the upgrade, under the same checks")
    args = parser.parse_args()
    random.seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ferrite-crash-"))
    modbus_port, api_port, cloud_port, cloud_mqtt = free_port(), free_port(), free_port(), free_port()
    make_project(work, modbus_port, cloud_mqtt)
    base = f"http://127.0.0.1:{api_port}"
    cloud_base = f"http://127.0.0.1:{cloud_port}"
    # The control plane, with the gateway enrolled.
    enrolled = subprocess.run([args.cloud, "gateway", "add", "crash", "--config", str(work / "cloud.toml")],
                              capture_output=True, text=True)
    if enrolled.returncode != 0:
        print(f"cannot enrol the gateway: {enrolled.stderr}")
        return 1
    cloud_log = open(work / "cloud.log", "w")
    cloud = subprocess.Popen([args.cloud, "run", "--config", str(work / "cloud.toml"),
                              "--listen", f"127.0.0.1:{cloud_port}", "--mqtt-listen", f"127.0.0.1:{cloud_mqtt}",
                              "--data-dir", str(work / "cloud-data")], stdout=cloud_log, stderr=cloud_log)
    print(f"crash campaign: {args.trials} trials, seed {args.seed}, in {work}", flush=True)

    sim_log = open(work / "sim.log", "w")
    # The simulator serves every device of the project; its TCP endpoint is
    # the devices' host:port.
    sim = subprocess.Popen([args.sim, "--config", str(work / "sim.toml")], stdout=sim_log, stderr=sim_log)
    log = open(work / "gateway.log", "w")
    totals = {"writes": 0, "readings": 0, "lost_writes": 0, "lost_readings": 0, "corrupt": 0,
              "devices_wrong": 0}
    recoveries = []
    pending = None              # the previous incarnation's Load
    next_value = [0]
    failed = False
    try:
        for trial in range(1, args.trials + 2):
            last = trial == args.trials + 1     # a final start, to check the last kill
            old = args.upgrade_from and trial <= args.trials // 2
            if args.upgrade_from and trial == args.trials // 2 + 1:
                print(f"trial {trial}: upgraded to {args.ferrite} on the same data dir", flush=True)
            proc = subprocess.Popen([args.upgrade_from if old else args.ferrite, "run", "--config", str(work / "ferrite.toml"),
                                     "--listen", f"127.0.0.1:{api_port}"],
                                    stdout=subprocess.DEVNULL, stderr=log)
            took = wait_serving(base, proc)
            if took is None:
                print(f"trial {trial}: the gateway did not come back (see {work}/gateway.log)")
                totals["corrupt"] += 1
                failed = True
                break
            if trial > 1:
                recoveries.append(took)
            if pending is not None:
                problems, histories = check_store(base)
                stored = {d: {p["value"] for p in h} for d, h in histories.items()}
                lost_readings = [(d, v) for d, v in sorted(pending.seen) if v not in stored.get(d, set())]
                lost_writes = []
                for device in DEVICES[:2]:
                    acked = {v for d, v in pending.acked_writes if d == device}
                    audited = audit_values(base, device, acked)
                    lost_writes += [(device, v) for v in acked if v not in audited]
                try:
                    wrong = device_problems(pending, modbus_port)
                except (OSError, RuntimeError) as e:
                    wrong = [f"cannot read the devices: {e}"]
                totals["devices_wrong"] += len(wrong)
                problems += wrong
                totals["writes"] += len(pending.acked_writes)
                totals["readings"] += len(pending.seen)
                totals["lost_writes"] += len(lost_writes)
                totals["lost_readings"] += len(lost_readings)
                totals["corrupt"] += len(problems)
                ok = not (lost_writes or lost_readings or problems)
                print(f"trial {trial - 1}: restarted in {took:.2f} s; {len(pending.acked_writes)} acknowledged "
                      f"writes, {len(pending.seen)} distinct readings shown; lost: {len(lost_writes)} writes, "
                      f"{len(lost_readings)} readings; store problems: {len(problems)}"
                      + ("" if ok else f"  FAIL {lost_writes[:3]} {lost_readings[:3]} {problems[:3]}"),
                      flush=True)
                failed |= not ok
            if last:
                sync = sync_check(base, cloud_base, sim)
                totals["synced"], totals["sync_missing"], totals["sync_doubled"], sync_ok = sync
                failed |= not sync_ok
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)
                break
            load = Load(base, next_value)
            load.start()
            time.sleep(random.uniform(0.3, 2.5))
            # No new requests from here; those in flight meet the kill (a
            # write cut off this way may or may not have reached the device).
            load.stop.set()
            proc.kill()              # SIGKILL, mid-flow
            proc.wait()
            load.halt()
            pending = load
    finally:
        for child in (sim, cloud):
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
    recoveries.sort()
    summary = {
        "trials": args.trials,
        "seed": args.seed,
        "acknowledged_writes": totals["writes"],
        "distinct_readings_shown": totals["readings"],
        "lost_writes": totals["lost_writes"],
        "devices_not_holding_their_last_write": totals["devices_wrong"],
        "synced_to_control_plane": totals.get("synced"),
        "missing_at_control_plane": totals.get("sync_missing"),
        "doubled_at_control_plane": totals.get("sync_doubled"),
        "lost_readings": totals["lost_readings"],
        "store_problems": totals["corrupt"],
        "restart_median_s": round(recoveries[len(recoveries) // 2], 3) if recoveries else None,
        "restart_max_s": round(recoveries[-1], 3) if recoveries else None,
    }
    print("summary: " + json.dumps(summary), flush=True)
    return 1 if failed or totals["writes"] == 0 or totals["readings"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
