"""Interop: per-gateway identities on Debian's Mosquitto, with the password
and ACL files that `ferrite-cloud gateway acl` writes.

Two gateways are enrolled with `ferrite-cloud gateway add`; Mosquitto runs
with `allow_anonymous false` and the generated files; the control plane
logs in as its own user. Then:
- no login, a wrong secret, another gateway's secret: refused at CONNECT
  (mosquitto_sub, Mosquitto's own client);
- a real `ferrite run` as gw-a, with the `[cloud]` lines the enrolment
  printed, syncs readings to ferrite-cloud (the ACL lets the whole protocol
  through: Hello and batches up, Resume and Ack down);
- gw-b forges an Ack, a Resume and a ConfigBundle on gw-a's topics, and
  subscribes to every gateway's downward topics: Mosquitto delivers none of
  it, and gw-a's outbox, refusal count and configuration stay as they were;
- gw-b may not publish on the control plane's status topic.

Usage: python3 broker_acl_interop.py path/to/ferrite [path/to/ferrite-cloud]
Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Checks, counter_gateway, ferrite_and_cloud, free_port, http, start_ferrite, stop_ferrite, wait_for



def run(*args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30, **kw)


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def refused(port, user=None, password=None):
    """True if Mosquitto refuses this login at CONNECT."""
    args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-t", "x", "-C", "1", "-W", "2", "-V", "mqttv311"]
    if user:
        args += ["-u", user, "-P", password]
    done = run(*args)
    return done.returncode != 0 and ("not authori" in done.stderr.lower() or "refused" in done.stderr.lower()), done.stderr


def sub(port, user, password, topic, seconds, client_id):
    """mosquitto_sub in the background for `seconds`; its output later."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-i", client_id,
         "-t", topic, "-v", "-W", str(seconds), "-q", "1", "-V", "mqttv311"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")


def pub(port, user, password, topic, message, client_id, retain=False):
    """mosquitto_pub, QoS 1."""
    args = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-u", user, "-P", password, "-i", client_id,
            "-t", topic, "-m", message, "-q", "1", "-V", "mqttv311"]
    if retain:
        args.append("-r")
    return run(*args)


