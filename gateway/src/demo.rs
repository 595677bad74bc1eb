//! `ferrite demo`: the gateway and its simulated devices in one process.
//!
//! The demo's files are compiled into the binary and written to a temporary
//! folder, so the demo runs from any directory. The simulator serves the
//! Modbus devices on 127.0.0.1:5020 and the OPC UA device on
//! opc.tcp://127.0.0.1:4840/ferrite; the MQTT devices (one JSON, one
//! Sparkplug B) publish to the gateway's embedded broker on 127.0.0.1:1883.
//! The control plane runs in the same process (REST on 127.0.0.1:8090, its
//! broker on 127.0.0.1:1884), and the gateway syncs to it as `demo`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ferrite_sim::sim::Simulator;

use crate::runtime::{Gateway, Options};

/// The demo's files, relative to its folder.
const FILES: &[(&str, &str)] = &[
    (
        "ferrite.toml",
        include_str!("../../examples/demo/ferrite.toml"),
    ),
    ("sim.toml", include_str!("../../examples/demo/sim.toml")),
    (
        "models/boiler.yaml",
        include_str!("../../examples/demo/models/boiler.yaml"),
    ),
    (
        "models/power-meter.yaml",
        include_str!("../../examples/demo/models/power-meter.yaml"),
    ),
    (
        "models/process-line.yaml",
        include_str!("../../examples/demo/models/process-line.yaml"),
    ),
    (
        "models/env-sensor.yaml",
        include_str!("../../examples/demo/models/env-sensor.yaml"),
    ),
    (
        "models/tank.yaml",
        include_str!("../../examples/demo/models/tank.yaml"),
    ),
    (
        "devices/tank-1.yaml",
        include_str!("../../examples/demo/devices/tank-1.yaml"),
    ),
    (
        "devices/boiler-1.yaml",
        include_str!("../../examples/demo/devices/boiler-1.yaml"),
    ),
    (
        "devices/meter-1.yaml",
        include_str!("../../examples/demo/devices/meter-1.yaml"),
    ),
    (
        "devices/line-1.yaml",
        include_str!("../../examples/demo/devices/line-1.yaml"),
    ),
    (
        "devices/env-1.yaml",
        include_str!("../../examples/demo/devices/env-1.yaml"),
    ),
    (
        "rules/boiler-overheat.yaml",
        include_str!("../../examples/demo/rules/boiler-overheat.yaml"),
    ),
    (
        "rules/meter-overload.yaml",
        include_str!("../../examples/demo/rules/meter-overload.yaml"),
    ),
    (
        "rules/tank-high.yaml",
        include_str!("../../examples/demo/rules/tank-high.yaml"),
    ),
];

