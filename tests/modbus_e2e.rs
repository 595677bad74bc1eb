//! End to end over real sockets: simulated Modbus devices (ferrite-sim's
//! servers, on port 0 or a pty), the gateway, and its REST API over HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Api, Files, put, tcp_device, wait_until};
use ferrite_models::codec::{self, Encoded};
use ferrite_models::model::ModbusBinding;
use ferrite_models::model::Table;
use ferrite_models::{Project, Value};
use ferrite_sim::bank::{Endpoint, Fault};
use ferrite_sim::server::{RtuSim, TcpFraming, TcpSim};
use serde_json::json;
use tokio_modbus::ExceptionCode;

const SECS: Duration = Duration::from_secs(5);

async fn sim() -> TcpSim {
    TcpSim::start("127.0.0.1:0".parse().expect("addr"), Endpoint::new(true))
        .await
        .expect("sim starts")
}

fn binding(project: &Project, device: &str, property: &str) -> ModbusBinding {
    project
        .property(device, property)
        .and_then(|p| p.modbus.clone())
        .expect("binding")
}

const ALL_FORMATS: &str = r#"
kind: DeviceModel
name: all-formats
properties:
  u16:      { type: int,   access: readwrite, modbus: { table: holding, address: 0, format: u16 } }
  i16:      { type: int,   access: readwrite, modbus: { table: holding, address: 1, format: i16 } }
  u32_abcd: { type: int,   access: readwrite, modbus: { table: holding, address: 2, format: u32 } }
  i32_cdab: { type: int,   access: readwrite, modbus: { table: holding, address: 4, format: i32, order: CDAB } }
  u64_dcba: { type: int,   access: readwrite, modbus: { table: holding, address: 6, format: u64, order: DCBA } }
  i64_badc: { type: int,   access: readwrite, modbus: { table: holding, address: 10, format: i64, order: BADC } }
  f32_abcd: { type: float, access: readwrite, modbus: { table: holding, address: 14, format: f32 } }
  f32_cdab: { type: float, access: readwrite, modbus: { table: holding, address: 16, format: f32, order: CDAB } }
  f64_dcba: { type: float, access: readwrite, modbus: { table: holding, address: 18, format: f64, order: DCBA } }
  f64_badc: { type: float, access: readwrite, modbus: { table: holding, address: 22, format: f64, order: BADC } }
  text:     { type: string, access: readwrite, modbus: { table: holding, address: 26, format: string(10) } }
  flag:     { type: bool,  access: readwrite, modbus: { table: holding, address: 40, bit: 3 } }
  coil:     { type: bool,  access: readwrite, modbus: { table: coil, address: 0 } }
  scaled:   { type: float, access: readwrite, min: -40, max: 200, modbus: { table: holding, address: 41, format: i16, scale: 0.1, offset: -40 } }
"#;

