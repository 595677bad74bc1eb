"""Smoke test of an ARM build under qemu-user: the aarch64 (or, with the
runner qemu-arm, the armv7) `ferrite`,
`ferrite-sim` and `ferrite-cloud`, three processes as on an edge box and its
cloud, on the demo's devices.

Checks: the binaries are ELF files for the architecture; the gateway reads the simulated
Modbus boiler; a REST write reaches the device and reads back; a rule fires
(its event in the API); the changes sync to the control plane.

Usage: python3 arm_smoke.py DIR_WITH_AARCH64_BINARIES [RUNNER] [--sim PATH] [--cloud PATH]
RUNNER defaults to qemu-aarch64; qemu-arm runs an armv7 build. With `--sim PATH` the simulator, and with
`--cloud PATH` the control plane, is that (native) binary instead: CI builds
for ARM only what an edge box runs (`ferrite` with the field features); the
simulator is a test tool, and the control plane runs in the cloud (its x86
shipped build is tested by the other scripts). The demo's fixed ports must be free (1883,
1884, 4840, 5020).

Each check prints ok/FAIL; the exit status is 1 if any failed.
"""
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Checks, free_port, http, wait_for

ROOT = Path(__file__).resolve().parents[2]
SMOKE_RULE = """kind: Rule
name: smoke
when: 'devices["boiler-1"].temperature > 0'
then:
  - event: { severity: info, message: "boiler-1 is warm" }
"""
# ELF machine numbers, by the qemu-user runner that runs them.
MACHINES = {"qemu-aarch64": ("aarch64", 183), "qemu-arm": ("armv7 (32-bit ARM)", 40)}


def is_elf_for(path, machine):
    with open(path, "rb") as f:
        header = f.read(20)
    return header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == machine


def start(runner, binary, args, cwd, log):
    return subprocess.Popen([runner, str(binary), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))


def tail(path):
    try:
        return Path(path).read_text()[-1500:]
    except OSError:
        return ""


async def main(bindir, runner, sim, cloud_path=None):
    checks = Checks()
    bins = {name: Path(bindir) / name for name in ("ferrite", "ferrite-sim", "ferrite-cloud")}
    native = set()
    if sim:
        bins["ferrite-sim"] = Path(sim)
        native.add("ferrite-sim")
    if cloud_path:
        bins["ferrite-cloud"] = Path(cloud_path)
        native.add("ferrite-cloud")
    for name, path in bins.items():
        if name in native:
            continue
        arch, machine = MACHINES.get(Path(runner).name, MACHINES["qemu-aarch64"])
        checks.check(f"{name} is an {arch} ELF binary", path.exists() and is_elf_for(path, machine), path)
    if checks.failed:
        return 1
    work = Path(tempfile.mkdtemp(prefix="ferrite-arm-smoke-"))
    shutil.copytree(ROOT / "examples" / "demo", work / "demo")
    project = work / "demo"
    # boiler-overheat holds the setpoint for a while once the boiler runs
    # hot; this test writes the setpoint itself.
    (project / "rules" / "boiler-overheat.yaml").unlink()
    (project / "rules" / "smoke.yaml").write_text(SMOKE_RULE)
    api_port, cloud_port = free_port(), free_port()
    api, cloud = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{cloud_port}"
    procs = []
    try:
        cloud_args = ["run", "--listen", f"127.0.0.1:{cloud_port}", "--mqtt-listen", "127.0.0.1:1884",
                      "--data-dir", str(work / "cloud")]
        if cloud_path:
            procs.append(subprocess.Popen([str(bins["ferrite-cloud"]), *cloud_args], cwd=work,
                                          stdout=subprocess.DEVNULL, stderr=open(work / "cloud.log", "w")))
        else:
            procs.append(start(runner, bins["ferrite-cloud"], cloud_args, work, work / "cloud.log"))
        procs.append(start(runner, bins["ferrite"],
                           ["run", "--config", str(project / "ferrite.toml"), "--listen", f"127.0.0.1:{api_port}"],
                           work, work / "ferrite.log"))
        up = await wait_for(lambda: http("GET", f"{api}/api/v1/devices")[0] == 200, 90, step=0.5)
        checks.check("the ARM gateway serves its API under qemu", up, tail(work / "ferrite.log"))
        sim_args = ["--config", str(project / "sim.toml")]
        if sim:
            procs.append(subprocess.Popen([str(bins["ferrite-sim"]), *sim_args], cwd=work,
                                          stdout=subprocess.DEVNULL, stderr=open(work / "sim.log", "w")))
        else:
            procs.append(start(runner, bins["ferrite-sim"], sim_args, work, work / "sim.log"))

        def temperature():
            status, body = http("GET", f"{api}/api/v1/devices/boiler-1/properties/temperature")
            return body if status == 200 and isinstance(body.get("value"), (int, float)) else None

        reading = await wait_for(temperature, 90, step=0.5)
        checks.check("it reads the simulated Modbus boiler", reading,
                     (tail(work / "ferrite.log"), tail(work / "sim.log")))

        status, body = http("PUT", f"{api}/api/v1/devices/boiler-1/properties/setpoint", {"value": 47.5})
        checks.check("a REST write is accepted", status == 200, (status, body))
        back = await wait_for(
            lambda: http("GET", f"{api}/api/v1/devices/boiler-1/properties/setpoint")[1].get("value") == 47.5,
            30, step=0.5)
        checks.check("and reads back from the device", back,
                     http("GET", f"{api}/api/v1/devices/boiler-1/properties/setpoint"))

        def fired():
            status, body = http("GET", f"{api}/api/v1/events")
            return status == 200 and any(e.get("rule") == "smoke" for e in body)

        checks.check("a rule fires, its event in the API", await wait_for(fired, 30, step=0.5),
                     http("GET", f"{api}/api/v1/events"))

        def synced():
            status, body = http("GET", f"{cloud}/api/v1/gateways/demo/devices/boiler-1/properties/temperature/history")
            return status == 200 and len(body) >= 2

        checks.check("changes sync to the control plane", await wait_for(synced, 60, step=0.5),
                     (http("GET", f"{api}/api/v1/sync"), tail(work / "cloud.log")))
        status, stats = http("GET", f"{cloud}/api/v1/stats")
        checks.check("/api/v1/stats shows the bytes on the wire", status == 200 and stats["bytes_on_wire"] > 0, stats)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return checks.finish()


if __name__ == "__main__":
    args = sys.argv[1:]
    options = {}
    for flag in ("--sim", "--cloud"):
        if flag in args:
            i = args.index(flag)
            options[flag] = args[i + 1]
            del args[i:i + 2]
    sys.exit(asyncio.run(main(args[0], args[1] if len(args) > 1 else "qemu-aarch64",
                              options.get("--sim"), options.get("--cloud"))))