/// Writes the demo's files into `dir`.
pub fn write_files(dir: &Path) -> std::io::Result<PathBuf> {
    for (name, text) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(dir.join("ferrite.toml"))
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(
    listen: SocketAddr,
    data_dir: Option<PathBuf>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::Builder::new().prefix("ferrite-demo-").tempdir()?;
    let config = write_files(scratch.path())?;
    // The gateway's identity on the link, as an operator makes it with
    // `ferrite-cloud gateway add demo`: a secret for the control plane's
    // `[[gateways]]` and the gateway's `[cloud] password_file`.
    let cloud_config = scratch.path().join("ferrite-cloud.toml");
    let enrolled =
        ferrite_sync::cloud::enrol::add(&cloud_config, &scratch.path().join("gateways"), "demo")
            .context("cannot enrol the demo gateway")?;
    let mut gateway_toml = std::fs::read_to_string(&config)?;
    gateway_toml.push_str("password_file = \"gateways/demo.secret\"\n");
    std::fs::write(&config, gateway_toml)?;
    let (report, snapshot) = crate::reconcile::load(&config);
    anyhow::ensure!(
        report.is_ok(),
        "the built-in demo does not check: {:?}",
        report.diagnostics
    );
    let mut sim_config = ferrite_sim::sim::load_config(&scratch.path().join("sim.toml"))?;
    sim_config.opcua.pki = Some(scratch.path().join("sim-pki"));
    let sim = Simulator::start(&report.project, &sim_config, false)
        .await
        .context("cannot start the simulated devices (are ports 5020 and 4840 free?)")?;
    // Port 1883 is the gateway's (its embedded broker); a taken port fails
    // the gateway's start with that address in the message.
    let data_dir = data_dir.unwrap_or_else(|| scratch.path().join("data"));
    let options = Options {
        listen: Some(listen),
        data_dir: Some(data_dir.clone()),
        snapshot,
    };
    // The control plane first, so that the gateway's uplink finds it.
    let mut cloud_settings = ferrite_sync::cloud::CloudConfig::load(&cloud_config)?;
    cloud_settings.data_dir = data_dir.clone();
    let cloud = ferrite_sync::cloud::start(cloud_settings)
        .await
        .context("cannot start the in-process control plane (are ports 8090 and 1884 free?)")?;
    let gateway = Gateway::start(report.project, options).await?;
    let base = format!("http://{}", gateway.addr);
    let cloud_base = format!("http://{}/api/v1", cloud.rest);
    writeln!(
        out,
        "\nFerrite demo is running. Data: {}\n\n  \
         dashboard    {base}/\n  \
         API docs     {base}/api/docs/\n  \
         devices      {base}/api/v1/devices\n  \
         one device   {base}/api/v1/devices/boiler-1\n  \
         history      {base}/api/v1/devices/boiler-1/properties/temperature/history\n  \
         rules        {base}/api/v1/rules\n  \
         events       {base}/api/v1/events\n  \
         audit log    {base}/api/v1/audit\n  \
         health       {base}/healthz and {base}/readyz\n  \
         metrics      {base}/metrics\n  \
         sync state   {base}/api/v1/sync\n  \
         live values  curl -N {base}/api/v1/stream\n\n\
         The control plane (ferrite-cloud, in-process; the gateway syncs to it over MQTT {broker},\n\
         logged in as `demo`, enrolled like `ferrite-cloud gateway add demo`; secret in {secret}):\n  \
         gateways     {cloud_base}/gateways\n  \
         twin         {cloud_base}/gateways/demo/devices/boiler-1\n  \
         synced       {cloud_base}/gateways/demo/devices/boiler-1/properties/temperature/history\n  \
         compression  {cloud_base}/stats\n\n\
         Set the boiler's setpoint from the cloud (desired state; the gateway checks it, writes it, reports back):\n  \
         curl -X PUT -H 'content-type: application/json' -d '{{\"setpoint\": 45.0}}' {cloud_base}/gateways/demo/devices/boiler-1/desired\n\n\
         Try a write (the setpoint accepts 20..90; while boiler-overheat is active it\n\
         holds the setpoint and refuses this with 409):\n  \
         curl -X PUT -H 'content-type: application/json' -d '{{\"value\": 55.5}}' {base}/api/v1/devices/boiler-1/properties/setpoint\n\n\
         Call a method (an OPC UA method of line-1, its inputs checked against the model):\n  \
         curl -X POST -H 'content-type: application/json' -d '{{\"inputs\": {{\"batch\": \"B-7\", \"parts\": 250}}}}' {base}/api/v1/devices/line-1/methods/start_batch\n\n\
         Simulated: boiler-1 and meter-1 on Modbus TCP 127.0.0.1:5020 (units 1 and 2),\n\
         line-1 on OPC UA opc.tcp://127.0.0.1:4840/ferrite,\n\
         env-1 (JSON) and tank-1 (Sparkplug B) publish to the embedded broker mqtt://127.0.0.1:1883:\n  \
         mosquitto_sub -h 127.0.0.1 -t 'sensors/#' -t 'alarms/#' -v\n\
         Models, devices and rules edited in {folders} (or through the API, see /api/v1/config)\n\
         apply without a restart; only what changed restarts.\n\
         Ctrl-C stops.",
        data_dir.display(),
        folders = scratch.path().display(),
        broker = cloud.broker,
        secret = enrolled.secret_file.display(),
    )?;
    out.flush()?;
    crate::commands::wait_for_signal().await;
    let clean = gateway.stop().await;
    sim.stop().await;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
