"""Fault campaign: a gateway among devices that misbehave, a data disk that
fills up, and a control plane (and its broker) that vanish; it must stay up,
say clearly what is wrong, recover by itself, and lose nothing.

Set-up: one healthy device (`ferrite-sim`, a counter polled every 50 ms),
one fault device (a Modbus TCP server written here that can misbehave on
purpose), `ferrite run` with `[cloud]`, and `ferrite-cloud` (its embedded
broker, or Mosquitto with --mosquitto).

Rounds of, in random order:
  - device faults, each for a while, then healthy again:
      hang      answers half a frame, then stalls with the link open
      garbage   answers random bytes
      exception answers Modbus exceptions (02, 04, 06)
      flap      drops every connection at once, or half-way through a frame
      silent    takes requests and never answers
      short     answers with fewer registers than asked
    checked: the gateway serves; the fault device shows `error`/`offline`
    with a message; a write to it fails with a clear 5xx within its timeout
    plus a second; the healthy device keeps being polled (no gap over 1 s in
    its history); the fault device is `online` again within 5 s of healing.
  - control-plane outage: `kill -9` of ferrite-cloud (and of Mosquitto, with
    --mosquitto), a random 1-3 s, then restarted on the same data dir.
  - (as root) a full disk: the data dir sits on a small tmpfs, which is
    filled; checked: the gateway serves, /api/v1/status says the store fails
    and why, a `store_failing` event; once space returns, `store_recovered`
    and readings flow into history again.

At the end: every reading the API showed is in the gateway's history, and
the control plane's history of the healthy counter equals the gateway's.

Usage: python3 faults.py FERRITE FERRITE_SIM FERRITE_CLOUD [--rounds N]
       [--seed S] [--mosquitto /usr/sbin/mosquitto]
Prints each check and a summary; exits 1 if any check failed.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from campaign import history as _history  # noqa: E402
from campaign import http  # noqa: E402
from common import Checks, free_port  # noqa: E402

FAULTS = ["hang", "garbage", "exception", "flap", "silent", "short"]
MODEL = """kind: DeviceModel
name: line
properties:
  count: { type: int, modbus: { table: holding, address: 0, format: u32 } }
  setpoint: { type: int, access: readwrite, min: 0, max: 60000, modbus: { table: holding, address: 10 } }
