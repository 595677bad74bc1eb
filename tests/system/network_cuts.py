"""Edge to cloud across real network cuts: the compose example
(examples/compose: a control plane, two gateways, each with its simulated
PLC on a plant network of its own) brought up from the images, then cut,
paused, restarted and flapped while the PLCs keep changing.

Scenarios, in order, each with its checks:
  1. up: the three servers' health checks turn healthy, both gateways sync;
  2. cut: site-a's gateway is disconnected from the cloud network
     (`docker network disconnect`) for CUT seconds (default 60). During the
     cut it keeps reading its PLC, its rule (hopper-refill) keeps switching
     the feeder on the PLC (rule firings, audit entries, the feeder seen on
     and off), its outbox grows, the control plane gets nothing from it
     and all along gets site-b's changes. Reconnected, it catches up;
  3. pause: the control plane's container is frozen (`docker pause`) for
     PAUSE seconds with batches in flight, then thawed; both catch up;
  4. restart: site-a's container is stopped (SIGTERM: exit 0) and started
     on its volume; its history is whole and it catches up;
  5. flap: site-a's link is cut and restored every 2-4 s for FLAP seconds
     (default 30); it catches up;
  6. the end: the PLCs stop, the outboxes drain, and for each site the
     control plane's history of every property equals the gateway's: every
     change once, in order (nothing missing, nothing doubled).
After each of 2-5, the control plane's history of site-a's pack counter is
checked to be an exact prefix of the gateway's, reaching past the scenario.

The images come from packaging/image.sh (`ferrite:TAG`, `ferrite-cloud:TAG`,
`ferrite-sim:TAG`). The compose project runs under its own name on free
loopback ports and is removed (with its volumes) at the end, pass or fail.

Usage: python3 tests/system/network_cuts.py [--tag latest] [--cut 60] [--pause 15] [--flap 30]
Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import argparse
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

from dockerctl import ROOT, Checks, compose_command, docker, free_port, http, inspect, wait_for, wait_healthy

PROPERTIES = ("count", "level", "feeder")
SITES = ("site-a", "site-b")


def parse_ts(ts):
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


class Fleet:
    """The compose project, and the calls the checks make on it."""

    def __init__(self, work, tag):
        self.dir = work / "compose"
        shutil.copytree(ROOT / "examples" / "compose", self.dir, ignore=shutil.ignore_patterns("secrets"))
        self.project = f"ferritecuts{os.getpid()}"
        self.ports = {"cloud": free_port(), "site-a": free_port(), "site-b": free_port()}
        self.env = dict(os.environ, FERRITE_TAG=tag, FERRITE_CLOUD_PORT=str(self.ports["cloud"]),
                        FERRITE_SITE_A_PORT=str(self.ports["site-a"]),
                        FERRITE_SITE_B_PORT=str(self.ports["site-b"]))
        subprocess.run([str(self.dir / "secrets.sh")], env=self.env, check=True, stdout=subprocess.DEVNULL)
        secrets = self.dir / "secrets"
        self.tokens = {"cloud": (secrets / "cloud" / "ops.token").read_text().strip()}
        for site in SITES:
            self.tokens[site] = (secrets / site / "api.token").read_text().strip()
        self.compose = [*compose_command(), "-p", self.project, "-f", str(self.dir / "docker-compose.yml")]
        self.network = f"{self.project}_cloud"

    def run(self, *args, timeout=180):
        done = subprocess.run([*self.compose, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)}: {done.stderr.strip()[-800:]}")
        return done.stdout.strip()

    def container(self, service):
        return self.run("ps", "-q", service).splitlines()[0]

    def api(self, who, path):
        return http("GET", f"http://127.0.0.1:{self.ports[who]}{path}", token=self.tokens[who])

    def sync(self, site):
        status, body = self.api(site, "/api/v1/sync")
        return body if status == 200 else None

    def reading(self, site, prop):
        status, body = self.api(site, f"/api/v1/devices/line-1/properties/{prop}")
        return body if status == 200 else None

    def local_history(self, site, prop):
        """The gateway's whole history of line-1.prop, oldest first."""
        out, since = [], None
        while True:
            query = {"limit": "10000", **({"since": since} if since else {})}
            status, page = self.api(site, f"/api/v1/devices/line-1/properties/{prop}/history?"
                                    + urllib.parse.urlencode(query))
            if status != 200:
                raise RuntimeError(f"{site} history of {prop}: HTTP {status} {page}")
            fresh = [(p["ts"], p["value"]) for p in page if not out or p["ts"] > out[-1][0]]
            out.extend(fresh)
            if len(page) < 10000 or not fresh:
                return out
            since = page[-1]["ts"]

    def cloud_history(self, site, prop):
        """The control plane's whole history of site's line-1.prop, in its order."""
        out, after = [], 0
        while True:
            status, page = self.api("cloud", f"/api/v1/gateways/{site}/devices/line-1/properties/{prop}/history?"
                                    + urllib.parse.urlencode({"after": str(after), "limit": "10000"}))
            if status != 200:
                return out
            out.extend((p["ts"], p["value"]) for p in page)
            if len(page) < 10000:
                return out
            after = page[-1]["seq"]

    def cloud_latest(self, site):
        """Time of the newest count the control plane holds for site (0: none)."""
        history = self.cloud_history(site, "count")
        return parse_ts(history[-1][0]) if history else 0.0

    def firings(self, site):
        status, rules = self.api(site, "/api/v1/rules")
        return rules[0]["firings"] if status == 200 and rules else None

    def rule_writes_since(self, site, since):
        status, entries = self.api(site, "/api/v1/audit?limit=100")
        if status != 200:
            return []
        return [e for e in entries if e.get("who") == "rule hopper-refill" and e.get("result") == "ok"
                and parse_ts(e["ts"]) >= since]

    def cut(self, site):
        docker("network", "disconnect", self.network, self.container(site))

    def restore(self, site):
        docker("network", "connect", self.network, self.container(site))


