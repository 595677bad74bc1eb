"""What the system tests share: the docker CLI, compose (v2's `docker compose`
or v1's `docker-compose`), and waiting on a container's health check."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
from common import Checks, free_port, http  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]


def docker(*args, check=True, timeout=120):
    """Runs `docker ARGS`; returns its stdout (stripped). Raises on failure
    when `check`, with what docker printed."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def compose_command():
    """`docker compose` where the plugin is there, else `docker-compose`."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def inspect(name, template):
    return docker("inspect", "--format", template, name)


def health(name):
    """The container's health status: starting, healthy, unhealthy, or ''."""
    return inspect(name, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")


def wait_healthy(name, seconds):
    """Seconds until `name` is healthy, or None (its last probe printed)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if health(name) == "healthy":
            return time.monotonic() - start
        time.sleep(0.25)
    log = inspect(name, "{{json .State.Health}}")
    print(f"  {name} not healthy after {seconds} s: {log[-600:]}")
    return None


def image_config(image):
    return json.loads(docker("image", "inspect", image))[0]


def wait_for(predicate, seconds, step=0.25):
    """Polls `predicate` until it is truthy (returns its value) or time is up
    (returns the last value)."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def rss_kib(pid):
    """Resident memory of a process from one read of /proc/PID/status (KiB):
    `VmRSS`, the whole, and its parts `RssAnon` (what the process allocated)
    and `RssFile` (pages of its binary and other files)."""
    fields = ("VmRSS", "RssAnon", "RssFile")
    rss = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            rss[name] = int(value.split()[0])
    missing = [f for f in fields if f not in rss]
    if missing:
        raise RuntimeError(f"no {', '.join(missing)} for {pid}")
    return rss
