"""Helpers shared by the interop scripts: ports, HTTP, and a check list."""
import asyncio
import json
import math
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None):
    """(status, decoded JSON) of one call, with a bearer token if given;
    status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        # No answer (yet), or not within the timeout: a slow start under
        # qemu, say. Callers retry.
        return 0, None


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail="", show=False):
        """One check's line; its detail on failure, or always with `show`
        (a measured figure)."""
        print(("ok    " if ok else "FAIL  ") + name + ("" if ok and not show else f": {detail}"), flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1

    def finish(self):
        """Prints the closing `N passed, N failed` line; the exit status."""
        print(f"\n{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def ferrite_and_cloud(argv):
    """`ferrite` from argv[1], and `ferrite-cloud` from argv[2] or beside it."""
    ferrite = argv[1]
    cloud = argv[2] if len(argv) > 2 else str(Path(ferrite).with_name("ferrite-cloud"))
    return ferrite, cloud


def until(what, limit=10.0):
    """Polls `what()` until it is truthy or `limit` seconds pass; its last value."""
    deadline = time.monotonic() + limit
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def project(prefix, model):
    """A temporary project folder with `model` in it; returns its path."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    for sub in ("models", "devices", "rules"):
        (work / sub).mkdir()
    (work / "ferrite.toml").write_text('[gateway]\nid = "interop"\ndata_dir = "data"\n')
    (work / "models" / "model.yaml").write_text(model)
    return work


COUNTER_MODEL = """kind: DeviceModel
name: counter
properties:
  count: { type: int, mqtt: { topic: "plant/{device}/count" } }
"""
COUNTER_DEVICE = "kind: Device\nname: c1\nmodel: counter\nmqtt: {}\n"


def counter_gateway(gw_id, cloud_lines):
    """A project for gateway `gw_id` with one MQTT device, c1, whose count
    comes in on its embedded broker (plant/c1/count), and a [cloud] section
    of `cloud_lines` (batches every 200 ms). Returns (folder, broker port)."""
    work = project(f"ferrite-{gw_id}-", COUNTER_MODEL)
    (work / "devices" / "c1.yaml").write_text(COUNTER_DEVICE)
    mqtt_port = free_port()
    text = (work / "ferrite.toml").read_text().replace('id = "interop"', f'id = "{gw_id}"')
    text += f'[mqtt]\nlisten = "127.0.0.1:{mqtt_port}"\n'
    text += '[cloud]\nbatch_interval = "200ms"\n' + cloud_lines
    (work / "ferrite.toml").write_text(text)
    return work, mqtt_port


def start_ferrite(binary, work, api_port):
    """`ferrite run` on the project in `work`, logging to work/ferrite.log."""
    return subprocess.Popen(
        [binary, "run", "--config", str(work / "ferrite.toml"), "--listen", f"127.0.0.1:{api_port}"],
        stderr=open(work / "ferrite.log", "w"),
    )


def stop_ferrite(gateway, checks):
    """SIGTERM, and a check that it exits 0 within 10 s."""
    gateway.terminate()
    try:
        code = gateway.wait(timeout=10)
        checks.check("ferrite stops cleanly on SIGTERM", code == 0, f"exit {code}")
    except subprocess.TimeoutExpired:
        gateway.kill()
        checks.check("ferrite stops cleanly on SIGTERM", False, "still running after 10 s")


async def wait_for(predicate, seconds, step=0.05):
    """Polls the blocking `predicate` until it returns something truthy."""
    deadline = time.monotonic() + seconds
    while True:
        result = await asyncio.to_thread(predicate)
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(step)