async def main(binary, cloud_binary):
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="ferrite-acl-"))
    port, rest = free_port(), free_port()
    (work / "cloud.pass").write_text("cloud-s3cret\n")
    config = work / "cloud.toml"
    config.write_text(f'broker = "mqtt://127.0.0.1:{port}"\nusername = "ferrite-cloud"\npassword_file = "cloud.pass"\n'
                      f'listen = "127.0.0.1:{rest}"\ndata_dir = "cloud-data"\n')
    printed = {}
    for gw in ("gw-a", "gw-b"):
        done = run(cloud_binary, "gateway", "add", gw, "--config", config)
        printed[gw] = done.stdout
        checks.check(f"ferrite-cloud gateway add {gw}", done.returncode == 0 and f'username = "{gw}"' in done.stdout,
                     done.stdout + done.stderr)
    again = run(cloud_binary, "gateway", "add", "gw-a", "--config", config)
    checks.check("enrolling gw-a twice is refused", again.returncode != 0 and "already" in again.stderr, again.stderr)
    secret = {gw: (work / "gateways" / f"{gw}.secret").read_text().strip() for gw in ("gw-a", "gw-b")}
    mode = (work / "gateways" / "gw-a.secret").stat().st_mode & 0o777
    checks.check("the secret file is mode 0600", mode == 0o600, oct(mode))
    acl = run(cloud_binary, "gateway", "acl", "--config", config, "--out", work / "acl")
    checks.check("ferrite-cloud gateway acl writes the two files", acl.returncode == 0, acl.stdout + acl.stderr)
    (work / "mosquitto.conf").write_text(f"""per_listener_settings false
persistence false
log_dest stderr
log_type error
log_type warning
listener {port} 127.0.0.1
allow_anonymous false
password_file {work / 'acl' / 'mosquitto.passwd'}
acl_file {work / 'acl' / 'mosquitto.acl'}
""")
    # Started as root, mosquitto drops to its own user: let it read these.
    for path in [work, work / "acl", *(work / "acl").iterdir(), work / "mosquitto.conf"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    broker = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")],
                              stderr=open(work / "mosquitto.log", "w"))
    cloud_proc = subprocess.Popen([cloud_binary, "run", "--config", str(config)],
                                  stderr=open(work / "cloud.log", "w"), stdout=subprocess.DEVNULL)
    cloud = f"http://127.0.0.1:{rest}"
    gateway = None
    try:
        up = await wait_for(lambda: http("GET", f"{cloud}/api/v1/stats")[0] == 200, 20)
        checks.check("ferrite-cloud runs on Mosquitto with its own login", up,
                      (work / "cloud.log").read_text()[-2000:])
        p = str(port)
        for name, user, password in [("no login", None, None), ("a wrong secret", "gw-a", "guess"),
                                     ("gw-b's secret for gw-a", "gw-a", secret["gw-b"])]:
            no, detail = refused(p, user, password)
            checks.check(f"Mosquitto refuses {name}", no, detail)

        # gw-a: a real gateway with the [cloud] lines the enrolment printed.
        site, mqtt_port = counter_gateway("gw-a", printed["gw-a"].split("[cloud]\n", 1)[1])
        (site / "cloud.secret").write_text(secret["gw-a"] + "\n")
        (site / "cloud.secret").chmod(0o600)
        api_port = free_port()
        gateway = start_ferrite(binary, site, api_port)
        api = f"http://127.0.0.1:{api_port}"
        connected = await wait_for(lambda: (http("GET", f"{api}/api/v1/sync")[1] or {}).get("connected"), 20)
        checks.check("gw-a's uplink connects through the ACL", connected,
                     (site / "ferrite.log").read_text()[-2000:])
        for value in (1, 2, 3):
            run("mosquitto_pub", "-h", "127.0.0.1", "-p", mqtt_port, "-t", "plant/c1/count", "-m", value, "-q", "1")
            await asyncio.sleep(0.1)

        def history():
            status, body = http("GET", f"{cloud}/api/v1/gateways/gw-a/devices/c1/properties/count/history")
            return [e["value"] for e in body] if status == 200 else []
        got = await wait_for(lambda: history() == [1, 2, 3], 15)
        checks.check("gw-a's readings reach ferrite-cloud (Hello, batches up; Resume, Ack down)", got,
                     (history(), (site / "ferrite.log").read_text()[-1500:]))
        acked = await wait_for(lambda: (http("GET", f"{api}/api/v1/sync")[1] or {}).get("backlog") == 0, 10)
        before = http("GET", f"{api}/api/v1/sync")[1]
        checks.check("gw-a's outbox is empty once acknowledged", acked, before)

        # gw-b forges what only the control plane may send gw-a, and tries
        # to listen in on every gateway.
        spy = sub(port, "gw-b", secret["gw-b"], "ferrite/v1/gw/+/down/#", 4, "spy-b")
        watcher = sub(port, "gw-a", secret["gw-a"], "ferrite/v1/gw/gw-a/down/#", 4, "watch-a")
        await asyncio.sleep(0.5)
        # A reading while the spy listens: its Ack goes down to gw-a.
        run("mosquitto_pub", "-h", "127.0.0.1", "-p", mqtt_port, "-t", "plant/c1/count", "-m", "4", "-q", "1")
        # Real protobuf messages, as the control plane would send them: an Ack
        # far past anything sent, a Resume past the outbox, an empty bundle
        # with a high version (it would remove every device).
        forged = {"ack": b"\x08" + varint(1 << 40), "resume": b"\x08" + varint(1000) + b"\x10\x01",
                  "config": b"\x08" + varint(1_000_000)}
        for kind, payload in forged.items():
            (work / f"forged-{kind}").write_bytes(payload)
            done = run("mosquitto_pub", "-h", "127.0.0.1", "-p", p, "-u", "gw-b", "-P", secret["gw-b"],
                       "-i", "forger-b", "-t", f"ferrite/v1/gw/gw-a/down/{kind}", "-f", work / f"forged-{kind}",
                       "-q", "1", "-V", "mqttv311")
            checks.check(f"gw-b's forged {kind} is taken by Mosquitto's socket (MQTT 3.1.1 cannot refuse a publish)",
                         done.returncode == 0, done.stderr)
        status_forged = pub(p, "gw-b", secret["gw-b"], "ferrite/v1/cloud/status", "offline", "forger-b2", retain=True)
        spied, _ = spy.communicate(timeout=15)
        watched, _ = watcher.communicate(timeout=15)
        checks.check("gw-b's subscription to every gateway's down/ receives nothing", spied.strip() == "", spied)
        got_forgery = [line for line in watched.splitlines() if line.split(" ")[0].rsplit("/", 1)[-1] in ("resume", "config")]
        checks.check("gw-a's topics never carry gw-b's forgeries", not got_forgery, watched)
        got_ack = any(line.startswith("ferrite/v1/gw/gw-a/down/ack") for line in watched.splitlines())
        checks.check("gw-a's topics carry the control plane's Ack (the watcher works)", got_ack, watched)
        await wait_for(lambda: history() == [1, 2, 3, 4], 10)
        after = http("GET", f"{api}/api/v1/sync")[1]
        checks.check("gw-a refused nothing (nothing forged arrived) and its config is unchanged",
                     after["refused"] == 0 and after["config_bundle"] == before["config_bundle"], after)
        checks.check("gw-a's readings all reached the control plane, once each, in order", history() == [1, 2, 3, 4],
                     history())
        retained = run("mosquitto_sub", "-h", "127.0.0.1", "-p", p, "-u", "gw-a", "-P", secret["gw-a"],
                       "-t", "ferrite/v1/cloud/status", "-C", "1", "-W", "3", "-V", "mqttv311")
        checks.check("the cloud's status is still the control plane's", status_forged.returncode == 0 and
                     retained.stdout.strip() == "online", (retained.stdout, retained.stderr))
    finally:
        if gateway is not None:
            stop_ferrite(gateway, checks)
        cloud_proc.kill()
        broker.kill()
    return checks.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*ferrite_and_cloud(sys.argv))))
