//! `ferrite-sim --config FILE` as a user runs it: it serves a TCP device and
//! an RTU device (on a pty, symlinked at the configured port) that a Modbus
//! client can read and write.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::prelude::Slave;

const MODEL: &str = "kind: DeviceModel\nname: m\nproperties:\n  sp: { type: int, access: readwrite, min: 100, max: 200, modbus: { table: holding, address: 3 } }\n  t: { type: float, modbus: { table: input, address: 0, format: f32 } }\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Retries `f` until it succeeds or 10 s pass.
async fn eventually<T, E: std::fmt::Debug, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("gave up: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn serves_tcp_and_rtu_devices_from_a_gateway_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["models", "devices", "rules"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    let port = free_port();
    let tty = root.join("ttyRTU0");
    std::fs::write(
        root.join("ferrite.toml"),
        "[gateway]\nid = \"t\"\ndata_dir = \"data\"\n",
    )
    .expect("config");
    std::fs::write(root.join("models/m.yaml"), MODEL).expect("model");
    std::fs::write(
        root.join("devices/a.yaml"),
        format!("kind: Device\nname: a\nmodel: m\nmodbus-tcp: {{ host: 127.0.0.1, port: {port}, unit: 4 }}\n"),
    )
    .expect("device a");
    std::fs::write(
        root.join("devices/b.yaml"),
        format!(
            "kind: Device\nname: b\nmodel: m\nmodbus-rtu: {{ port: {}, baud: 19200, unit: 9 }}\n",
            tty.display()
        ),
    )
    .expect("device b");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_ferrite-sim"))
        .arg("--config")
        .arg(root.join("ferrite.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferrite-sim starts");

    // TCP: the writable register starts mid-range, a write sticks, and the
    // read-only float moves.
    let mut tcp = eventually(|| {
        tokio_modbus::client::tcp::connect_slave(([127, 0, 0, 1], port).into(), Slave(4))
    })
    .await;
    let regs = tcp
        .read_holding_registers(3, 1)
        .await
        .expect("transport")
        .expect("answer");
    assert_eq!(regs, vec![150], "mid-range of 100..200");
    tcp.write_single_register(3, 177)
        .await
        .expect("transport")
        .expect("answer");
    assert_eq!(
        tcp.read_holding_registers(3, 1)
            .await
            .expect("transport")
            .expect("answer"),
        vec![177]
    );
    let first = tcp
        .read_input_registers(0, 2)
        .await
        .expect("transport")
        .expect("answer");
    let start = Instant::now();
    let moved = loop {
        let now = tcp
            .read_input_registers(0, 2)
            .await
            .expect("transport")
            .expect("answer");
        if now != first || start.elapsed() > Duration::from_secs(5) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(moved, first);

    // RTU, through the symlink at the configured port.
    let port_path = eventually(|| async {
        if tty.exists() {
            Ok(tty.clone())
        } else {
            Err("no symlink yet")
        }
    })
    .await;
    use tokio_serial::SerialPortBuilderExt;
    let serial = tokio_serial::new(port_path.to_string_lossy(), 19200)
        .open_native_async()
        .expect("open the pty");
    let mut rtu = tokio_modbus::client::rtu::attach_slave(serial, Slave(9));
    let regs = tokio::time::timeout(Duration::from_secs(5), rtu.read_holding_registers(3, 1))
        .await
        .expect("an answer in time")
        .expect("transport")
        .expect("answer");
    assert_eq!(regs, vec![150]);

    let _ = sim.kill();
    let _ = sim.wait();
}
