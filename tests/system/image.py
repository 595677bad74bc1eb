"""The container images, as a user runs them (packaging/image.sh builds them).

amd64 (the default), against `ferrite:TAG`, `ferrite-sim:TAG` and the bare
binary FERRITE the image was built from:
  - the image: non-root user 10001, a HEALTHCHECK, the config and data
    folders as volumes, the API's port exposed, OCI labels, at most 20 MB;
  - the demo: the simulator's image serves the demo's devices and the
    gateway's image runs the demo's config with `--read-only --cap-drop ALL
    --security-opt no-new-privileges`, as uid 10001 with no capabilities:
    it serves soon after its start (its log line against
    docker's start time: reported against the 1 s target, failed only past
    10 s), its health check turns `healthy`, it reads the
    simulated boiler, and a REST write reaches the device and reads back;
  - `docker stop` (SIGTERM) ends it cleanly (exit 0) and quickly;
  - idle memory: the image with its default config against the bare binary
    with the same config, both on this machine: what each allocated
    (RssAnon) within 1 MB; their whole RSS is reported, and the bare
    binary's is at most 10 MiB (the code layout: docs/deploy.md, "Memory").

`--arch arm64|armv7` checks `ferrite:TAG-ARCH` instead: its platform in
`docker image inspect`, the same configuration (its size is reported, not
held to 20 MB: CI builds ARM in debug), and, where qemu-user's binfmt handlers are
registered (with the F flag, so that they work inside a container), that
it runs under them and its health check turns healthy. Without binfmt it
says so and checks only the image.

Usage: python3 tests/system/image.py FERRITE [--tag latest] [--arch amd64]
Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from dockerctl import (ROOT, Checks, docker, free_port, http, image_config, inspect, rss_kib,
                       wait_for, wait_healthy)

MAX_IMAGE_BYTES = 20 * 1000 * 1000
PLATFORMS = {"arm64": ("linux/arm64", "arm64", "", "aarch64"), "armv7": ("linux/arm/v7", "arm", "v7", "arm")}


def check_image(checks, image, arch, variant="", size_limit=True):
    config = image_config(image)
    c = config["Config"]
    size = config["Size"]
    if size_limit:
        checks.check(f"{image}: at most 20 MB", size <= MAX_IMAGE_BYTES, f"{size / 1e6:.1f} MB", show=True)
    else:
        print(f"  {image}: {size / 1e6:.1f} MB")
    checks.check(f"{image}: for {arch}{'/' + variant if variant else ''}",
                 config["Architecture"] == arch and config.get("Variant", "") == variant,
                 f"{config['Os']}/{config['Architecture']}/{config.get('Variant', '')}")
    checks.check(f"{image}: runs as the non-root user 10001", c.get("User") == "10001:10001", c.get("User"))
    test = (c.get("Healthcheck") or {}).get("Test") or []
    checks.check(f"{image}: has a HEALTHCHECK (ferrite health)", "health" in test, test)
    volumes = set((c.get("Volumes") or {}).keys())
    checks.check(f"{image}: config and data folders are volumes",
                 {"/etc/ferrite", "/var/lib/ferrite"} <= volumes, sorted(volumes))
    checks.check(f"{image}: exposes the API's port", "8080/tcp" in (c.get("ExposedPorts") or {}))
    labels = c.get("Labels") or {}
    wanted = ["org.opencontainers.image." + k for k in ("version", "revision", "source", "title", "created")]
    checks.check(f"{image}: carries the OCI labels", all(labels.get(k) for k in wanted),
                 {k: labels.get(k) for k in wanted})
    return size


def demo_project(work):
    """The demo's config in WORK, with a free API port; the path and port."""
    project = work / "demo"
    shutil.copytree(ROOT / "examples" / "demo", project)
    port = free_port()
    config = project / "ferrite.toml"
    config.write_text(config.read_text().replace('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'))
    # The writable data folder is the image's volume, not the (read-only) config folder.
    return project, port


def serving_seconds(name):
    """Seconds from docker's start of the container to its 'serving' line."""
    started = inspect(name, "{{.State.StartedAt}}")
    logs = subprocess.run(["docker", "logs", "-t", name], capture_output=True, text=True).stdout
    for line in logs.splitlines():
        if "ferrite is serving" in line:
            return (parse_time(line.split()[0]) - parse_time(started)).total_seconds()
    return None


