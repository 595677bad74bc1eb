//! [`Simulator`]: serves every Modbus and OPC UA device of a project, with
//! changing values, and the `sim.toml` that tunes it.
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
//!
//! [opcua]
//! pki = "sim-pki"            # the OPC UA servers' certificate; default: a
//!                            # folder in the system's temp dir
//! users = [{ name = "operator", password = "secret" },
//!          { name = "robot", certificate = "robot.der" }]
//! ```
//! Properties without a `[[wave]]` get a default signal, except writable
//! ones, which start mid-range and then keep what is written to them.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_models::Property;
use ferrite_models::codec;
use ferrite_models::model::{ModbusBinding, UaDataType, ValueType};
use ferrite_models::units::Span;
use ferrite_models::{Project, Value};
use indexmap::IndexMap;
use opcua::types::NodeId as UaNodeId;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::bank::Endpoint;
use crate::mqtt_publisher::{MqttSim, SimMqtt};
use crate::opcua_server::{UaArgument, UaMethod, UaNode, UaSim, UaSimOptions, UaUser};
use crate::server::{RtuSim, TcpFraming, TcpSim};
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
    /// OPC UA server settings.
    #[serde(default)]
    pub opcua: SimOpcua,
    /// How the MQTT devices log in to the gateway's broker.
    #[serde(default)]
    pub mqtt: SimMqtt,
}

/// The `[opcua]` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimOpcua {
    /// Where the servers keep their certificate and key.
    pub pki: Option<PathBuf>,
    /// Users the servers accept, besides anonymous.
    #[serde(default)]
    pub users: Vec<UaUser>,
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
    target: Target,
    ty: ValueType,
    wave: Wave,
}

/// Where an animated value goes.
enum Target {
    Modbus {
        endpoint: Arc<Endpoint>,
        unit: u8,
        binding: ModbusBinding,
    },
    Opcua {
        server: Arc<UaSim>,
        id: UaNodeId,
    },
    Mqtt {
        sim: Arc<MqttSim>,
        device: String,
        property: String,
    },
}

/// Running simulated devices.
pub struct Simulator {
    /// TCP servers by `host:port` as the config names them.
    pub tcp: HashMap<(String, u16), TcpSim>,
    /// RTU slaves by configured port path.
    pub rtu: HashMap<PathBuf, RtuSim>,
    /// OPC UA servers by endpoint URL as the devices name it.
    pub opcua: HashMap<String, Arc<UaSim>>,
    /// The MQTT devices' publishers, if the project has any.
    pub mqtt: Option<Arc<MqttSim>>,
    stop: CancellationToken,
}

impl Simulator {
    /// Serves every Modbus and OPC UA device in `project`. RTU slaves get a
    /// pty, linked at the configured port path when `link_rtu` is set.
    pub async fn start(
        project: &Project,
        config: &SimConfig,
        link_rtu: bool,
    ) -> std::io::Result<Simulator> {
        let tick = config.tick.map_or(Duration::from_millis(100), Span::get);
        // TCP servers start once every unit behind them has its bank and
        // start values: a client that connects at once finds them all.
        let mut tcp_endpoints: HashMap<(String, u16), (SocketAddr, Arc<Endpoint>, TcpFraming)> =
            HashMap::new();
        let mut rtu: HashMap<PathBuf, RtuSim> = HashMap::new();
        let mut animated = Vec::new();
        let mut ua_devices: Vec<(&String, &str)> = Vec::new();
        for (name, located) in &project.devices {
            let d = &located.value;
            let tcp_framed = match (&d.modbus_tcp, &d.modbus_rtu_over_tcp) {
                (Some(t), _) => Some((t, TcpFraming::Mbap)),
                (None, Some(t)) => Some((t, TcpFraming::Rtu)),
                (None, None) => None,
            };
            let (endpoint, unit) = if let Some((t, framing)) = tcp_framed {
                let key = (t.host.clone(), t.port);
                if !tcp_endpoints.contains_key(&key) {
                    let addr = resolve(&t.host, t.port)?;
                    // A TCP gateway answers 0x0B for a unit it lacks; behind
                    // a transparent serial server, the bus stays silent.
                    let endpoint = Endpoint::new(framing == TcpFraming::Mbap);
                    tcp_endpoints.insert(key.clone(), (addr, endpoint, framing));
                }
                (tcp_endpoints[&key].1.clone(), t.unit)
            } else if let Some(r) = &d.modbus_rtu {
                if !rtu.contains_key(&r.port) {
                    let link = link_rtu.then_some(r.port.as_path());
                    rtu.insert(r.port.clone(), RtuSim::start(Endpoint::new(false), link)?);
                }
                (rtu[&r.port].endpoint.clone(), r.unit)
            } else {
                if let Some(ua) = &d.opcua {
                    ua_devices.push((name, ua.endpoint.as_str()));
                }
                continue;
            };
            endpoint.add_unit(unit);
            let Some(model) = project.models.get(&d.model) else {
                continue;
            };
            for (pname, p) in &model.value.properties {
                let Some(binding) = &p.modbus else { continue };
                let target = Target::Modbus {
                    endpoint: endpoint.clone(),
                    unit,
                    binding: binding.clone(),
                };
                animate_or_start(target, name, pname, p, &config.wave, &mut animated);
            }
        }
        let mut tcp: HashMap<(String, u16), TcpSim> = HashMap::new();
        for (key, (addr, endpoint, framing)) in tcp_endpoints {
            tcp.insert(key, TcpSim::start_framed(addr, endpoint, framing).await?);
        }
        let opcua = start_opcua(project, config, &ua_devices, &mut animated).await?;
        let mqtt = start_mqtt(project, config, tick, &mut animated);
        let stop = CancellationToken::new();
        tokio::spawn(animate(animated, tick, stop.clone()));
        Ok(Simulator {
            tcp,
            rtu,
            opcua,
            mqtt,
            stop,
        })
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
        for (_, server) in self.opcua {
            server.stop().await;
        }
        if let Some(mqtt) = self.mqtt {
            mqtt.stop();
        }
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} does not resolve")))
}