#[tokio::test]
async fn every_format_and_order_round_trips_through_rest_and_the_wire() {
    let sim = sim().await;
    let files = Files::new();
    files.write("models/all.yaml", ALL_FORMATS).write(
        "devices/d.yaml",
        &tcp_device("d", "all-formats", sim.addr.port(), 7, "200ms"),
    );
    let project = files.project();
    sim.endpoint.add_unit(7);
    // Bit 0 of the flag register is someone else's: a bit write must keep it.
    sim.endpoint
        .units()
        .get_mut(&7)
        .expect("unit")
        .bank
        .holding
        .insert(40, 0b1);
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(
        api.wait_status("d", "online", SECS).await,
        "{}",
        api.device("d").await
    );

    let cases = [
        ("u16", json!(65535)),
        ("i16", json!(-12345)),
        ("u32_abcd", json!(4_000_000_000u64)),
        ("i32_cdab", json!(-70_000)),
        ("u64_dcba", json!(0x0102_0304_0506_0708u64)),
        ("i64_badc", json!(-1_234_567_890_123i64)),
        ("f32_abcd", json!(-1.5)),
        ("f32_cdab", json!(55.5)),
        ("f64_dcba", json!(12_345.678_9)),
        ("f64_badc", json!(-0.001)),
        ("text", json!("HELLO")),
        ("flag", json!(true)),
        ("coil", json!(true)),
        ("scaled", json!(25.3)),
    ];
    for (property, value) in cases {
        let (status, body) = api.write("d", property, value.clone()).await;
        assert_eq!(status, 200, "{property}: {body}");
        assert_eq!(
            body["value"], value,
            "{property}: the reading after the write"
        );
        assert_eq!(body["quality"], "good");
        // The simulator holds exactly what the codec says the wire carries.
        let b = binding(&project, "d", property);
        let typed: Value = serde_json::from_value(value).expect("value");
        let units = sim.endpoint.units();
        let bank = &units[&7].bank;
        match codec::encode(&b, &typed).expect("encodes") {
            Encoded::Registers(regs) => {
                assert_eq!(
                    bank.registers(b.table, b.address, regs.len() as u16),
                    regs,
                    "{property}"
                );
            }
            Encoded::Coil(on) => assert_eq!(bank.bits(b.table, b.address, 1), vec![on]),
            Encoded::Bit { bit, on } => {
                let reg = bank.registers(b.table, b.address, 1)[0];
                assert_eq!(reg >> bit & 1 == 1, on);
                assert_eq!(reg & 1, 1, "the other bits of the register are kept");
            }
        }
    }
    // Independent of the codec: known wire images.
    let holding = |address: u16, count: u16| {
        let units = sim.endpoint.units();
        units[&7]
            .bank
            .registers(ferrite_models::model::Table::Holding, address, count)
    };
    assert_eq!(holding(16, 2), vec![0x0000, 0x425E], "55.5f32, CDAB");
    assert_eq!(
        holding(6, 4),
        vec![0x0807, 0x0605, 0x0403, 0x0201],
        "u64 DCBA is little-endian"
    );
    assert_eq!(holding(41, 1), vec![653], "(25.3 + 40) / 0.1");
    assert_eq!(holding(26, 2), vec![0x4845, 0x4C4C], "HE LL");
    // Function codes: 06 for one register, 16 for more, 05 for a coil.
    let writes: Vec<(u8, u16)> = sim
        .endpoint
        .seen()
        .iter()
        .filter(|s| matches!(s.function, 5 | 6 | 15 | 16))
        .map(|s| (s.function, s.address))
        .collect();
    assert!(
        writes.contains(&(6, 0)) && writes.contains(&(16, 16)) && writes.contains(&(5, 0)),
        "{writes:?}"
    );
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn neighbouring_registers_are_read_in_one_request() {
    let sim = sim().await;
    let files = Files::new();
    let mut model = String::from("kind: DeviceModel\nname: m\nproperties:\n");
    for i in 0..10 {
        model.push_str(&format!(
            "  r{i}: {{ type: int, modbus: {{ table: holding, address: {i} }} }}\n"
        ));
    }
    model.push_str(
        "  far: { type: float, modbus: { table: holding, address: 100, format: f32 } }\n",
    );
    model.push_str("  inp: { type: int, modbus: { table: input, address: 0 } }\n");
    model.push_str("  c0: { type: bool, modbus: { table: coil, address: 0 } }\n");
    model.push_str("  c1: { type: bool, modbus: { table: coil, address: 1 } }\n");
    files.write("models/m.yaml", &model).write(
        "devices/d.yaml",
        &tcp_device("d", "m", sim.addr.port(), 1, "100ms"),
    );
    sim.endpoint.add_unit(1);
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", SECS).await);
    sim.endpoint.clear_seen();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = sim.endpoint.seen();
    let mut blocks: Vec<(u8, u16, u16)> = seen
        .iter()
        .map(|s| (s.function, s.address, s.count))
        .collect();
    let total = blocks.len();
    blocks.sort_unstable();
    blocks.dedup();
    // 14 properties, 4 requests per poll: 10 registers, 2 registers, 1 input, 2 coils.
    assert_eq!(blocks, vec![(1, 0, 2), (3, 0, 10), (3, 100, 2), (4, 0, 1)]);
    let cycles = total / 4;
    assert!(
        (5..=15).contains(&cycles) && total % 4 <= 3,
        "{total} requests in one second at 100 ms"
    );
    assert!(gw.stop().await);
    sim.stop().await;
}

/// Devices `a` (unit 1) and `b` (unit 2) on one pty bus served from
/// `endpoint`, each with one holding register `v`, polled every `poll`.
fn two_devices_on_a_pty_bus(endpoint: &Arc<Endpoint>, poll: &str, baud: u32) -> (RtuSim, Files) {
    let rtu = RtuSim::start(endpoint.clone(), None).expect("pty pair");
    let files = Files::new();
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  v: { type: int, modbus: { table: holding, address: 0 } }\n",
    );
    for (name, unit) in [("a", 1), ("b", 2)] {
        let device = format!(
            "kind: Device\nname: {name}\nmodel: t\npoll: {poll}\ntimeout: 500ms\nmodbus-rtu: {{ port: {}, baud: {baud}, unit: {unit} }}\n",
            rtu.path.display()
        );
        files.write(&format!("devices/{name}.yaml"), &device);
    }
    (rtu, files)
}