def parse_time(stamp):
    # RFC 3339 with nanoseconds: keep microseconds for datetime.
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))
    return datetime.fromisoformat(stamp)


def status_field(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    return None


def demo_run(checks, tag, work):
    project, port = demo_project(work)
    base = f"http://127.0.0.1:{port}"
    names = [f"ferrite-image-sim-{port}", f"ferrite-image-gw-{port}"]
    hardening = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    try:
        # Host networking: the demo's devices are on 127.0.0.1, where the
        # simulator's container serves them.
        docker("run", "-d", "--name", names[0], "--network", "host", *hardening, "--tmpfs", "/tmp",
               "-v", f"{project}:/etc/ferrite:ro", f"ferrite-sim:{tag}", "--config", "/etc/ferrite/sim.toml")
        docker("run", "-d", "--name", names[1], "--network", "host", *hardening,
               "-v", f"{project}:/etc/ferrite:ro", f"ferrite:{tag}", "run", "--data-dir", "/var/lib/ferrite")
        took = wait_healthy(names[1], 40)
        checks.check("the gateway's health check turns healthy", took is not None,
                     f"{took:.1f} s (checks every 5 s)" if took else "", show=True)
        serving = serving_seconds(names[1])
        # A figure, not a budget (budgets live in benchmarks): the target is
        # 1 s on an idle machine; the check only fails past 10 s, so a busy
        # CI machine does not fail it.
        checks.check("serving soon after the container's start (target 1 s)",
                     serving is not None and serving <= 10.0,
                     f"{serving:.3f} s" if serving is not None else "no 'serving' line", show=True)
        pid = inspect(names[1], "{{.State.Pid}}")
        checks.check("it runs as uid 10001", status_field(pid, "Uid") == "10001", status_field(pid, "Uid"))
        checks.check("with no capabilities", status_field(pid, "CapEff") == "0000000000000000",
                     status_field(pid, "CapEff"))

        def temperature():
            status, body = http("GET", f"{base}/api/v1/devices/boiler-1/properties/temperature")
            return body if status == 200 and body and body.get("quality") == "good" else None
        reading = wait_for(temperature, 20)
        checks.check("it reads the simulated boiler (demo config, sim container)",
                     reading is not None and 40 <= reading["value"] <= 100, reading)
        status, body = http("PUT", f"{base}/api/v1/devices/boiler-1/properties/setpoint", {"value": 61.5})
        checks.check("a REST write reaches the device", status == 200, (status, body))

        def read_back():
            status, body = http("GET", f"{base}/api/v1/devices/boiler-1/properties/setpoint")
            return status == 200 and body and body.get("value") == 61.5
        checks.check("and reads back", wait_for(read_back, 10), "")
        start = time.monotonic()
        docker("stop", "-t", "20", names[1], timeout=60)
        stopped = time.monotonic() - start
        code = inspect(names[1], "{{.State.ExitCode}}")
        checks.check("docker stop (SIGTERM) ends it cleanly and quickly", code == "0" and stopped < 10,
                     f"exit {code} after {stopped:.1f} s", show=True)
    finally:
        for name in names:
            if checks.failed:
                print(f"--- logs of {name}")
                subprocess.run(["docker", "logs", "--tail", "30", name])
            docker("rm", "-f", "-v", name, check=False)


def idle_memory(checks, ferrite, tag, work):
    """RSS of the image's default config, in the container and bare."""
    project = work / "bare"
    for sub in ("models", "devices", "rules"):
        (project / sub).mkdir(parents=True)
    shutil.copy(ROOT / "packaging" / "image" / "ferrite.toml", project / "ferrite.toml")
    name = f"ferrite-image-idle-{free_port()}"
    # With the image's malloc setting (its ENV MALLOC_ARENA_MAX=2, as the
    # systemd unit's): the image is compared, not the allocator's arenas.
    bare = subprocess.Popen([ferrite, "run", "--config", str(project / "ferrite.toml"),
                             "--data-dir", str(project / "data"), "--listen", f"127.0.0.1:{free_port()}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MALLOC_ARENA_MAX="2"))
    try:
        docker("run", "-d", "--name", name, "--read-only", "--cap-drop", "ALL", f"ferrite:{tag}")
        wait_healthy(name, 30)
        time.sleep(5)
        pids = {"image": inspect(name, "{{.State.Pid}}"), "bare": bare.pid}
        rss = {where: rss_kib(pid) for where, pid in pids.items()}
        # What the process allocates is compared. Its binary's pages are
        # not: how many are mapped follows the disk's read-ahead (the same
        # binary bare had ~1 MB more file pages than in the image, run
        # after run, with the host disk's read_ahead_kb at 8192; at 128 the
        # gap was gone), which is the machine's, not the image's.
        checks.check("idle memory allocated in the image within 1 MB of the bare binary's (RssAnon)",
                     abs(rss["image"]["RssAnon"] - rss["bare"]["RssAnon"]) <= 1024,
                     ", ".join(f"{where} {r['VmRSS'] / 1024:.1f} MiB RSS ({r['RssAnon'] / 1024:.1f} allocated, "
                               f"{r['RssFile'] / 1024:.1f} of files)" for where, r in rss.items()), show=True)
        # The whole of it is held to issue 20's idle target. Most of an idle
        # gateway's RSS is its binary's code pages, and the linker packs the
        # code a gateway runs at the start of the binary from a recorded
        # list (gateway/code-layout); a list gone stale (a dependency or the
        # toolchain updated since it was recorded) shows here first, at
        # about 13 MiB: run gateway/code-layout/record.sh again. A change to
        # the code a gateway runs under load does not show at idle
        # (docs/deploy.md, "Code layout").
        checks.check("idle RSS of the bare binary at most 10 MiB (the code layout list applies)",
                     rss["bare"]["VmRSS"] <= 10 * 1024,
                     f"{rss['bare']['VmRSS'] / 1024:.1f} MiB, {rss['bare']['RssFile'] / 1024:.1f} of it the binary's pages", show=True)
    finally:
        bare.terminate()
        bare.wait(timeout=20)
        docker("rm", "-f", "-v", name, check=False)


def binfmt_registered(qemu):
    entry = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{qemu}"
    return entry.exists() and "flags: " in entry.read_text() and "F" in entry.read_text().split("flags: ")[1]


def arm(checks, tag, arch):
    platform, architecture, variant, qemu = PLATFORMS[arch]
    image = f"ferrite:{tag}-{arch}"
    # CI's ARM binaries are debug builds (minutes cheaper under qemu's
    # smoke test); the 20 MB limit is for the field build (docs/deploy.md).
    check_image(checks, image, architecture, variant, size_limit=False)
    if not binfmt_registered(qemu):
        print(f"  (not run: no qemu-{qemu} binfmt handler with the F flag is registered here)")
        return
    name = f"ferrite-image-{arch}-{free_port()}"
    try:
        docker("run", "-d", "--name", name, "--platform", platform, "--read-only", "--cap-drop", "ALL", image)
        took = wait_healthy(name, 120)
        checks.check(f"{image} runs under qemu-{qemu} and turns healthy", took is not None,
                     f"{took:.1f} s" if took else "", show=True)
    finally:
        if checks.failed:
            subprocess.run(["docker", "logs", "--tail", "30", name])
        docker("rm", "-f", "-v", name, check=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ferrite", help="the static binary the amd64 image was built from")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--arch", default="amd64", choices=["amd64", *PLATFORMS])
    args = parser.parse_args()
    checks = Checks()
    if args.arch != "amd64":
        arm(checks, args.tag, args.arch)
        return checks.finish()
    size = check_image(checks, f"ferrite:{args.tag}", "amd64")
    print(f"  image size: {size / 1e6:.1f} MB; the binary: {Path(args.ferrite).stat().st_size / 1e6:.1f} MB")
    work = Path(tempfile.mkdtemp(prefix="ferrite-image-"))
    work.chmod(0o755)
    try:
        demo_run(checks, args.tag, work)
        idle_memory(checks, args.ferrite, args.tag, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    raise SystemExit(main())
