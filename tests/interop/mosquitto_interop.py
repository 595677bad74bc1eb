"""Interop: Debian's mosquitto_pub and mosquitto_sub against the gateway's
embedded broker (rumqttd), with authentication off and on, and over TLS; and
a control rule driven by mosquitto_pub whose publish and write mosquitto_sub
receives.

Usage: python3 mosquitto_interop.py path/to/ferrite

Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import asyncio
import subprocess
import sys
import time

from common import Checks, free_port, http, project, start_ferrite, stop_ferrite, wait_for

MODEL = """kind: DeviceModel
name: sensor
properties:
  temperature: { type: float, mqtt: { topic: "sensors/{device}/state", json: /temperature } }
  humidity:    { type: float, mqtt: { topic: "sensors/{device}/state", json: /env/humidity } }
  count:       { type: int, mqtt: { topic: "sensors/{device}/count" } }
  mode:        { type: string, mqtt: { topic: "sensors/{device}/mode" } }
  interval:    { type: int, access: readwrite, min: 1, max: 3600, mqtt: { topic: "sensors/{device}/interval", command: "sensors/{device}/interval/set" } }
"""
RULE = """kind: Rule
name: d1-hot
when: 'devices["d1"].temperature > 50'
clear_when: 'devices["d1"].temperature < 45'
then:
  - publish: { topic: alarms/d1, payload: '{{"t": {devices["d1"].temperature}}}' }
  - write: { device: d1, property: interval, value: "5" }
  - event: { severity: warning, message: 'd1 at {devices["d1"].temperature}' }