"""


class FaultDevice:
    """A Modbus TCP server (unit 1, holding registers) that misbehaves on
    demand. Runs its own event loop in a thread."""

    def __init__(self):
        self.mode = "good"
        self.registers = [0] * 32
        self.injected = {f: 0 for f in FAULTS}
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_until_complete(server.serve_forever())

    def _tick(self):
        count = int(time.monotonic() * 20) & 0xFFFFFFFF
        self.registers[0], self.registers[1] = count >> 16, count & 0xFFFF

    async def _serve(self, reader, writer):
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                mode = self.mode
                if mode != "good":
                    self.injected[mode] += 1
                if mode == "hang":
                    writer.write(header[:4])
                    await writer.drain()
                    await asyncio.sleep(3600)
                elif mode == "silent":
                    continue
                elif mode == "flap":
                    if random.random() < 0.5:
                        writer.write(header[:5])
                        await writer.drain()
                    writer.transport.abort()
                    return
                elif mode == "garbage":
                    junk = bytes(random.getrandbits(8) for _ in range(random.randint(1, 40)))
                    if random.random() < 0.5:   # garbage with a plausible header
                        junk = struct.pack(">HHHB", tid, 0, len(junk) + 1, unit) + junk
                    writer.write(junk)
                elif mode == "exception":
                    code = random.choice([2, 4, 6])
                    writer.write(struct.pack(">HHHBBB", tid, 0, 3, unit, pdu[0] | 0x80, code))
                else:
                    writer.write(self._answer(tid, unit, pdu, short=(mode == "short")))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, tid, unit, pdu, short):
        fc = pdu[0]
        self._tick()
        if fc == 3:
            addr, count = struct.unpack(">HH", pdu[1:5])
            if short:
                count = max(0, count - 1)
            values = [self.registers[(addr + i) % 32] for i in range(count)]
            body = struct.pack(">BB", fc, 2 * count) + b"".join(struct.pack(">H", v) for v in values)
        elif fc == 6:
            addr, value = struct.unpack(">HH", pdu[1:5])
            self.registers[addr % 32] = value
            body = pdu[:5]
        elif fc == 16:
            addr, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            for i in range(count):
                self.registers[(addr + i) % 32] = struct.unpack(">H", pdu[6 + 2 * i:8 + 2 * i])[0]
            body = pdu[:5]
        else:
            body = struct.pack(">BB", fc | 0x80, 1)
        return struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body


class Readings:
    """Polls the healthy device's count through the API all along, keeping
    the distinct values it showed (a value shown by several GETs counts
    once)."""

    def __init__(self, base):
        self.base, self.seen, self.stop = base, set(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            status, body = http("GET", f"{self.base}/api/v1/devices/good/properties/count")
            if status == 200 and body and body.get("value") is not None:
                self.seen.add(body["value"])
            time.sleep(0.05)

    def halt(self):
        self.stop.set()
        self.thread.join(5)


def history(base, device):
    try:
        return _history(base, device)
    except RuntimeError:
        return []


def parse_ts(ts):
    # 2026-11-28T01:02:03.456Z
    from datetime import datetime
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def wait(predicate, seconds, step=0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(step)
    return predicate()


class Campaign:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.checks = Checks()
        self.api_port, self.sim_port = free_port(), free_port()
        self.cloud_port, self.broker_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.cloud_base = f"http://127.0.0.1:{self.cloud_port}"
        self.procs = {}
        self.mounted = False
        self.figures = {"device_faults": 0, "faulty_answers": 0, "cloud_outages": 0, "disk_full": 0}

    # ---- processes -------------------------------------------------------
    def spawn(self, name, argv):
        log = open(self.work / f"{name}.log", "a")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log)

    def kill(self, name, sig=signal.SIGKILL):
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def start_broker(self):
        if self.args.mosquitto:
            conf = self.work / "mosquitto.conf"
            conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
                            f"persistence true\npersistence_location {self.work}/\n")
            self.spawn("mosquitto", [self.args.mosquitto, "-c", str(conf)])
            time.sleep(0.3)

    def start_cloud(self):
        argv = [self.args.cloud, "run", "--listen", f"127.0.0.1:{self.cloud_port}",
                "--data-dir", str(self.work / "cloud-data")]
        if self.args.mosquitto:
            argv += ["--broker", f"mqtt://127.0.0.1:{self.broker_port}"]
        else:
            argv += ["--mqtt-listen", f"127.0.0.1:{self.broker_port}"]
        self.spawn("cloud", argv)
        ok = wait(lambda: http("GET", self.cloud_base + "/api/v1/gateways")[0] == 200, 15)
        self.checks.check("the control plane serves", ok)

    def setup(self):
        for sub in ("models", "devices", "rules"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        (self.work / "models" / "line.yaml").write_text(MODEL)
        (self.work / "devices" / "good.yaml").write_text(
            "kind: Device\nname: good\nmodel: line\npoll: 50ms\ntimeout: 300ms\n"
            f"modbus-tcp: {{ host: 127.0.0.1, port: {self.sim_port}, unit: 1 }}\n")
        # Demoted after three timeouts (silent, hang), the fault device is
        # probed every second rather than every 10 s, so that "online again
        # within 5 s of healing" measures the link's recovery.
        (self.work / "devices" / "faulty.yaml").write_text(
            "kind: Device\nname: faulty\nmodel: line\npoll: 100ms\ntimeout: 300ms\n"
            f"modbus-tcp: {{ host: 127.0.0.1, port: {self.fault_device.port}, unit: 1, demote: 1s }}\n")
        (self.work / "ferrite.toml").write_text(
            '[gateway]\nid = "faults"\ndata_dir = "data"\n'
            f'[cloud]\nbroker = "mqtt://127.0.0.1:{self.broker_port}"\nbatch_interval = "500ms"\nack_timeout = "3s"\n')
        (self.work / "sim.toml").write_text(
            'gateway = "sim-project.toml"\ntick = "50ms"\n'
            '[[wave]]\ndevice = "good"\nproperty = "count"\nshape = "counter"\nrate = 20\n')
        # The simulator serves the healthy device only.
        sim_project = self.work / "sim-project"
        for sub in ("models", "devices"):
            (sim_project / sub).mkdir(parents=True, exist_ok=True)
        (sim_project / "models" / "line.yaml").write_text(MODEL)
        (sim_project / "devices" / "good.yaml").write_text((self.work / "devices" / "good.yaml").read_text())
        (self.work / "sim-project.toml").write_text(
            '[gateway]\nid = "sim"\ndata_dir = "sim-data"\nmodels = "sim-project/models"\n'
            'devices = "sim-project/devices"\nrules = "sim-project/rules"\n')
        (sim_project / "rules").mkdir(exist_ok=True)

    def start_gateway(self):
        self.spawn("gateway", [self.args.ferrite, "run", "--config", str(self.work / "ferrite.toml"),
                               "--listen", f"127.0.0.1:{self.api_port}"])
        ok = wait(lambda: http("GET", self.base + "/api/v1/status")[0] == 200, 20)
        self.checks.check("the gateway serves", ok)

    # ---- phases ----------------------------------------------------------
    def device_info(self, name):
        return http("GET", f"{self.base}/api/v1/devices/{name}")[1] or {}

    def device_fault(self, fault):
        self.figures["device_faults"] += 1
        before = self.fault_device.injected[fault]
        started = time.time()
        self.fault_device.mode = fault
        time.sleep(random.uniform(1.5, 3.0))
        info = self.device_info("faulty")
        self.checks.check(f"{fault}: the gateway serves", http("GET", self.base + "/api/v1/status")[0] == 200)
        self.checks.check(f"{fault}: the device shows as failing, with a reason",
                          info.get("status") in ("error", "offline") and bool(info.get("error")), info)
        t0 = time.monotonic()
        status, body = http("PUT", f"{self.base}/api/v1/devices/faulty/properties/setpoint", {"value": 7})
        took = time.monotonic() - t0
        code = (body or {}).get("error", {}).get("code") if isinstance(body, dict) else None
        if fault == "short":
            # Short answers spoil reads only; a write's echo is whole.
            self.checks.check(f"{fault}: a write still succeeds, in time",
                              status == 200 and took < 1.5, f"HTTP {status} {body} in {took:.2f} s")
        else:
            self.checks.check(f"{fault}: a write fails clearly and in time",
                              500 <= status < 600 and bool(code) and took < 1.5,
                              f"HTTP {status} {body} in {took:.2f} s")
        self.fault_device.mode = "good"
        injected = self.fault_device.injected[fault] - before
        self.figures["faulty_answers"] += injected
        self.checks.check(f"{fault}: faults were injected", injected > 0, injected)
        back = wait(lambda: self.device_info("faulty").get("status") == "online", 5)
        self.checks.check(f"{fault}: the device is online again within 5 s", back, self.device_info("faulty"))
        self.check_good_flow(started, fault)

    def check_good_flow(self, since_epoch, label):
        stamps = [parse_ts(p["ts"]) for p in history(self.base, "good") if parse_ts(p["ts"]) >= since_epoch]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        worst = max(gaps, default=0.0)
        self.checks.check(f"{label}: the healthy device kept being polled (largest gap {worst:.2f} s)",
                          len(stamps) > 5 and worst < 1.0, f"{len(stamps)} points")

    def cloud_outage(self):
        self.figures["cloud_outages"] += 1
        victims = ["cloud"] + (["mosquitto"] if self.args.mosquitto and random.random() < 0.5 else [])
        started = time.time()
        for victim in victims:
            self.kill(victim)
        time.sleep(random.uniform(1.0, 3.0))
        self.checks.check(f"outage of {'+'.join(victims)}: the gateway serves",
                          http("GET", self.base + "/api/v1/status")[0] == 200)
        if "mosquitto" in victims:
            self.start_broker()
        self.start_cloud()
        self.check_good_flow(started, f"outage of {'+'.join(victims)}")

    def disk_full(self):
        self.figures["disk_full"] += 1
        filler = self.work / "data" / "filler"
        started = time.time()
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        # sled may still have room in a segment it holds: writes (each with a
        # durable audit entry) use it up sooner than readings alone.
        n = [0]

        def failing():
            n[0] += 1
            http("PUT", f"{self.base}/api/v1/devices/good/properties/setpoint", {"value": n[0] % 60000})
            return (http("GET", self.base + "/api/v1/status")[1] or {}).get("store", {}).get("failing")
        status = wait(failing, 30, step=0.02)
        body = http("GET", self.base + "/api/v1/status")[1] or {}
        self.checks.check("disk full: /api/v1/status says the store fails, and why",
                          bool(status) and bool(body.get("store", {}).get("last_error")), body)
        self.checks.check("disk full: the gateway serves reads",
                          http("GET", self.base + "/api/v1/devices/good")[0] == 200)
        time.sleep(1)
        filler.unlink()
        recovered = wait(lambda: (http("GET", self.base + "/api/v1/status")[1] or {}).get("store", {}).get("failing") is False, 20)
        self.checks.check("disk full: the store recovers once space returns", recovered)

        def kinds():
            status, events = http("GET", self.base + "/api/v1/events?limit=1000")
            return status, {e.get("kind") for e in events or [] if isinstance(e, dict)}
        # The journal retries its own failed commits with up to 5 s of backoff.
        both = wait(lambda: {"store_failing", "store_recovered"} <= kinds()[1], 15)
        self.checks.check("disk full: store_failing and store_recovered events", both, kinds())
        n = len(history(self.base, "good"))
        grew = wait(lambda: len(history(self.base, "good")) > n + 5, 10)
        self.checks.check("disk full: readings flow into history again", grew)
        del started

    # ---- the whole campaign ----------------------------------------------
    def run(self):
        self.fault_device = FaultDevice()
        self.setup()
        tmpfs = False
        if os.geteuid() == 0 and not self.args.no_disk:
            (self.work / "data").mkdir()
            tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                                    str(self.work / "data")]).returncode == 0
            self.mounted = tmpfs
        self.spawn("sim", [self.args.sim, "--config", str(self.work / "sim.toml")])
        self.start_broker()
        self.start_cloud()
        self.start_gateway()
        ok = wait(lambda: self.device_info("good").get("status") == "online"
                  and self.device_info("faulty").get("status") == "online", 10)
        self.checks.check("both devices are online", ok, [self.device_info("good"), self.device_info("faulty")])
        readings = Readings(self.base)
        try:
            for round_ in range(1, self.args.rounds + 1):
                phases = [(f, lambda f=f: self.device_fault(f)) for f in FAULTS]
                phases.append(("cloud", self.cloud_outage))
                if tmpfs:
                    phases.append(("disk", self.disk_full))
                phases = [p for name, p in phases if not self.args.only or name in self.args.only]
                random.shuffle(phases)
                print(f"--- round {round_}", flush=True)
                for phase in phases:
                    phase()
        finally:
            readings.halt()
        self.final_checks(readings)
        for name in ("gateway", "cloud", "sim", "mosquitto"):
            self.kill(name, signal.SIGTERM)

    def final_checks(self, readings):
        # The healthy device stops counting (its simulator goes), so that
        # the uplink can catch up with a history that no longer grows.
        self.kill("sim", signal.SIGTERM)
        time.sleep(0.5)
        stored = {p["value"] for p in history(self.base, "good")}
        lost = sorted(v for v in readings.seen if v not in stored)
        self.checks.check(f"every distinct reading the API showed ({len(readings.seen)}) is in the history",
                          not lost and readings.seen, lost[:5])
        self.figures["distinct_readings_shown"] = len(readings.seen)
        self.figures["lost_readings"] = len(lost)
        # The control plane ends up with the gateway's history, exactly
        # (the fault device keeps counting, so its batches keep flowing).
        local = [(p["ts"], p["value"]) for p in history(self.base, "good")]

        def remote_history():
            status, body = http("GET", f"{self.cloud_base}/api/v1/gateways/faults/devices/good"
                                       "/properties/count/history?limit=100000")
            return status, [(p["ts"], p["value"]) for p in (body or [])]
        wait(lambda: set(local) <= set(remote_history()[1]), 30)
        status, remote = remote_history()
        missing = sorted(set(local) - set(remote))
        self.checks.check(f"the control plane holds the gateway's history ({len(local)} points)",
                          status == 200 and not missing and len(remote) == len(set(remote))
                          and len(remote) == len(local),
                          f"HTTP {status}, {len(missing)} missing, {len(remote) - len(set(remote))} doubled, "
                          f"{len(remote)} vs {len(local)}")
        self.figures["synced_points"] = len(remote)
        self.figures["lost_in_sync"] = len(missing)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ferrite")
    parser.add_argument("sim")
    parser.add_argument("cloud")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--mosquitto")
    parser.add_argument("--no-disk", action="store_true", help="skip the full-disk phase")
    parser.add_argument("--only", nargs="*", help="only these phases: " + " ".join(FAULTS) + " cloud disk")
    args = parser.parse_args()
    random.seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="ferrite-faults-"))
    print(f"fault campaign: {args.rounds} round(s), seed {args.seed}, in {work}", flush=True)
    campaign = Campaign(args, work)
    try:
        campaign.run()
    finally:
        for name in list(campaign.procs):
            campaign.kill(name)
        if campaign.mounted and not os.environ.get("FERRITE_KEEP_TMPFS"):
            subprocess.run(["umount", "-l", str(work / "data")])
    figures = dict(campaign.figures, checks_passed=campaign.checks.passed, checks_failed=campaign.checks.failed)
    print("summary: " + json.dumps(figures), flush=True)
    return 1 if campaign.checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
