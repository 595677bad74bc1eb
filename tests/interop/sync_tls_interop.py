"""Interop: the gateway's uplink to ferrite-cloud through Debian's Mosquitto,
over TLS (rustls on the gateway's side), logging in with a username and
password, or with a client certificate; and a wrong password refused.

Mosquitto gets three listeners: plain (the control plane's), TLS with a
password file, and TLS requiring a client certificate. openssl makes a CA,
the broker's certificate and a client certificate. Readings come from an MQTT
device: mosquitto_pub publishes to each gateway's embedded broker.

Usage: python3 sync_tls_interop.py path/to/ferrite [path/to/ferrite-cloud]

Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Checks, counter_gateway, ferrite_and_cloud, free_port, http, start_ferrite, stop_ferrite, wait_for



def openssl(*args, cwd):
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)


def make_pki(work, checks):
    """A CA; the broker's certificate for `localhost`; a client certificate."""
    steps = [
        ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
         "-out", "ca.pem", "-subj", "/CN=ferrite interop CA"),
        ("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=localhost"),
        ("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-out", "server.pem", "-extfile", "server.ext"),
        ("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
         "-subj", "/CN=gw-cert"),
        ("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-out", "client.pem", "-extfile", "client.ext"),
    ]
    (work / "server.ext").write_text("subjectAltName=DNS:localhost\n")
    # An extension makes it X.509 v3: webpki refuses v1 certificates.
    (work / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for step in steps:
        made = openssl(*step, cwd=work)
        if made.returncode != 0:
            checks.check("openssl makes the certificates", False, made.stderr)
            return False
    checks.check("openssl makes a CA, a broker and a client certificate", True)
    return True


def start_mosquitto(work, plain, tls, cert):
    made = subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(work / "passwd"), "gw-pass", "s3cret"],
        capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"mosquitto_passwd: {made.stderr}")
    (work / "mosquitto.conf").write_text(f"""per_listener_settings true
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice

listener {plain} 127.0.0.1
allow_anonymous true

listener {tls} 127.0.0.1
cafile {work / 'ca.pem'}
certfile {work / 'server.pem'}
keyfile {work / 'server.key'}
allow_anonymous false
password_file {work / 'passwd'}

listener {cert} 127.0.0.1
cafile {work / 'ca.pem'}
certfile {work / 'server.pem'}
keyfile {work / 'server.key'}
require_certificate true
use_identity_as_username true
allow_anonymous false
""")
    # Started as root, mosquitto drops to its own user: let it read these.
    work.chmod(0o755)
    for f in work.iterdir():
        f.chmod(0o644)
    return subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")],
                            stderr=open(work / "mosquitto.log", "w"))


def gateway_project(gw_id, pki, cloud_section):
    return counter_gateway(gw_id, cloud_section.format(pki=pki))


def publish(port, value):
    return subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "plant/c1/count",
                           "-m", str(value), "-q", "1"], capture_output=True, text=True, timeout=20)


def cloud_values(cloud, gw_id):
    status, body = http("GET", f"{cloud}/api/v1/gateways/{gw_id}/devices/c1/properties/count/history")
    return [e["value"] for e in body] if status == 200 else []


async def one_gateway(binary, checks, cloud, gw_id, pki, section, expect_sync):
    work, mqtt_port = gateway_project(gw_id, pki, section)
    api_port = free_port()
    gateway = start_ferrite(binary, work, api_port)
    api = f"http://127.0.0.1:{api_port}"
    try:
        up = await wait_for(lambda: http("GET", f"{api}/api/v1/sync")[0] == 200, 20)
        checks.check(f"{gw_id}: ferrite starts", up, (work / "ferrite.log").read_text()[-2000:])
        if expect_sync:
            connected = await wait_for(lambda: http("GET", f"{api}/api/v1/sync")[1]["connected"], 15)
            checks.check(f"{gw_id}: the uplink connects", connected,
                         http("GET", f"{api}/api/v1/sync")[1])
            for value in (1, 2, 3):
                publish(mqtt_port, value)
                await asyncio.sleep(0.1)
            got = await wait_for(lambda: cloud_values(cloud, gw_id) == [1, 2, 3], 15)
            checks.check(f"{gw_id}: readings reach ferrite-cloud in order", got,
                         (cloud_values(cloud, gw_id), (work / "ferrite.log").read_text()[-2000:]))
        else:
            await asyncio.sleep(3)
            sync = http("GET", f"{api}/api/v1/sync")[1]
            checks.check(f"{gw_id}: refused by the broker, the uplink stays down and says why",
                         sync["connected"] is False and sync["last_error"], sync)
            publish(mqtt_port, 5)
            await asyncio.sleep(1)
            backlog = http("GET", f"{api}/api/v1/sync")[1]["backlog"]
            checks.check(f"{gw_id}: its readings wait in the outbox", backlog and backlog >= 1, backlog)
            status, _ = http("GET", f"{cloud}/api/v1/gateways/{gw_id}/devices/c1")
            checks.check(f"{gw_id}: and the control plane never heard of it", status == 404, status)
    finally:
        stop_ferrite(gateway, checks)


async def main(binary, cloud_binary):
    checks = Checks()
    pki = Path(tempfile.mkdtemp(prefix="ferrite-sync-pki-"))
    if not make_pki(pki, checks):
        return 1
    plain, tls, cert = free_port(), free_port(), free_port()
    broker = start_mosquitto(pki, plain, tls, cert)
    rest = free_port()
    cloud_proc = subprocess.Popen(
        [cloud_binary, "run", "--broker", f"mqtt://127.0.0.1:{plain}", "--listen", f"127.0.0.1:{rest}",
         "--data-dir", str(pki / "cloud-data")],
        stderr=open(pki / "cloud.log", "w"), stdout=subprocess.DEVNULL)
    cloud = f"http://127.0.0.1:{rest}"
    try:
        up = await wait_for(lambda: http("GET", f"{cloud}/api/v1/stats")[0] == 200, 20)
        checks.check("ferrite-cloud runs on Mosquitto (--broker)", up, (pki / "cloud.log").read_text()[-2000:])
        (pki / "gw.password").write_text("s3cret\n")
        (pki / "wrong.password").write_text("guess\n")
        await one_gateway(binary, checks, cloud, "gw-pass", pki,
                          f'broker = "mqtts://localhost:{tls}"\nca_file = "{{pki}}/ca.pem"\n'
                          'username = "gw-pass"\npassword_file = "{pki}/gw.password"\n', True)
        await one_gateway(binary, checks, cloud, "gw-cert", pki,
                          f'broker = "mqtts://localhost:{cert}"\nca_file = "{{pki}}/ca.pem"\n'
                          'client_certificate = "{pki}/client.pem"\nclient_key = "{pki}/client.key"\n', True)
        await one_gateway(binary, checks, cloud, "gw-wrong", pki,
                          f'broker = "mqtts://localhost:{tls}"\nca_file = "{{pki}}/ca.pem"\n'
                          'username = "gw-pass"\npassword_file = "{pki}/wrong.password"\n', False)
        await one_gateway(binary, checks, cloud, "gw-untrusted", pki,
                          f'broker = "mqtts://localhost:{tls}"\nca_file = "{{pki}}/client.pem"\n'
                          'username = "gw-pass"\npassword_file = "{pki}/gw.password"\n', False)
        stats = http("GET", f"{cloud}/api/v1/stats")[1]
        checks.check("/api/v1/stats counts what came", stats and stats["points"] == 6, stats)
    finally:
        cloud_proc.kill()
        broker.kill()
    return checks.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*ferrite_and_cloud(sys.argv))))
