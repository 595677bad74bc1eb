//! [`Simulator`]: serves every Modbus device of a project, with changing
//! values, and the `sim.toml` that tunes it.
//!
//! ```toml
//! gateway = "ferrite.toml"   # whose devices to serve, relative to this file
//! tick = "100ms"             # how often values change
//! [[wave]]
//! device = "boiler-1"
//! property = "temperature"
//! shape = "sine"             # sine | ramp | square | noise | counter | constant
//! min = 60
//! max = 95
//! period = "2m"
//! ```
//! Properties without a `[[wave]]` get a default signal, except writable
//! ones, which start mid-range and then keep what is written to them.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::codec;
use ferrite_models::model::{ModbusBinding, ValueType};
use ferrite_models::units::Span;
use ferrite_models::{Project, Value};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::bank::Endpoint;
use crate::server::{RtuSim, TcpSim};
use crate::waves::Wave;

/// `sim.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// The gateway config whose devices to serve.
    pub gateway: Option<PathBuf>,
    /// How often values change. Default 100 ms.
    pub tick: Option<Span>,
    /// Signals for particular properties.
    #[serde(default)]
    pub wave: Vec<WaveFor>,
}

/// A `[[wave]]` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct WaveFor {
    /// Device name.
    pub device: String,
    /// Property name.
    pub property: String,
    /// The signal.
    #[serde(flatten)]
    pub wave: Wave,
}

/// One property the simulator animates.
struct Animated {
    endpoint: Arc<Endpoint>,
    unit: u8,
    binding: ModbusBinding,
    ty: ValueType,
    wave: Wave,
}

/// Running simulated devices.
pub struct Simulator {
    /// TCP servers by `host:port` as the config names them.
    pub tcp: HashMap<(String, u16), TcpSim>,
    /// RTU slaves by configured port path.
    pub rtu: HashMap<PathBuf, RtuSim>,
    stop: CancellationToken,
}

impl Simulator {
    /// Serves every Modbus device in `project`. RTU slaves get a pty, linked
    /// at the configured port path when `link_rtu` is set.
    pub async fn start(
        project: &Project,
        waves: &[WaveFor],
        tick: Duration,
        link_rtu: bool,
    ) -> std::io::Result<Simulator> {
        let mut tcp: HashMap<(String, u16), TcpSim> = HashMap::new();
        let mut rtu: HashMap<PathBuf, RtuSim> = HashMap::new();
        let mut animated = Vec::new();
        for (name, located) in &project.devices {
            let d = &located.value;
            let (endpoint, unit) = if let Some(t) = &d.modbus_tcp {
                let key = (t.host.clone(), t.port);
                if !tcp.contains_key(&key) {
                    let addr = resolve(&t.host, t.port)?;
                    let server = TcpSim::start(addr, Endpoint::new(true)).await?;
                    tcp.insert(key.clone(), server);
                }
                (tcp[&key].endpoint.clone(), t.unit)
            } else if let Some(r) = &d.modbus_rtu {
                if !rtu.contains_key(&r.port) {
                    let link = link_rtu.then_some(r.port.as_path());
                    rtu.insert(r.port.clone(), RtuSim::start(Endpoint::new(false), link)?);
                }
                (rtu[&r.port].endpoint.clone(), r.unit)
            } else {
                continue;
            };
            endpoint.add_unit(unit);
            let Some(model) = project.models.get(&d.model) else {
                continue;
            };
            for (pname, p) in &model.value.properties {
                let Some(binding) = &p.modbus else { continue };
                let custom = waves
                    .iter()
                    .find(|w| &w.device == name && &w.property == pname);
                let wave = match custom {
                    Some(w) => w.wave.clone(),
                    None => Wave::default_for(name, p),
                };
                let item = Animated {
                    endpoint: endpoint.clone(),
                    unit,
                    binding: binding.clone(),
                    ty: p.ty,
                    wave,
                };
                if p.writable() && custom.is_none() {
                    // Start mid-range, then keep what clients write.
                    let start = item.wave.at(0.0, p.ty);
                    let start = match (p.min, p.max, p.ty) {
                        (Some(lo), Some(hi), ValueType::Float) => Value::Float((lo + hi) / 2.0),
                        (Some(lo), Some(hi), ValueType::Int) => {
                            Value::Int(((lo + hi) / 2.0).round() as i64)
                        }
                        _ => start,
                    };
                    put(&item, &start);
                } else {
                    animated.push(item);
                }
            }
        }
        let stop = CancellationToken::new();
        tokio::spawn(animate(animated, tick, stop.clone()));
        Ok(Simulator { tcp, rtu, stop })
    }

    /// The endpoint serving `host:port`.
    pub fn tcp_endpoint(&self, host: &str, port: u16) -> Option<Arc<Endpoint>> {
        self.tcp
            .get(&(host.to_string(), port))
            .map(|s| s.endpoint.clone())
    }

    /// Stops every server.
    pub async fn stop(self) {
        self.stop.cancel();
        for (_, server) in self.tcp {
            server.stop().await;
        }
        for (_, server) in self.rtu {
            server.stop().await;
        }
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} does not resolve")))
}

fn put(item: &Animated, value: &Value) {
    match codec::encode(&item.binding, value) {
        Ok(encoded) => {
            let mut units = item.endpoint.units();
            if let Some(unit) = units.get_mut(&item.unit) {
                unit.bank.put(&item.binding, &encoded);
            }
        }
        Err(e) => tracing::warn!("sim cannot encode {value}: {e}"),
    }
}

async fn animate(items: Vec<Animated>, tick: Duration, stop: CancellationToken) {
    let start = Instant::now();
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let t = start.elapsed().as_secs_f64();
        for item in &items {
            put(item, &item.wave.at(t, item.ty));
        }
    }
}

/// Reads `sim.toml`.
pub fn load_config(path: &Path) -> anyhow::Result<SimConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