#[tokio::test]
async fn two_devices_share_one_rtu_bus_one_request_at_a_time() {
    let endpoint = Endpoint::new(false);
    endpoint.set_delay(Duration::from_millis(15));
    let (rtu, files) = two_devices_on_a_pty_bus(&endpoint, "50ms", 19200);
    let project = files.project();
    put(&endpoint, 1, &binding(&project, "a", "v"), &Value::Int(111));
    put(&endpoint, 2, &binding(&project, "b", "v"), &Value::Int(222));
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(
        api.wait_status("a", "online", SECS).await,
        "{}",
        api.device("a").await
    );
    assert!(
        api.wait_status("b", "online", SECS).await,
        "{}",
        api.device("b").await
    );
    endpoint.clear_seen();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(api.device("a").await["properties"]["v"]["value"], 111);
    assert_eq!(api.device("b").await["properties"]["v"]["value"], 222);
    let seen = endpoint.seen();
    let units: std::collections::HashSet<u8> = seen.iter().map(|s| s.unit).collect();
    assert_eq!(units, [1, 2].into());
    // Every answer takes 15 ms; had the gateway sent a request before the
    // previous answer, the bus would have carried two frames at once and the
    // slave, which serves one at a time, would have seen garbage and stopped
    // answering. Both devices stay online with their own values, and the
    // request count stays within what one-at-a-time allows.
    assert!(seen.len() >= 20, "{} requests", seen.len());
    assert!(
        seen.len() <= 1000 / 15 + 1,
        "{} requests in 1 s cannot be one at a time",
        seen.len()
    );
    assert_eq!(api.status("a").await, "online");
    assert!(gw.stop().await);
    rtu.stop().await;
}

#[tokio::test]
async fn faults_show_and_recover() {
    let sim = sim().await;
    let files = Files::new();
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  v: { type: int, access: readwrite, modbus: { table: holding, address: 0 } }\n",
        )
        // Demoted after three timeouts, the silent device is probed every
        // second (not every 10 s), so its recovery shows within the wait.
        .write(
            "devices/d.yaml",
            &tcp_device("d", "t", sim.addr.port(), 1, "100ms")
                .replace("unit: 1 }", "unit: 1, demote: 1s }"),
        );
    let project = files.project();
    put(
        &sim.endpoint,
        1,
        &binding(&project, "d", "v"),
        &Value::Int(5),
    );
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", SECS).await);

    // Silence: offline, the value goes stale, writes time out (504).
    sim.endpoint.set_fault(1, Fault::Silent);
    assert!(api.wait_status("d", "offline", SECS).await);
    let d = api.device("d").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
        "{d}"
    );
    assert_eq!(d["properties"]["v"]["quality"], "stale");
    assert_eq!(
        d["properties"]["v"]["value"], 5,
        "the last good value stays"
    );
    let (status, body) = api.write("d", "v", json!(6)).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "device_timeout");
    sim.endpoint.set_fault(1, Fault::None);
    assert!(api.wait_status("d", "online", SECS).await);

    // An exception, reported by name; writes answer 502.
    sim.endpoint
        .set_fault(1, Fault::Exception(ExceptionCode::ServerDeviceFailure));
    assert!(api.wait_status("d", "error", SECS).await);
    let d = api.device("d").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("ServerDeviceFailure"),
        "{d}"
    );
    assert_eq!(d["properties"]["v"]["quality"], "bad");
    let (status, body) = api.write("d", "v", json!(6)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("device_refused")),
        "{body}"
    );
    sim.endpoint.set_fault(1, Fault::None);
    assert!(api.wait_status("d", "online", SECS).await);

    // The server goes away: offline with the reason, writes answer 503, and
    // the device comes back when the server does.
    let addr = sim.addr;
    let endpoint = sim.endpoint.clone();
    sim.stop().await;
    assert!(api.wait_status("d", "offline", SECS).await);
    let (status, body) = api.write("d", "v", json!(6)).await;
    assert!(status == 503 || status == 504, "{status} {body}");
    let sim = TcpSim::start(addr, endpoint).await.expect("restart");
    assert!(
        api.wait_status("d", "online", Duration::from_secs(10))
            .await,
        "{}",
        api.device("d").await
    );
    let (status, body) = api.write("d", "v", json!(6)).await;
    assert_eq!(status, 200, "{body}");
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn a_dead_device_does_not_slow_the_others() {
    let healthy = sim().await;
    let dead = sim().await;
    let files = Files::new();
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  v: { type: int, modbus: { table: holding, address: 0 } }\n",
        )
        .write("devices/ok.yaml", &tcp_device("ok", "t", healthy.addr.port(), 1, "100ms"))
        .write("devices/dead.yaml", &tcp_device("dead", "t", dead.addr.port(), 1, "100ms"));
    healthy.endpoint.add_unit(1);
    dead.endpoint.set_fault(1, Fault::Silent);
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("ok", "online", SECS).await);
    assert!(api.wait_status("dead", "offline", SECS).await);
    healthy.endpoint.clear_seen();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let polls = healthy.endpoint.requests();
    assert!(
        (7..=13).contains(&polls),
        "{polls} polls in 1 s at 100 ms while a neighbour hangs"
    );
    assert!(gw.stop().await);
    healthy.stop().await;
    dead.stop().await;
}

