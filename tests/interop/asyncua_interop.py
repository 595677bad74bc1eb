#!/usr/bin/env python3
"""Interop: Ferrite's OPC UA driver against asyncua, a server written by others.

The script starts an asyncua server (python-opcua's asyncio successor) with a
variable of every scalar type Ferrite maps, security None and Basic256Sha256
Sign / SignAndEncrypt, and a user "operator". It runs `ferrite run` with three
devices on it:

- `plain`: security none, anonymous, subscription;
- `secure`: Basic256Sha256 sign-and-encrypt, username login, the server's
  certificate named in `server_certificate`;
- `polled`: security none, batched Reads every 100 ms, and the events of
  asyncua's Server object;
- `behind`: security none, subscription with a queue of 100, through a TCP
  proxy in this script that can go silent (nothing passes, new connections
  hang).

It checks reads of every type, server-side changes arriving, writes landing in
asyncua's address space with the node's own type, refusals; a method call
(Plant.Dose) with its inputs in asyncua's declared types, its outputs, and
its refusals; an event and an alarm journalled, one below min_severity not; that changes made
while `behind`'s link is silent are all stored once it returns, or reported by
an `opcua_data_may_be_missing` event when asyncua dropped the subscription;
and recovery after the server is stopped and started again.

    python3 tests/interop/asyncua_interop.py target/debug/ferrite

Prints one line per check and ends with "N passed, M failed"; exits 1 on any failure.
"""
import asyncio
import sys
import time

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.server.user_managers import UserManager
from asyncua.crypto.permission_rules import User, UserRole
from cryptography.x509.oid import ExtendedKeyUsageOID

from common import Checks, free_port, http, project, same, start_ferrite, stop_ferrite, wait_for

FERRITE = sys.argv[1] if len(sys.argv) > 1 else "target/debug/ferrite"
APP_URI = "urn:ferrite:interop:asyncua"

# name: (VariantType, datatype in the model, model type, initial, written)
NODES = {
    "Flag": (ua.VariantType.Boolean, "Boolean", "bool", True, False),
    "Small": (ua.VariantType.SByte, "SByte", "int", -7, 9),
    "Octet": (ua.VariantType.Byte, "Byte", "int", 250, 17),
    "Short": (ua.VariantType.Int16, "Int16", "int", -32000, 1234),
    "Word": (ua.VariantType.UInt16, "UInt16", "int", 65000, 2),
    "Long": (ua.VariantType.Int32, "Int32", "int", -2_000_000_000, 77),
    "DWord": (ua.VariantType.UInt32, "UInt32", "int", 4_000_000_000, 5),
    "Huge": (ua.VariantType.Int64, "Int64", "int", -(2**62), 2**40),
    "UHuge": (ua.VariantType.UInt64, "UInt64", "int", 2**63 - 1, 6),
    "Single": (ua.VariantType.Float, "Float", "float", 2.5, -0.75),
    "Real": (ua.VariantType.Double, "Double", "float", 3.14159, 2.71828),
    "Text": (ua.VariantType.String, "String", "string", "asyncua", "from ferrite"),
}


def model(ns):
    lines = ["kind: DeviceModel", "name: plant", "properties:"]
    for name, (_, datatype, ty, _, _) in NODES.items():
        lines.append(
            f'  {name.lower()}: {{ type: {ty}, access: readwrite, '
            f'opcua: {{ node: "ns={ns};s=Plant.{name}", datatype: {datatype} }} }}'
        )
    lines.append(f'  missing: {{ type: int, opcua: {{ node: "ns={ns};s=Plant.Nowhere" }} }}')
    lines += [
        "methods:",
        "  dose:",
        f'    opcua: {{ object: "ns={ns};s=Plant", method: "ns={ns};s=Plant.Dose" }}',
        "    inputs:",
        "      - { name: amount, type: float, min: 0, max: 100 }",
        "      - { name: pump, type: int }",
        "    outputs:",
        "      - { name: delivered, type: float }",
        "      - { name: label, type: string }",
    ]
    return "\n".join(lines) + "\n"


# Every call of Plant.Dose: (amount, its VariantType, pump, its VariantType).
DOSED = []


async def dose(parent, amount, pump):
    """Plant.Dose(amount: Double, pump: UInt16) -> (delivered: Double,
    label: String); pump 0 is refused with Bad_InvalidArgument."""
    DOSED.append((amount.Value, amount.VariantType, pump.Value, pump.VariantType))
    if pump.Value == 0:
        return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
    return [
        ua.Variant(amount.Value * 2, ua.VariantType.Double),
        ua.Variant(f"pump {pump.Value}", ua.VariantType.String),
    ]