class Liveness:
    """Samples how old each gateway's newest pack count is (its read time
    against now) every 0.5 s, in a thread, so each scenario can check the
    gateway kept reading and storing its PLC in real time: a store writer
    held up by the cloud would show here."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.worst = {site: 0.0 for site in SITES}
        self.stop = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.5):
            if self.paused.is_set():
                continue
            for site in SITES:
                reading = self.fleet.reading(site, "count")
                if reading and reading.get("ts"):
                    lag = time.time() - parse_ts(reading["ts"])
                    self.worst[site] = max(self.worst[site], lag)

    def check(self, checks, label, sites=SITES):
        for site in sites:
            checks.check(f"{label}: {site} kept storing its PLC's readings in real time",
                         self.worst[site] <= 3.0, f"newest reading at most {self.worst[site]:.1f} s old",
                         show=True)
        self.worst = {site: 0.0 for site in SITES}


def caught_up(checks, fleet, site, since, label, seconds=90):
    """Waits until the control plane holds site-a's counter past `since`
    (host time), then checks its history is an exact prefix of the gateway's."""
    reached = wait_for(lambda: fleet.cloud_latest(site) >= since, seconds, step=0.5)
    remote = fleet.cloud_history(site, "count")
    local = fleet.local_history(site, "count")
    prefix = local[:len(remote)] == remote
    checks.check(f"{label}: {site} caught up, the control plane's counter an exact prefix of the gateway's",
                 reached and prefix and len(remote) == len(set(remote)),
                 f"{len(remote)} of {len(local)} points at the control plane" if reached and prefix
                 else first_difference(local, remote), show=True)


def first_difference(local, remote):
    for i, (a, b) in enumerate(zip(local, remote)):
        if a != b:
            return (f"first difference at {i}: gateway {local[max(0, i - 2):i + 3]}, "
                    f"control plane {remote[max(0, i - 2):i + 3]}")
    return f"gateway {len(local)} points, control plane {len(remote)} (not caught up in time?)"