/// Animates a property with its `[[wave]]` or a default signal; a writable
/// property without a `[[wave]]` starts mid-range and keeps what clients
/// write instead.
fn animate_or_start(
    target: Target,
    device: &str,
    property: &str,
    p: &Property,
    waves: &[WaveFor],
    animated: &mut Vec<Animated>,
) {
    let custom = waves
        .iter()
        .find(|w| w.device == device && w.property == property);
    let wave = match custom {
        Some(w) => w.wave.clone(),
        None => Wave::default_for(device, p),
    };
    let item = Animated {
        target,
        ty: p.ty,
        wave,
    };
    if p.writable() && custom.is_none() {
        put(&item, &start_value(p, &item.wave));
    } else {
        animated.push(item);
    }
}

/// Mid-range for a property with limits, else the wave's first value.
fn start_value(p: &Property, wave: &Wave) -> Value {
    match (p.min, p.max, p.ty) {
        (Some(lo), Some(hi), ValueType::Float) => Value::Float((lo + hi) / 2.0),
        (Some(lo), Some(hi), ValueType::Int) => Value::Int(((lo + hi) / 2.0).round() as i64),
        _ => wave.at(0.0, p.ty),
    }
}

fn put(item: &Animated, value: &Value) {
    match &item.target {
        Target::Modbus {
            endpoint,
            unit,
            binding,
        } => match codec::encode(binding, value) {
            Ok(encoded) => {
                let mut units = endpoint.units();
                if let Some(unit) = units.get_mut(unit) {
                    unit.bank.put(binding, &encoded);
                }
            }
            Err(e) => tracing::warn!("sim cannot encode {value}: {e}"),
        },
        Target::Opcua { server, id } => {
            if let Err(e) = server.set(id, value) {
                tracing::debug!("sim cannot set {id}: {e}");
            }
        }
        Target::Mqtt {
            sim,
            device,
            property,
        } => sim.set(device, property, value.clone()),
    }
}