"""
DEVICE = """kind: Device
name: d1
model: sensor
mqtt: { status: { topic: "sensors/{device}/status" } }
"""


def pub(port, topic, message, login=None, tls=None, host="127.0.0.1"):
    args = ["mosquitto_pub", "-h", host, "-p", str(port), "-t", topic, "-m", message, "-q", "1"]
    if login:
        args += ["-u", login[0], "-P", login[1]]
    if tls:
        args += ["--cafile", str(tls)]
    return subprocess.run(args, capture_output=True, text=True, timeout=20)


def sub(port, topic, count, login=None):
    """A background mosquitto_sub that prints `count` messages (or gives up after 10 s)."""
    args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-C", str(count), "-W", "10", "-v"]
    if login:
        args += ["-u", login[0], "-P", login[1]]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def value(api, name):
    status, body = http("GET", f"{api}/api/v1/devices/d1/properties/{name}")
    return body.get("value") if status == 200 and body else None


def reading(api, name):
    status, body = http("GET", f"{api}/api/v1/devices/d1/properties/{name}")
    return body if status == 200 else {}


def device_status(api):
    status, body = http("GET", f"{api}/api/v1/devices/d1")
    return body.get("status") if status == 200 and body else None


def start(binary, checks, extra):
    work = project("ferrite-mosquitto-", MODEL)
    (work / "devices" / "d1.yaml").write_text(DEVICE)
    (work / "rules" / "d1-hot.yaml").write_text(RULE)
    mqtt_port, api_port = free_port(), free_port()
    with open(work / "ferrite.toml", "a") as f:
        f.write(f'[mqtt]\nlisten = "127.0.0.1:{mqtt_port}"\n{extra}\n')
    (work / "hmi.pass").write_text("s3cret\n")
    gateway = start_ferrite(binary, work, api_port)
    api = f"http://127.0.0.1:{api_port}"
    return gateway, api, mqtt_port, work


async def without_auth(binary, checks):
    gateway, api, port, work = start(binary, checks, "")
    try:
        up = await wait_for(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 20)
        checks.check("ferrite serves with the broker on", up, (work / "ferrite.log").read_text()[-2000:])

        r = pub(port, "sensors/d1/state", '{"temperature": 21.5, "env": {"humidity": 40.25}}')
        checks.check("mosquitto_pub connects without a login", r.returncode == 0, r.stderr)
        got = await wait_for(lambda: value(api, "temperature") == 21.5, 10)
        checks.check("a JSON publish shows in GET /api/v1/devices/d1 (pointer /temperature)", got, reading(api, "temperature"))
        checks.check("a nested pointer (/env/humidity) reads 40.25", value(api, "humidity") == 40.25, reading(api, "humidity"))
        checks.check("the device is online after publishing", device_status(api) == "online", device_status(api))

        pub(port, "sensors/d1/count", "42")
        pub(port, "sensors/d1/mode", "auto ")
        got = await wait_for(lambda: value(api, "count") == 42 and value(api, "mode") == "auto ", 10)
        checks.check("bare payloads: an int and text as is", got, (reading(api, "count"), reading(api, "mode")))

        # An HMI on the same broker sees the devices' traffic.
        hmi = sub(port, "sensors/#", 1)
        time.sleep(0.5)
        pub(port, "sensors/d1/count", "43")
        out, _ = hmi.communicate(timeout=15)
        checks.check("mosquitto_sub (an HMI) receives what devices publish", "sensors/d1/count 43" in out, out)

        # A REST write arrives as a publish on the command topic.
        listener = sub(port, "sensors/d1/interval/set", 1)
        time.sleep(0.5)
        status, body = http("PUT", f"{api}/api/v1/devices/d1/properties/interval", {"value": 30})
        checks.check("PUT answers 202 (no confirm in the model)", status == 202 and body == {"value": 30, "confirmed": False}, (status, body))
        out, _ = listener.communicate(timeout=15)
        checks.check("mosquitto_sub receives the write on the command topic", out.strip() == "sensors/d1/interval/set 30", out)
        status, body = http("PUT", f"{api}/api/v1/devices/d1/properties/interval", {"value": 0})
        checks.check("a write outside the limits is refused before publishing", status == 400, (status, body))

        # A rule: mosquitto_pub makes d1 hot; the rule publishes an alarm and
        # writes the interval (a command publish), both seen by mosquitto_sub.
        listener = sub(port, "alarms/#", 1)
        commands = sub(port, "sensors/d1/interval/set", 1)
        time.sleep(0.5)
        pub(port, "sensors/d1/state", '{"temperature": 55.5, "env": {"humidity": 40.25}}')
        out, _ = listener.communicate(timeout=15)
        checks.check("the rule's publish reaches mosquitto_sub", out.strip() == 'alarms/d1 {"t": 55.5}', out)
        out, _ = commands.communicate(timeout=15)
        checks.check("the rule's write arrives on the command topic", out.strip() == "sensors/d1/interval/set 5", out)
        # The rule task records its event after acting: wait for it rather
        # than read once (the publish can arrive before the record).
        fired = lambda: http("GET", f"{api}/api/v1/events?rule=d1-hot")
        await wait_for(lambda: bool(fired()[1]), 10)
        status, events = fired()
        checks.check("GET /api/v1/events shows the firing", status == 200 and events and events[0]["message"] == "d1 at 55.5", events)
        status, audit = http("GET", f"{api}/api/v1/audit?who=rule%20d1-hot")
        checks.check("the audit log has the rule's write", status == 200 and audit and audit[0]["new"] == 5 and audit[0]["result"] == "sent", audit)

        # Malformed payloads: counted, quality bad, no crash.
        r = pub(port, "sensors/d1/count", "forty-two")
        got = await wait_for(lambda: reading(api, "count").get("quality") == "bad", 10)
        checks.check("a malformed payload marks the property bad", got, reading(api, "count"))
        status, _ = http("GET", f"{api}/api/v1/devices")
        checks.check("the gateway is still healthy", status == 200, status)
        with urllib_open(f"{api}/metrics") as text:
            counted = any(l.startswith("ferrite_malformed_payloads_total ") and int(l.split()[1]) >= 1 for l in text.splitlines())
        checks.check("ferrite_malformed_payloads_total counts it", counted, "")

        # LWT: a client with a will on the status topic dies without DISCONNECT.
        dying = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "unused", "-k", "5",
             "--will-topic", "sensors/d1/status", "--will-payload", "offline"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        pub(port, "sensors/d1/status", "online")
        await wait_for(lambda: device_status(api) == "online", 5)
        dying.kill()
        dying.wait()
        got = await wait_for(lambda: device_status(api) == "offline", 10)
        checks.check("the will on the status topic takes the device offline", got, device_status(api))
        checks.check("its values go stale", reading(api, "temperature").get("quality") == "stale", reading(api, "temperature"))
        status, body = http("PUT", f"{api}/api/v1/devices/d1/properties/interval", {"value": 60})
        checks.check("a write to an offline device is refused with 503", status == 503, (status, body))
    finally:
        stop_ferrite(gateway, checks)


async def with_auth(binary, checks):
    extra = '[[mqtt.users]]\nusername = "hmi"\npassword_file = "hmi.pass"\n'
    gateway, api, port, work = start(binary, checks, extra)
    try:
        up = await wait_for(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 20)
        checks.check("ferrite serves with broker auth on", up, (work / "ferrite.log").read_text()[-2000:])
        r = pub(port, "sensors/d1/count", "1", login=("hmi", "wrong"))
        checks.check("mosquitto_pub with a wrong password fails", r.returncode != 0, (r.returncode, r.stderr))
        r = pub(port, "sensors/d1/count", "2")
        checks.check("mosquitto_pub without a login fails", r.returncode != 0, (r.returncode, r.stderr))
        time.sleep(0.5)
        checks.check("nothing from a refused client reached the device", value(api, "count") is None, reading(api, "count"))
        r = pub(port, "sensors/d1/count", "3", login=("hmi", "s3cret"))
        checks.check("mosquitto_pub with the right password succeeds", r.returncode == 0, r.stderr)
        got = await wait_for(lambda: value(api, "count") == 3, 10)
        checks.check("its publish shows in the API", got, reading(api, "count"))
    finally:
        stop_ferrite(gateway, checks)


async def with_tls(binary, checks):
    """The TLS listener, with a self-signed certificate made by openssl."""
    tls_port = free_port()
    extra = f'[mqtt.tls]\nlisten = "127.0.0.1:{tls_port}"\ncertificate = "broker.pem"\nprivate_key = "broker.key"\n'
    work = project("ferrite-mosquitto-tls-", MODEL)
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(work / "broker.key"), "-out", str(work / "broker.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        capture_output=True, text=True)
    checks.check("openssl makes a broker certificate", made.returncode == 0, made.stderr)
    (work / "devices" / "d1.yaml").write_text(DEVICE)
    (work / "rules" / "d1-hot.yaml").write_text(RULE)
    mqtt_port, api_port = free_port(), free_port()
    with open(work / "ferrite.toml", "a") as f:
        f.write(f'[mqtt]\nlisten = "127.0.0.1:{mqtt_port}"\n{extra}\n')
    gateway = start_ferrite(binary, work, api_port)
    api = f"http://127.0.0.1:{api_port}"
    try:
        up = await wait_for(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 20)
        checks.check("ferrite serves with a TLS listener", up, (work / "ferrite.log").read_text()[-2000:])
        # By host name: rustls refuses an IP address sent as SNI, which
        # mosquitto does for -h 127.0.0.1.
        r = pub(tls_port, "sensors/d1/count", "11", tls=work / "broker.pem", host="localhost")
        checks.check("mosquitto_pub over TLS, trusting the broker's certificate, succeeds", r.returncode == 0, r.stderr)
        got = await wait_for(lambda: value(api, "count") == 11, 10)
        checks.check("its publish shows in the API", got, reading(api, "count"))
        r = pub(tls_port, "sensors/d1/count", "12", host="localhost")
        checks.check("plain MQTT on the TLS port fails", r.returncode != 0, (r.returncode, r.stderr))
        r = pub(mqtt_port, "sensors/d1/count", "13")
        checks.check("the plain listener still serves beside it", r.returncode == 0, r.stderr)
        got = await wait_for(lambda: value(api, "count") == 13, 10)
        checks.check("and its publish shows too", got, reading(api, "count"))
    finally:
        stop_ferrite(gateway, checks)


def urllib_open(url):
    import contextlib
    import urllib.request

    @contextlib.contextmanager
    def opened():
        with urllib.request.urlopen(url, timeout=10) as res:
            yield res.read().decode()

    return opened()


async def main(binary):
    checks = Checks()
    await without_auth(binary, checks)
    await with_auth(binary, checks)
    await with_tls(binary, checks)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