def scenario_up(checks, fleet):
    fleet.run("up", "-d")
    for service in ("cloud", "site-a", "site-b"):
        took = wait_healthy(fleet.container(service), 60)
        checks.check(f"up: {service} healthy", took is not None, f"{took:.1f} s" if took else "", show=True)
    for site in SITES:
        synced = wait_for(lambda s=site: (fleet.sync(s) or {}).get("connected")
                          and fleet.cloud_latest(s) > 0, 60, step=0.5)
        checks.check(f"up: {site} reads its PLC and syncs to the control plane", synced)


def scenario_cut(checks, fleet, live, seconds):
    start = time.time()
    firings_before = fleet.firings("site-a")
    count_before = (fleet.reading("site-a", "count") or {}).get("value", -1)
    fleet.cut("site-a")
    feeder_seen, disconnected, backlog = set(), False, 0
    site_b_before = fleet.cloud_latest("site-b")
    while time.time() - start < seconds:
        feeder = fleet.reading("site-a", "feeder")
        if feeder and feeder.get("quality") == "good":
            feeder_seen.add(feeder["value"])
        sync = fleet.sync("site-a") or {}
        disconnected = disconnected or sync.get("connected") is False
        backlog = max(backlog, sync.get("backlog") or 0)
        time.sleep(0.5)
    cloud_a_latest = fleet.cloud_latest("site-a")
    count_after = (fleet.reading("site-a", "count") or {}).get("value", -1)
    firings = (fleet.firings("site-a") or 0) - (firings_before or 0)
    writes = fleet.rule_writes_since("site-a", start)
    checks.check(f"cut {seconds} s: site-a's uplink sees the cut and its outbox grows",
                 disconnected and backlog > 0, f"backlog up to {backlog}", show=True)
    checks.check("cut: the control plane got nothing of site-a after the cut",
                 cloud_a_latest <= start + 1.0, f"newest at the control plane {cloud_a_latest - start:+.1f} s")
    checks.check("cut: site-a keeps reading its PLC", count_after > count_before,
                 f"count {count_before} -> {count_after}", show=True)
    # The hopper's level is a sine of period 20 s: the rule fires (level
    # under 30) once a period and clears (over 70) half a period later, a
    # feeder write each time.
    fired, written = max(1, seconds // 20 - 1), max(1, seconds // 10 - 1)
    feeder_both = feeder_seen == {0, 1} if seconds >= 30 else bool(feeder_seen)
    checks.check("cut: the rule keeps acting on the PLC (firings, audited writes, the feeder on and off)",
                 firings >= fired and len(writes) >= written and feeder_both,
                 f"{firings} firings, {len(writes)} writes, feeder seen {sorted(feeder_seen)}", show=True)
    checks.check("cut: site-b kept syncing", fleet.cloud_latest("site-b") > site_b_before + seconds / 2)
    reconnected = time.time()
    fleet.restore("site-a")
    caught_up(checks, fleet, "site-a", reconnected, "cut")
    live.check(checks, "cut")


def scenario_pause(checks, fleet, live, seconds):
    cloud = fleet.container("cloud")
    docker("pause", cloud)
    time.sleep(seconds)
    backlogs = {site: (fleet.sync(site) or {}).get("backlog", 0) for site in SITES}
    docker("unpause", cloud)
    checks.check(f"pause {seconds} s: the gateways keep their changes while the control plane is frozen",
                 all(b > 0 for b in backlogs.values()), backlogs, show=True)
    thawed = time.time()
    for site in SITES:
        caught_up(checks, fleet, site, thawed, "pause")
    live.check(checks, "pause")


def scenario_restart(checks, fleet, live):
    before = len(fleet.local_history("site-a", "count"))
    gateway = fleet.container("site-a")
    live.paused.set()
    start = time.monotonic()
    docker("stop", "-t", "20", gateway, timeout=60)
    stopped = time.monotonic() - start
    code = inspect(gateway, "{{.State.ExitCode}}")
    checks.check("restart: site-a stops cleanly on SIGTERM", code == "0", f"exit {code} after {stopped:.1f} s",
                 show=True)
    docker("start", gateway)
    took = wait_healthy(gateway, 60)
    checks.check("restart: site-a is healthy again on its volume", took is not None,
                 f"{took:.1f} s" if took else "", show=True)
    live.paused.clear()
    after = len(fleet.local_history("site-a", "count"))
    checks.check("restart: its history is whole", after >= before, f"{before} points before, {after} after")
    caught_up(checks, fleet, "site-a", time.time(), "restart")
    live.check(checks, "restart", sites=["site-b"])


def scenario_flap(checks, fleet, live, seconds):
    rng = random.Random(7)
    start, cuts = time.time(), 0
    while time.time() - start < seconds:
        fleet.cut("site-a")
        cuts += 1
        time.sleep(rng.uniform(2, 4))
        fleet.restore("site-a")
        time.sleep(rng.uniform(2, 4))
    print(f"  flap: {cuts} cuts in {time.time() - start:.0f} s")
    caught_up(checks, fleet, "site-a", time.time(), "flap")
    live.check(checks, "flap")


def scenario_end(checks, fleet):
    for sim in ("sim-a", "sim-b"):
        docker("stop", "-t", "10", fleet.container(sim), timeout=60)
    for site in SITES:
        drained = wait_for(lambda s=site: (fleet.sync(s) or {}).get("backlog") == 0
                           and (fleet.sync(s) or {}).get("connected"), 60, step=0.5)
        checks.check(f"end: {site}'s outbox drains", drained, fleet.sync(site))
        # The last batch's points may still be on their way into the
        # control plane's store after the gateway has its acknowledgement.
        time.sleep(1.0)
        for prop in PROPERTIES:
            local = fleet.local_history(site, prop)
            remote = fleet.cloud_history(site, prop)
            missing = len(set(local) - set(remote))
            doubled = len(remote) - len(set(remote))
            checks.check(f"end: {site}.{prop}: every change at the control plane once, in order",
                         local == remote and local,
                         f"{len(remote)} points; missing {missing}, doubled {doubled}"
                         + ("" if local == remote else "; " + first_difference(local, remote)), show=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--cut", type=int, default=60, help="seconds site-a is cut off")
    parser.add_argument("--pause", type=int, default=15, help="seconds the control plane is frozen")
    parser.add_argument("--flap", type=int, default=30, help="seconds the link flaps")
    parser.add_argument("--keep", action="store_true", help="leave the project running (to look into a failure)")
    args = parser.parse_args()
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="ferrite-cuts-"))
    work.chmod(0o755)
    fleet = Fleet(work, args.tag)
    began = time.monotonic()
    try:
        scenario_up(checks, fleet)
        if not checks.failed:
            live = Liveness(fleet)
            scenario_cut(checks, fleet, live, args.cut)
            scenario_pause(checks, fleet, live, args.pause)
            scenario_restart(checks, fleet, live)
            scenario_flap(checks, fleet, live, args.flap)
            live.stop.set()
            scenario_end(checks, fleet)
    finally:
        if checks.failed and not args.keep:
            for service in ("cloud", "site-a", "site-b", "sim-a"):
                print(f"--- {service}")
                subprocess.run([*fleet.compose, "logs", "--no-color", "--tail", "25", service], env=fleet.env)
        if args.keep:
            print(f"  left running: compose project {fleet.project} in {fleet.dir}, ports {fleet.ports}")
        else:
            fleet.run("down", "-v", "-t", "20")
            shutil.rmtree(work, ignore_errors=True)
        print(f"  the suite took {time.monotonic() - began:.0f} s")
    return checks.finish()


if __name__ == "__main__":
    raise SystemExit(main())