/// Publishers for the project's MQTT devices, on the broker of its
/// `[mqtt]` section (loopback when it listens on every address).
fn start_mqtt(
    project: &Project,
    config: &SimConfig,
    tick: Duration,
    animated: &mut Vec<Animated>,
) -> Option<Arc<MqttSim>> {
    let section = project.config.as_ref()?.value.mqtt.as_ref()?;
    let mut broker = section.listen;
    if broker.ip().is_unspecified() {
        broker.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let initial = |device: &str, p: &Property| start_value(p, &Wave::default_for(device, p));
    let sim = MqttSim::start(project, broker, config.mqtt.clone(), tick, &initial);
    for (name, located) in &project.devices {
        if located.value.mqtt.is_none() {
            continue;
        }
        let Some(model) = project.models.get(&located.value.model) else {
            continue;
        };
        for (pname, p) in &model.value.properties {
            if p.mqtt.is_none() {
                continue;
            }
            let target = Target::Mqtt {
                sim: sim.clone(),
                device: name.clone(),
                property: pname.clone(),
            };
            animate_or_start(target, name, pname, p, &config.wave, animated);
        }
    }
    Some(sim)
}

/// The OPC UA nodes one device's model asks for, at their start values.
pub fn ua_nodes(project: &Project, device: &str) -> Vec<UaNode> {
    let Some(d) = project.devices.get(device) else {
        return Vec::new();
    };
    let Some(model) = project.models.get(&d.value.model) else {
        return Vec::new();
    };
    let mut nodes = Vec::new();
    for (pname, p) in &model.value.properties {
        let Some(b) = &p.opcua else { continue };
        let Ok(id) = UaNodeId::from_str(&b.node.0) else {
            continue;
        };
        if id.namespace < 2 {
            tracing::warn!("sim serves namespaces 2 and up, not {id}");
            continue;
        }
        let wave = Wave::default_for(device, p);
        nodes.push(UaNode {
            id,
            name: pname.clone(),
            datatype: b.datatype.unwrap_or(UaDataType::default_for(p.ty)),
            ty: p.ty,
            writable: p.writable(),
            initial: start_value(p, &wave),
        });
    }
    nodes
}

/// The OPC UA methods one device's model declares, each input and output
/// of the default DataType for its type.
pub fn ua_methods(project: &Project, device: &str) -> Vec<UaMethod> {
    let Some(model) = project
        .devices
        .get(device)
        .and_then(|d| project.models.get(&d.value.model))
    else {
        return Vec::new();
    };
    let arguments = |list: &[ferrite_models::model::Argument]| {
        list.iter()
            .map(|a| UaArgument {
                name: a.name.clone(),
                datatype: UaDataType::default_for(a.ty),
                ty: a.ty,
            })
            .collect()
    };
    model
        .value
        .methods
        .iter()
        .filter_map(|(name, m)| {
            let b = m.opcua.as_ref()?;
            Some(UaMethod {
                object: UaNodeId::from_str(&b.object.0).ok()?,
                id: UaNodeId::from_str(&b.method.0).ok()?,
                name: name.clone(),
                inputs: arguments(&m.inputs),
                outputs: arguments(&m.outputs),
            })
        })
        .collect()
}

/// Splits `opc.tcp://host:port/path` into an address and a path.
pub fn split_endpoint(url: &str) -> std::io::Result<(SocketAddr, String)> {
    let bad = || std::io::Error::other(format!("cannot serve endpoint {url}"));
    let rest = url.strip_prefix("opc.tcp://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
        None => (authority, 4840),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((resolve(host, port)?, path.to_string()))
}

async fn start_opcua(
    project: &Project,
    config: &SimConfig,
    devices: &[(&String, &str)],
    animated: &mut Vec<Animated>,
) -> std::io::Result<HashMap<String, Arc<UaSim>>> {
    let mut by_url: IndexMap<&str, Vec<&String>> = IndexMap::new();
    for (name, url) in devices {
        by_url.entry(url).or_default().push(name);
    }
    let pki = config
        .opcua
        .pki
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ferrite-sim-pki"));
    let users = config.opcua.users.clone();
    let mut servers = HashMap::new();
    for (url, names) in by_url {
        let (addr, path) = split_endpoint(url)?;
        let per_device: Vec<(&String, Vec<UaNode>)> = names
            .into_iter()
            .map(|n| (n, ua_nodes(project, n)))
            .collect();
        let nodes = per_device.iter().flat_map(|(_, n)| n.clone()).collect();
        let mut methods: Vec<UaMethod> = Vec::new();
        for (name, _) in &per_device {
            for m in ua_methods(project, name) {
                if !methods.iter().any(|known| known.id == m.id) {
                    methods.push(m);
                }
            }
        }
        let options = UaSimOptions {
            path,
            pki_dir: pki.clone(),
            users: users.clone(),
            methods,
        };
        let server = Arc::new(UaSim::start(addr, nodes, options).await?);
        for (name, nodes) in per_device {
            for node in nodes {
                let Some(p) = project.property(name, &node.name) else {
                    continue;
                };
                let target = Target::Opcua {
                    server: server.clone(),
                    id: node.id,
                };
                animate_or_start(target, name, &node.name, p, &config.wave, animated);
            }
        }
        servers.insert(url.to_string(), server);
    }
    Ok(servers)
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