/// Six units behind one TCP gateway, each holding its own number times 100
/// in holding register 0; the sixth has `fault`. Every device polls at
/// 100 ms with a 300 ms timeout.
async fn six_units_one_faulty(fault: Fault, demote: &str) -> (TcpSim, Files) {
    let sim = sim().await;
    let files = Files::new();
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  v: { type: int, modbus: { table: holding, address: 0 } }\n",
    );
    for unit in 1..=6u8 {
        files.write(
            &format!("devices/u{unit}.yaml"),
            &format!(
                "kind: Device\nname: u{unit}\nmodel: t\npoll: 100ms\ntimeout: 300ms\n\
                 modbus-tcp: {{ host: 127.0.0.1, port: {}, unit: {unit}, demote: {demote} }}\n",
                sim.addr.port()
            ),
        );
    }
    let project = files.project();
    for unit in 1..=6u8 {
        put(
            &sim.endpoint,
            unit,
            &binding(&project, &format!("u{unit}"), "v"),
            &Value::Int(i64::from(unit) * 100),
        );
    }
    sim.endpoint.set_fault(6, fault);
    (sim, files)
}

/// Requests each unit got in what `endpoint` has seen.
fn requests_by_unit(endpoint: &Endpoint) -> std::collections::HashMap<u8, usize> {
    let mut by_unit = std::collections::HashMap::new();
    for seen in endpoint.seen() {
        *by_unit.entry(seen.unit).or_default() += 1;
    }
    by_unit
}