class Operators(UserManager):
    """Anonymous may connect; "operator" with the right password too.
    (`certificate` is the client's application certificate, sent with every
    session, so it does not tell anonymous logins apart.)"""

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            return User(role=UserRole.User)
        if username == "operator" and password == "s3cret":
            return User(role=UserRole.User)
        return None


async def make_server(port, cert, key):
    server = Server(user_manager=Operators())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/interop")
    server.set_server_name("asyncua interop")
    await server.set_application_uri(APP_URI)
    server.set_security_policy([
        ua.SecurityPolicyType.NoSecurity,
        ua.SecurityPolicyType.Basic256Sha256_Sign,
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    ns = await server.register_namespace("urn:ferrite:interop")
    plant = await server.nodes.objects.add_object(ua.NodeId("Plant", ns), "Plant")
    variables = {}
    for name, (vtype, _, _, initial, _) in NODES.items():
        var = await plant.add_variable(ua.NodeId(f"Plant.{name}", ns), name, ua.Variant(initial, vtype))
        await var.set_writable()
        variables[name] = var
    await plant.add_method(
        ua.NodeId("Plant.Dose", ns), "Dose", dose,
        [ua.VariantType.Double, ua.VariantType.UInt16],
        [ua.VariantType.Double, ua.VariantType.String],
    )
    return server, ns, variables


class SilentLink:
    """A TCP proxy on 127.0.0.1 that can go silent: while `silent`, nothing
    passes either way and new connections wait; the connections open when it
    went silent are closed when it comes back (found dead)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.silent = False
        self.quiet = []  # connections held while silent
        self.back = asyncio.Event()
        self.back.set()

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader, writer):
        await self.back.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        conn = (writer, up_writer)

        async def pipe(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    if self.silent:
                        # Silent: this byte never arrives; the connection
                        # is dead once the link is back.
                        self.quiet.append(conn)
                        await self.back.wait()
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            for w in conn:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def go_silent(self):
        self.silent = True
        self.back.clear()

    def come_back(self):
        self.silent = False
        for conn in self.quiet:
            for w in conn:
                w.close()
        self.quiet = []
        self.back.set()

    def close(self):
        self.server.close()


def device(name, port, extra):
    return (
        f"kind: Device\nname: {name}\nmodel: plant\npoll: 100ms\ntimeout: 1s\n"
        f"opcua:\n  endpoint: \"opc.tcp://127.0.0.1:{port}/interop\"\n  sampling: 100ms\n{extra}"
    )


async def main():
    checks = Checks()
    ua_port, api_port = free_port(), free_port()
    work = project("ferrite-asyncua-", "")
    cert, key = work / "server-cert.der", work / "server-key.pem"
    await setup_self_signed_certificate(
        key, cert, APP_URI, "127.0.0.1",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"countryName": "DE", "organizationName": "Ferrite interop", "commonName": "asyncua interop"},
    )
    server, ns, variables = await make_server(ua_port, cert, key)
    await server.start()
    (work / "models" / "model.yaml").write_text(model(ns))
    (work / "devices" / "password.txt").write_text("s3cret\n")
    (work / "devices" / "plain.yaml").write_text(device("plain", ua_port, ""))
    (work / "devices" / "secure.yaml").write_text(device(
        "secure", ua_port,
        "  security: sign-and-encrypt\n  policy: Basic256Sha256\n  username: operator\n"
        f"  password_file: password.txt\n  server_certificate: {cert}\n",
    ))
    (work / "devices" / "polled.yaml").write_text(device(
        "polled", ua_port, '  mode: poll\n  events: { notifier: "i=2253", min_severity: 100 }\n'))
    link = SilentLink(ua_port)
    await link.start()
    (work / "devices" / "behind.yaml").write_text(device("behind", link.port, "  queue: 100\n"))
    gateway = start_ferrite(FERRITE, work, api_port)
    base = f"http://127.0.0.1:{api_port}/api/v1/devices"
    names = ("plain", "secure", "polled")  # `behind` is checked on its own

    def get(name):
        code, body = http("GET", f"{base}/{name}")
        return body if code == 200 else None

    def log_tail():
        return (work / "ferrite.log").read_text()[-3000:]

    try:
        for name in names:
            # `missing` names a node asyncua does not have: the device
            # reports it and serves the rest.
            body = await wait_for(lambda n=name: (get(n) or {}).get("status") == "error" and get(n), 30)
            checks.check(f"{name}: session open", bool(body), log_tail())
            error = (body or {}).get("error") or ""
            checks.check(f"{name}: the missing node is named", "missing" in error and "BadNodeIdUnknown" in error, error)

            # The missing node's error can come before the first values (a
            # signed and encrypted session's first notification, on a busy
            # machine): wait for them, bounded.
            def all_values(n=name):
                props = (get(n) or {}).get("properties", {})
                return all(props.get(node.lower(), {}).get("value") is not None for node in NODES)
            await wait_for(all_values, 30)
            props = (get(name) or {}).get("properties", {})
            for node, (_, _, _, initial, _) in NODES.items():
                got = props.get(node.lower(), {}).get("value")
                checks.check(f"{name}: reads {node}", same(got, initial), f"got {got!r}, want {initial!r}")

        # A change on the server reaches every device; the time it takes
        # is printed (subscription: sampling + publishing, 100 ms each).
        started = time.monotonic()
        await variables["Long"].write_value(ua.Variant(424242, ua.VariantType.Int32))
        for name in names:
            ok = await wait_for(lambda n=name: (get(n) or {}).get("properties", {}).get("long", {}).get("value") == 424242, 10, 0.01)
            checks.check(f"{name}: a server-side change arrives", bool(ok))
            print(f"      {name}: change visible through REST after {(time.monotonic() - started) * 1000:.0f} ms")

        # Writes through each device land in asyncua's address space, in the
        # node's own type.
        for i, (node, (vtype, _, _, _, written)) in enumerate(NODES.items()):
            name = names[i % 3]
            code, body = await asyncio.to_thread(http, "PUT", f"{base}/{name}/properties/{node.lower()}", {"value": written})
            checks.check(f"{name}: write {node} answers 200", code == 200 and same(body.get("value"), written), (code, body))
            value = await variables[node].read_data_value()
            checks.check(
                f"{name}: asyncua holds the written {node}",
                same(value.Value.Value, written) and value.Value.VariantType == vtype,
                (value.Value.Value, value.Value.VariantType),
            )
        code, body = await asyncio.to_thread(http, "PUT", f"{base}/plain/properties/octet", {"value": 256})
        checks.check("256 for a Byte node is refused with 400", code == 400, (code, body))
        value = await variables["Octet"].read_value()
        checks.check("and never reaches the server", value == 17, value)

        # Methods: Plant.Dose called through the API, each input sent in
        # the type asyncua declares in the method's InputArguments.
        for name in ("plain", "secure"):
            before = len(DOSED)
            code, body = await asyncio.to_thread(
                http, "POST", f"{base}/{name}/methods/dose", {"inputs": {"amount": 12.5, "pump": 3}})
            checks.check(
                f"{name}: method call answers with its outputs",
                code == 200 and body.get("outputs") == {"delivered": 25.0, "label": "pump 3"},
                (code, body),
            )
            checks.check(
                f"{name}: asyncua got the inputs as Double and UInt16",
                DOSED[before:] == [(12.5, ua.VariantType.Double, 3, ua.VariantType.UInt16)],
                DOSED[before:],
            )
        code, body = await asyncio.to_thread(
            http, "POST", f"{base}/plain/methods/dose", {"inputs": {"amount": 1, "pump": 0}})
        checks.check(
            "a call asyncua refuses is a 400 device_rejected",
            code == 400 and body.get("error", {}).get("code") == "device_rejected", (code, body))
        before = len(DOSED)
        code, body = await asyncio.to_thread(
            http, "POST", f"{base}/plain/methods/dose", {"inputs": {"amount": 500, "pump": 1}})
        checks.check(
            "an input over the model's max is refused with 400 and never reaches asyncua",
            code == 400 and body.get("error", {}).get("code") == "out_of_range" and len(DOSED) == before,
            (code, body, DOSED[before:]),
        )

        # Events and alarms: asyncua's Server object reports a BaseEventType
        # event and an AlarmConditionType one; `polled` takes the Server's
        # events into the journal (a polled device's events come by a
        # subscription all the same); one below min_severity is left out.
        events_url = f"http://127.0.0.1:{api_port}/api/v1/events?device=polled&limit=100"

        def journalled(kind):
            code, events = http("GET", events_url)
            return [e for e in (events if code == 200 else []) if e.get("kind") == kind]

        plain = await server.get_event_generator()
        plain.event.Severity = 50
        plain.event.Message = ua.LocalizedText("too low to keep")
        await plain.trigger()
        plain.event.Severity = 700
        plain.event.Message = ua.LocalizedText("door opened")
        await plain.trigger()
        alarm = await server.get_event_generator(ua.ObjectIds.AlarmConditionType)
        alarm.event.Severity = 900
        alarm.event.Message = ua.LocalizedText("tank level high")
        alarm.event.ConditionName = "TankHigh"
        await alarm.trigger()
        got = await wait_for(lambda: journalled("opcua_event") and journalled("opcua_alarm"), 15)
        events = journalled("opcua_event")
        checks.check(
            "an asyncua event is journalled with its message, severity and source",
            any(e.get("message") == "door opened" and e.get("severity") == "warning"
                and e.get("details", {}).get("ua_severity") == 700 for e in events),
            events,
        )
        checks.check(
            "an event below min_severity is left out",
            bool(got) and not any(e.get("message") == "too low to keep" for e in events), events)
        alarms = journalled("opcua_alarm")
        checks.check(
            "an asyncua alarm is journalled as opcua_alarm with its condition",
            any(e.get("message") == "tank level high" and e.get("severity") == "critical"
                and e.get("details", {}).get("condition") == "TankHigh" for e in alarms),
            alarms,
        )

        # The link to `behind` goes silent for 10 s while Real changes 40
        # times; the gateway notices, shows it offline, and when the link is
        # back either takes its subscription back with every queued change,
        # or (asyncua dropped the session) subscribes again and says that
        # changes may be missing.
        await wait_for(lambda: (get("behind") or {}).get("properties", {}).get("real", {}).get("value") is not None, 30)
        link.go_silent()
        changes = [1000.0 + i for i in range(40)]  # over 10 s
        for v in changes:
            await variables["Real"].write_value(ua.Variant(v, ua.VariantType.Double))
            await asyncio.sleep(0.25)
        status = (get("behind") or {}).get("status")
        checks.check("behind: offline while its link is silent", status == "offline", status)
        link.come_back()
        ok = await wait_for(lambda: (get("behind") or {}).get("properties", {}).get("real", {}).get("value") == changes[-1], 60)
        checks.check("behind: the last change arrives once the link is back", bool(ok), get("behind"))
        code, history = http("GET", f"{base}/behind/properties/real/history?limit=10000")
        stored = [p.get("value") for p in (history if code == 200 else [])]
        kept = [v for v in changes if v in stored]
        code, events = http("GET", f"http://127.0.0.1:{api_port}/api/v1/events?device=behind&limit=100")
        missing = [e for e in (events if code == 200 else []) if e.get("kind") == "opcua_data_may_be_missing"]
        print(f"      behind: {len(kept)} of {len(changes)} changes made during the silence stored; {len(missing)} data-may-be-missing event(s)")
        checks.check(
            "behind: every change made during the silence stored, or the gap reported as an event",
            len(kept) == len(changes) or len(missing) > 0,
            (len(kept), missing),
        )
        checks.check(
            "behind: the changes that were stored are in order",
            [v for v in stored if v in changes] == kept,
            stored[-50:],
        )

        # The server goes away and comes back (a new process would do the
        # same): every device recovers without restarting the gateway.
        # (asyncua's stop can wait forever for a connection that came in
        # while it was stopping; its listener is closed by then.)
        try:
            await asyncio.wait_for(server.stop(), 15)
        except asyncio.TimeoutError:
            print("      asyncua's stop did not finish within 15 s; going on")
        offline = await wait_for(lambda: all((get(n) or {}).get("status") == "offline" for n in names), 20)
        checks.check("all devices offline while the server is down", bool(offline), [(get(n) or {}).get("status") for n in names])
        stale = (get("plain") or {}).get("properties", {}).get("long", {}).get("quality")
        checks.check("values turn stale meanwhile", stale == "stale", stale)
        server, ns, variables = await make_server(ua_port, cert, key)
        await server.start()
        await variables["Real"].write_value(ua.Variant(99.5, ua.VariantType.Double))
        for name in names:
            ok = await wait_for(lambda n=name: (get(n) or {}).get("properties", {}).get("real", {}).get("value") == 99.5, 30)
            checks.check(f"{name}: data flows again after the restart", bool(ok), get(name))
    finally:
        stop_ferrite(gateway, checks)
        link.close()
        await server.stop()
    return checks.finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