#[tokio::test]
async fn a_unit_that_never_answers_costs_its_neighbours_neither_the_connection_nor_their_polls() {
    let (sim, files) = six_units_one_faulty(Fault::Silent, "10s").await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    for unit in 1..=5 {
        assert!(api.wait_status(&format!("u{unit}"), "online", SECS).await);
    }
    assert!(api.wait_status("u6", "offline", SECS).await);
    // Three timeouts in a row demote u6: probed once per 10 s from then on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.endpoint.clear_seen();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_unit = requests_by_unit(&sim.endpoint);
    for unit in 1..=5u8 {
        let polls = by_unit.get(&unit).copied().unwrap_or(0);
        assert!(
            polls >= 17,
            "unit {unit}: {polls} polls in 2 s at 100 ms ({by_unit:?})"
        );
        let d = api.device(&format!("u{unit}")).await;
        assert_eq!(d["properties"]["v"]["value"], i64::from(unit) * 100, "{d}");
    }
    assert!(
        by_unit.get(&6).copied().unwrap_or(0) <= 1,
        "a demoted unit is probed once per 10 s: {by_unit:?}"
    );
    assert_eq!(
        sim.endpoint.connections(),
        1,
        "the silent unit's timeouts must not cost the link its connection"
    );
    let d = api.device("u6").await;
    assert!(
        d["error"]
            .as_str()
            .unwrap_or_default()
            .contains("did not answer"),
        "{d}"
    );
    // It answers again: found at the next probe (demotion lasts 10 s).
    sim.endpoint.set_fault(6, Fault::None);
    assert!(
        api.wait_status("u6", "online", Duration::from_secs(15))
            .await,
        "{}",
        api.device("u6").await
    );
    assert_eq!(api.device("u6").await["properties"]["v"]["value"], 600);
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn late_answers_are_dropped_and_never_read_as_a_neighbours_value() {
    // Unit 6 answers after 450 ms, past its 300 ms timeout, and the simulated
    // gateway serves one request at a time (as TCP-to-RTU gateways do), so
    // its late answer arrives while the link waits for a neighbour's. Not
    // demoted: it keeps coming back every poll.
    let (sim, files) = six_units_one_faulty(Fault::Late(Duration::from_millis(450)), "0s").await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    for unit in 1..=5 {
        assert!(api.wait_status(&format!("u{unit}"), "online", SECS).await);
    }
    assert!(api.wait_status("u6", "offline", SECS).await);
    sim.endpoint.clear_seen();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        for unit in 1..=5u8 {
            let d = api.device(&format!("u{unit}")).await;
            assert_eq!(d["status"], "online", "{d}");
            assert_eq!(d["properties"]["v"]["value"], i64::from(unit) * 100, "{d}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let six = requests_by_unit(&sim.endpoint)
        .get(&6)
        .copied()
        .unwrap_or(0);
    assert!(
        six >= 3,
        "unit 6 kept being asked ({six} requests), so late answers kept coming"
    );
    assert_eq!(
        sim.endpoint.connections(),
        1,
        "late answers must be dropped on the connection, not end it"
    );
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn rtu_framing_over_tcp_reads_writes_and_keeps_its_connection() {
    let sim = TcpSim::start_framed(
        "127.0.0.1:0".parse().expect("addr"),
        Endpoint::new(false),
        TcpFraming::Rtu,
    )
    .await
    .expect("sim");
    let files = Files::new();
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  v: { type: int, access: readwrite, modbus: { table: holding, address: 3, format: i32 } }\n",
    );
    for unit in [4u8, 5, 6] {
        files.write(
            &format!("devices/s{unit}.yaml"),
            &format!(
                "kind: Device\nname: s{unit}\nmodel: t\npoll: 100ms\ntimeout: 300ms\n\
                 modbus-rtu-over-tcp: {{ host: 127.0.0.1, port: {}, unit: {unit} }}\n",
                sim.addr.port()
            ),
        );
    }
    let project = files.project();
    put(
        &sim.endpoint,
        4,
        &binding(&project, "s4", "v"),
        &Value::Int(-70_000),
    );
    put(
        &sim.endpoint,
        5,
        &binding(&project, "s5", "v"),
        &Value::Int(123_456),
    );
    // Unit 6 is not on the bus: silence, as on a serial line.
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(
        api.wait_status("s4", "online", SECS).await,
        "{}",
        api.device("s4").await
    );
    assert!(api.wait_status("s5", "online", SECS).await);
    assert!(api.wait_status("s6", "offline", SECS).await);
    assert_eq!(api.device("s4").await["properties"]["v"]["value"], -70_000);
    assert_eq!(api.device("s5").await["properties"]["v"]["value"], 123_456);
    let (status, body) = api.write("s5", "v", json!(-1)).await;
    assert_eq!(status, 200, "{body}");
    let words = sim.endpoint.units()[&5]
        .bank
        .registers(Table::Holding, 3, 2);
    assert_eq!(
        words,
        [0xffff, 0xffff],
        "the write landed in the simulator's bank"
    );
    assert_eq!(api.device("s4").await["protocol"], "modbus-rtu-over-tcp");
    assert_eq!(sim.endpoint.connections(), 1);
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn an_rtu_bus_keeps_three_and_a_half_characters_of_silence_between_frames() {
    // At 1200 baud 3.5 characters of 11 bits last 32 ms; the simulator
    // answers at once and two devices poll every 10 ms, so without the gap
    // requests would follow answers within a millisecond or two.
    let endpoint = Endpoint::new(false);
    endpoint.add_unit(1);
    endpoint.add_unit(2);
    let (rtu, files) = two_devices_on_a_pty_bus(&endpoint, "10ms", 1200);
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("a", "online", SECS).await);
    assert!(api.wait_status("b", "online", SECS).await);
    endpoint.clear_seen();
    // Ten requests (about a second at 1200 baud; longer on a loaded machine,
    // which only spaces them further).
    let ten = wait_until(Duration::from_secs(10), || async {
        endpoint.seen().len() >= 10
    })
    .await;
    let seen = endpoint.seen();
    assert!(ten, "{} requests in 10 s", seen.len());
    let gap = ferrite_drivers::modbus::link::rtu_gap(1200);
    let shortest = seen
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .min()
        .expect("two requests");
    assert!(
        shortest >= gap - Duration::from_millis(2),
        "requests {shortest:?} apart on a 1200 baud bus, where {gap:?} of silence is due"
    );
    assert!(gw.stop().await);
    rtu.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let sim = sim().await;
    let files = Files::new();
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  ro: { type: int, modbus: { table: input, address: 0 } }\n  sp: { type: float, access: readwrite, min: 20, max: 90, modbus: { table: holding, address: 0, format: f32 } }\n",
        )
        .write("devices/d.yaml", &tcp_device("d", "t", sim.addr.port(), 1, "100ms"));
    sim.endpoint.add_unit(1);
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", SECS).await);
    let before = sim
        .endpoint
        .seen()
        .iter()
        .filter(|s| s.function == 16)
        .count();

    let cases: Vec<(u16, &str, (u16, serde_json::Value))> = vec![
        (
            404,
            "unknown_device",
            api.write("nope", "sp", json!(30)).await,
        ),
        (
            404,
            "unknown_property",
            api.write("d", "nope", json!(30)).await,
        ),
        (403, "read_only", api.write("d", "ro", json!(1)).await),
        (400, "out_of_range", api.write("d", "sp", json!(95)).await),
        (400, "wrong_type", api.write("d", "sp", json!("hot")).await),
        (
            400,
            "bad_request",
            api.put_raw("/api/v1/devices/d/properties/sp", "{\"value\":".into())
                .await,
        ),
        (
            400,
            "bad_request",
            api.put_raw("/api/v1/devices/d/properties/sp", "{\"valu\": 30}".into())
                .await,
        ),
        (
            400,
            "bad_request",
            api.put_raw("/api/v1/devices/d/properties/sp", "[30]".into())
                .await,
        ),
        (404, "unknown_device", api.get("/api/v1/devices/nope").await),
        (
            404,
            "unknown_property",
            api.get("/api/v1/devices/d/properties/nope").await,
        ),
        (
            400,
            "bad_request",
            api.get("/api/v1/devices/d/properties/sp/history?since=yesterday")
                .await,
        ),
        (
            400,
            "bad_request",
            api.get("/api/v1/devices/d/properties/sp/history?limit=0")
                .await,
        ),
        (404, "not_found", api.get("/api/v2/everything").await),
    ];
    for (i, (status, code, (got, body))) in cases.into_iter().enumerate() {
        assert_eq!(got, status, "case {i}: {body}");
        assert_eq!(body["error"]["code"], code, "case {i}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
    }
    let (status, body) = api
        .put_raw(
            "/api/v1/devices/d/properties/sp",
            format!("{{\"value\": \"{}\"}}", "x".repeat(100_000)),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "an oversized body is refused"
    );
    let after = sim
        .endpoint
        .seen()
        .iter()
        .filter(|s| s.function == 16)
        .count();
    assert_eq!(before, after, "no refused write reached the device");
    // And a good one does, answered after the device confirmed it.
    let (status, body) = api.write("d", "sp", json!(42.5)).await;
    assert_eq!((status, body["value"].as_f64()), (200, Some(42.5)));
    let history = api.get("/api/v1/devices/d/properties/sp/history").await.1;
    assert_eq!(
        history
            .as_array()
            .and_then(|h| h.last())
            .map(|e| e["value"].clone()),
        Some(json!(42.5))
    );
    assert!(gw.stop().await);
    sim.stop().await;
}

#[tokio::test]
async fn history_keeps_changes_past_the_deadband_only() {
    let sim = sim().await;
    let files = Files::new();
    files
        .write(
            "models/t.yaml",
            "kind: DeviceModel\nname: t\nproperties:\n  t: { type: float, deadband: 1.0, modbus: { table: holding, address: 0, format: f32 } }\n",
        )
        .write("devices/d.yaml", &tcp_device("d", "t", sim.addr.port(), 1, "50ms"));
    let project = files.project();
    let b = binding(&project, "d", "t");
    put(&sim.endpoint, 1, &b, &Value::Float(20.0));
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", SECS).await);
    let endpoint: Arc<Endpoint> = sim.endpoint.clone();
    for v in [20.4, 20.8, 21.0, 21.5, 25.0, 24.5] {
        put(&endpoint, 1, &b, &Value::Float(v));
        let shown = wait_until(SECS, || async {
            api.device("d").await["properties"]["t"]["value"] == json!(v)
        })
        .await;
        // Within the deadband, the shown value stays at the last stored one.
        if !shown {
            assert!(
                [20.4, 20.8, 21.5, 24.5].contains(&v),
                "{v} should have been shown"
            );
        }
    }
    let history = api.get("/api/v1/devices/d/properties/t/history").await.1;
    let values: Vec<f64> = history
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["value"].as_f64())
        .collect();
    assert_eq!(values, vec![20.0, 21.0, 25.0]);

    // Which end `limit` keeps: without `since` the newest, in time order.
    let values_of = |query: &str| {
        let api = &api;
        let url = format!("/api/v1/devices/d/properties/t/history{query}");
        async move {
            let (status, body) = api.get(&url).await;
            assert_eq!(status, 200, "{url}: {body}");
            body.as_array()
                .expect("array")
                .iter()
                .filter_map(|e| e["value"].as_f64())
                .collect::<Vec<f64>>()
        }
    };
    assert_eq!(values_of("?limit=2").await, vec![21.0, 25.0]);
    assert_eq!(values_of("?limit=2&order=oldest").await, vec![20.0, 21.0]);
    assert_eq!(values_of("?since=&until=&limit=2").await, vec![21.0, 25.0]);
    // A `since` with an offset: the first entry's time, spelt at UTC+02:00.
    let first = history[0]["ts"].as_str().expect("ts");
    let at = ferrite_gateway::time::parse_rfc3339(first).expect("RFC 3339");
    let shifted = std::time::UNIX_EPOCH
        + std::time::Duration::from_micros(at as u64)
        + std::time::Duration::from_secs(2 * 3600);
    let local = humantime::format_rfc3339_millis(shifted)
        .to_string()
        .replace('Z', "+02:00");
    let since = local.replace('+', "%2B");
    assert_eq!(
        values_of(&format!("?since={since}&limit=1")).await,
        vec![20.0],
        "since={local}"
    );
    assert_eq!(
        values_of(&format!("?since={since}&limit=1&order=newest")).await,
        vec![25.0]
    );
    let (status, body) = api
        .get("/api/v1/devices/d/properties/t/history?order=sideways")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(gw.stop().await);
    sim.stop().await;
}

/// How a hostile device answers a read.
#[derive(Clone, Copy, Debug)]
enum Junk {
    /// Bytes that are not Modbus at all.
    Noise,
    /// A well-formed answer to another transaction.
    WrongTransaction,
    /// An answer with another function code.
    WrongFunction,
    /// Fewer registers than asked for.
    Short,
    /// A byte count that disagrees with the data.
    BadCount,
    /// A header promising 65 535 bytes that never come.
    Endless,
}

/// A TCP "device" that answers every request with `junk`.
async fn junk_device(junk: Junk) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut header = [0u8; 7];
                while stream.read_exact(&mut header).await.is_ok() {
                    let len =
                        usize::from(u16::from_be_bytes([header[4], header[5]])).saturating_sub(1);
                    let mut pdu = vec![0u8; len];
                    if stream.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let (tid, unit) = ([header[0], header[1]], header[6]);
                    let mbap = |tid: [u8; 2], body: &[u8]| {
                        let mut out = vec![tid[0], tid[1], 0, 0];
                        out.extend_from_slice(&((body.len() + 1) as u16).to_be_bytes());
                        out.push(unit);
                        out.extend_from_slice(body);
                        out
                    };
                    let reply = match junk {
                        Junk::Noise => (0..40u8)
                            .map(|i| i.wrapping_mul(97).wrapping_add(13))
                            .collect(),
                        Junk::WrongTransaction => {
                            mbap([tid[0], tid[1].wrapping_add(1)], &[3, 4, 0, 1, 0, 2])
                        }
                        Junk::WrongFunction => mbap(tid, &[4, 4, 0, 1, 0, 2]),
                        Junk::Short => mbap(tid, &[3, 2, 0, 1]),
                        Junk::BadCount => mbap(tid, &[3, 9, 0, 1]),
                        Junk::Endless => vec![tid[0], tid[1], 0, 0, 0xff, 0xff, unit, 3],
                    };
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn malformed_frames_are_errors_not_crashes() {
    let healthy = sim().await;
    healthy.endpoint.add_unit(1);
    let files = Files::new();
    files.write(
        "models/t.yaml",
        "kind: DeviceModel\nname: t\nproperties:\n  v: { type: float, modbus: { table: holding, address: 0, format: f32 } }\n",
    );
    files.write(
        "devices/ok.yaml",
        &tcp_device("ok", "t", healthy.addr.port(), 1, "100ms"),
    );
    let kinds = [
        Junk::Noise,
        Junk::WrongTransaction,
        Junk::WrongFunction,
        Junk::Short,
        Junk::BadCount,
        Junk::Endless,
    ];
    for (i, junk) in kinds.iter().enumerate() {
        let addr = junk_device(*junk).await;
        files.write(
            &format!("devices/j{i}.yaml"),
            &tcp_device(&format!("j{i}"), "t", addr.port(), 1, "100ms"),
        );
    }
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("ok", "online", SECS).await);
    for (i, junk) in kinds.iter().enumerate() {
        let id = format!("j{i}");
        let failed = wait_until(SECS, || async {
            let d = api.device(&id).await;
            d["status"] != "online" && d["error"].as_str().is_some_and(|e| e != "not polled yet")
        })
        .await;
        let d = api.device(&id).await;
        println!("{junk:?}: {} — {}", d["status"], d["error"]);
        assert!(failed, "{junk:?}: {d}");
        assert_ne!(d["properties"]["v"]["quality"], "good", "{junk:?}: {d}");
    }
    // Through all of it, the healthy device kept polling and the API kept serving.
    healthy.endpoint.clear_seen();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        healthy.endpoint.requests() >= 4,
        "{}",
        healthy.endpoint.requests()
    );
    assert_eq!(api.status("ok").await, "online");
    assert!(gw.stop().await);
    healthy.stop().await;
}

#[tokio::test]
async fn history_older_than_its_age_is_dropped() {
    let files = Files::new();
    files.write(
        "ferrite.toml",
        "[gateway]\nid = \"test\"\ndata_dir = \"data\"\n[store]\nhistory_age = \"1s\"\n",
    );
    let (sim, counter) = common::counting_sim(&files).await;
    let gw = files.start().await;
    let api = Api::new(gw.addr);
    assert!(api.wait_status("d", "online", SECS).await);
    // After a few seconds of a change every poll, only about the last second
    // (plus one trim period) is kept, however long it has run.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let oldest_kept = || async {
        let history = api.get("/api/v1/devices/d/properties/n/history").await.1;
        let first = history
            .as_array()
            .and_then(|h| h.first())
            .cloned()
            .unwrap_or_default();
        first["ts"]
            .as_str()
            .and_then(ferrite_gateway::time::parse_rfc3339)
    };
    let trimmed = wait_until(SECS, || async {
        oldest_kept()
            .await
            .is_some_and(|ts| ferrite_gateway::time::now() - ts < 1_800_000)
    })
    .await;
    assert!(
        trimmed,
        "oldest entry is {:?} µs old",
        oldest_kept()
            .await
            .map(|ts| ferrite_gateway::time::now() - ts)
    );
    assert!(gw.stop().await);
    counter.abort();
    sim.stop().await;
}
