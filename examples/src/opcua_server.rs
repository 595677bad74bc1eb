//! Simulated OPC UA servers, on async-opcua's server.
//!
//! One [`UaSim`] serves one `opc.tcp://host:port/path` endpoint with a
//! variable per model property bound to it, of the property's DataType (its
//! `opcua.datatype`, or Boolean, Int32, Double, String after its type).
//! Writable properties get writable nodes; clients' writes land in the
//! address space and stay there.
//!
//! It offers security `none` and every supported policy (Basic256Sha256,
//! Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss) with sign and
//! sign-and-encrypt; anonymous login and the configured users (by password
//! or X.509 certificate). It trusts
//! every client certificate (it is a simulator); its own certificate is
//! created under its `pki` folder on first start, at `own/cert.der`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_models::ua::{from_variant, to_variant};
use opcua::crypto::SecurityPolicy;
use opcua::nodes::{AccessLevel, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{DataValue, MessageSecurityMode, NodeId, ObjectId, StatusCode, Variant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One variable the server holds.
#[derive(Debug, Clone)]
pub struct UaNode {
    /// Its NodeId, in namespace 2 or above.
    pub id: NodeId,
    /// Its browse and display name.
    pub name: String,
    /// Its DataType.
    pub datatype: UaDataType,
    /// The type of the property it serves.
    pub ty: ValueType,
    /// Whether clients may write it.
    pub writable: bool,
    /// Its value at start.
    pub initial: Value,
}

/// How a [`UaSim`] is set up.
#[derive(Debug, Clone)]
pub struct UaSimOptions {
    /// The endpoint path, such as `/ferrite`.
    pub path: String,
    /// Where its certificate and key live (created on first start).
    pub pki_dir: PathBuf,
    /// Users it accepts, besides anonymous.
    pub users: Vec<UaUser>,
}

/// A user the server accepts: by password, or by X.509 certificate.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UaUser {
    /// User name.
    pub name: String,
    /// Their password.
    #[serde(default)]
    pub password: Option<String>,
    /// Or their certificate (DER or PEM).
    #[serde(default)]
    pub certificate: Option<PathBuf>,
}

impl UaUser {
    /// A user who logs in with a password.
    pub fn password(name: &str, password: &str) -> Self {
        UaUser {
            name: name.into(),
            password: Some(password.into()),
            certificate: None,
        }
    }

    /// A user who logs in with the certificate at `path`.
    pub fn certificate(name: &str, path: &std::path::Path) -> Self {
        UaUser {
            name: name.into(),
            password: None,
            certificate: Some(path.into()),
        }
    }
}

/// A running (or stopped) simulated OPC UA server.
pub struct UaSim {
    /// The address it listens on.
    pub addr: SocketAddr,
    options: UaSimOptions,
    nodes: Vec<UaNode>,
    /// Position of each node in `nodes`.
    index: HashMap<NodeId, usize>,
    running: Mutex<Option<ServerTasks>>,
}

struct ServerTasks {
    handle: ServerHandle,
    /// The node manager of each namespace index.
    managers: BTreeMap<u16, Arc<SimpleNodeManager>>,
    task: JoinHandle<()>,
}

const USER_TOKEN_PREFIX: &str = "user-";

impl UaSim {
    /// Starts serving `nodes` on `addr` (port 0 picks a free port).
    pub async fn start(
        addr: SocketAddr,
        nodes: Vec<UaNode>,
        options: UaSimOptions,
    ) -> std::io::Result<UaSim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        let sim = UaSim {
            addr,
            options,
            nodes,
            index,
            running: Mutex::new(None),
        };
        sim.serve(listener)?;
        Ok(sim)
    }

    /// The endpoint URL clients use.
    pub fn url(&self) -> String {
        format!("opc.tcp://{}{}", self.addr, self.options.path)
    }

    /// Its certificate (DER), once started.
    pub fn certificate_path(&self) -> PathBuf {
        self.options.pki_dir.join("own").join("cert.der")
    }

    fn lock(&self) -> MutexGuard<'_, Option<ServerTasks>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        let builder = self.builder();
        let (server, handle) = builder.build().map_err(std::io::Error::other)?;
        let mut managers = BTreeMap::new();
        for ns in self.namespaces() {
            let name = manager_name(ns);
            let Some(nm) = handle
                .node_managers()
                .get_by_name::<SimpleNodeManager>(&name)
            else {
                return Err(std::io::Error::other(format!("no node manager {name}")));
            };
            let got = handle.get_namespace_index(&namespace_uri(ns));
            if got != Some(ns) {
                return Err(std::io::Error::other(format!(
                    "namespace {ns} came out as {got:?}; the simulator registers \
                     namespaces 2 and up in order"
                )));
            }
            managers.insert(ns, nm);
        }
        for node in &self.nodes {
            let Some(nm) = managers.get(&node.id.namespace) else {
                continue;
            };
            let folder = NodeId::new(node.id.namespace, "Ferrite");
            let mut space = nm.address_space().write();
            if !space.node_exists(&folder) {
                space.add_folder(
                    &folder,
                    "Ferrite",
                    "Ferrite",
                    &ObjectId::ObjectsFolder.into(),
                );
            }
            let initial = to_variant(&node.initial, node.datatype).unwrap_or(Variant::Empty);
            let access = access(node.writable);
            VariableBuilder::new(&node.id, node.name.as_str(), node.name.as_str())
                .data_type(node.datatype.id())
                .value(initial)
                .access_level(access)
                .user_access_level(access)
                .organized_by(folder)
                .insert(&mut *space);
        }
        let task = tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::warn!("sim OPC UA server ended: {e}");
            }
        });
        *self.lock() = Some(ServerTasks {
            handle,
            managers,
            task,
        });
        Ok(())
    }

    /// Namespace indexes the nodes use, 2 and up.
    fn namespaces(&self) -> Vec<u16> {
        let max = self.nodes.iter().map(|n| n.id.namespace).max().unwrap_or(2);
        (2..=max.max(2)).collect()
    }

    fn builder(&self) -> ServerBuilder {
        let o = &self.options;
        let mut tokens: Vec<String> = vec![ANONYMOUS_USER_TOKEN_ID.to_string()];
        let mut builder = ServerBuilder::new()
            .application_name("ferrite-sim")
            .application_uri("urn:ferrite-sim")
            .product_uri("urn:ferrite-sim")
            .create_sample_keypair(true)
            .pki_dir(&o.pki_dir)
            .host(self.addr.ip().to_string())
            .port(self.addr.port())
            .trust_client_certs(true)
            .discovery_urls(vec![self.url()]);
        for (i, user) in o.users.iter().enumerate() {
            let id = format!("{USER_TOKEN_PREFIX}{i}");
            let token = match (&user.password, &user.certificate) {
                (Some(pass), _) => ServerUserToken::user_pass(user.name.as_str(), pass),
                (None, Some(cert)) => ServerUserToken::x509(user.name.as_str(), cert),
                (None, None) => continue,
            };
            builder = builder.add_user_token(&id, token);
            tokens.push(id);
        }
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        builder = builder.add_endpoint(
            "none",
            (
                o.path.as_str(),
                SecurityPolicy::None,
                MessageSecurityMode::None,
                tokens.as_slice(),
            ),
        );
        for policy in [
            SecurityPolicy::Basic256Sha256,
            SecurityPolicy::Aes128Sha256RsaOaep,
            SecurityPolicy::Aes256Sha256RsaPss,
        ] {
            for mode in [
                MessageSecurityMode::Sign,
                MessageSecurityMode::SignAndEncrypt,
            ] {
                builder = builder.add_endpoint(
                    format!("{policy}-{mode}"),
                    (o.path.as_str(), policy, mode, tokens.as_slice()),
                );
            }
        }
        // Room for large benchmarks; items per subscription stay at the
        // library's 1000, a cap many servers have, so clients must spread.
        let limits = &mut builder.limits_mut().subscriptions;
        limits.max_subscriptions_per_session = 200;
        limits.max_pending_publish_requests = 400;
        // Queues long enough to hold a node's changes through an outage of
        // a minute or so, as servers that buffer for reconnects do (the
        // library's default is 10).
        limits.max_monitored_item_queue_size = 10_000;
        // A sampling interval of 0 means "report every change". (With a
        // non-zero one, async-opcua 0.19 holds back a change that follows
        // another within the interval, and publishes it only when a later
        // change comes.)
        limits.min_sampling_interval_ms = 0.0;
        for ns in self.namespaces() {
            let meta = NamespaceMetadata {
                namespace_uri: namespace_uri(ns),
                ..Default::default()
            };
            builder = builder.with_node_manager(simple_node_manager(meta, &manager_name(ns)));
        }
        builder
    }

    /// Sets a node's value, as the device would, notifying subscribers.
    pub fn set(&self, id: &NodeId, value: &Value) -> Result<(), String> {
        self.set_many(std::slice::from_ref(id), std::slice::from_ref(value))
    }

    /// Sets many nodes of one namespace at once (one lock, one
    /// notification pass): `ids[i]` gets `values[i]`.
    pub fn set_many(&self, ids: &[NodeId], values: &[Value]) -> Result<(), String> {
        let mut updates = Vec::with_capacity(ids.len());
        for (id, value) in ids.iter().zip(values) {
            let node = self.node(id).ok_or_else(|| format!("no node {id}"))?;
            let variant = to_variant(value, node.datatype)?;
            updates.push((id, None, DataValue::new_now(variant)));
        }
        let Some(ns) = ids.first().map(|id| id.namespace) else {
            return Ok(());
        };
        let running = self.lock();
        let Some(r) = running.as_ref() else {
            return Err("the server is stopped".into());
        };
        let nm = r
            .managers
            .get(&ns)
            .ok_or_else(|| format!("no namespace {ns}"))?;
        nm.set_values(r.handle.subscriptions(), updates.into_iter())
            .map_err(|s: StatusCode| s.to_string())
    }

    fn node(&self, id: &NodeId) -> Option<&UaNode> {
        self.index.get(id).and_then(|i| self.nodes.get(*i))
    }

    /// A node's current value.
    pub fn get(&self, id: &NodeId) -> Option<Value> {
        let node = self.node(id)?;
        let running = self.lock();
        let r = running.as_ref()?;
        let space = r.managers.get(&id.namespace)?.address_space().read();
        let opcua::nodes::NodeType::Variable(v) = space.find(id)? else {
            return None;
        };
        let value = v.value(
            opcua::types::TimestampsToReturn::Neither,
            &opcua::types::NumericRange::None,
            &opcua::types::DataEncoding::Binary,
            0.0,
        );
        from_variant(value.value.as_ref()?, node.ty).ok()
    }

    /// Makes a node writable or read-only for clients, to test refusals.
    pub fn set_writable(&self, id: &NodeId, writable: bool) {
        let running = self.lock();
        let Some(r) = running.as_ref() else { return };
        let Some(nm) = r.managers.get(&id.namespace) else {
            return;
        };
        let mut space = nm.address_space().write();
        if let Some(opcua::nodes::NodeType::Variable(v)) = space.find_mut(id) {
            v.set_access_level(access(writable));
            v.set_user_access_level(access(writable));
        }
    }

    /// Stops the server, closing every session and connection.
    pub async fn stop(&self) {
        let running = self.lock().take();
        if let Some(r) = running {
            r.handle.cancel();
            let _ = r.task.await;
        }
    }

    /// Starts it again on the same address, with its nodes back at their
    /// initial values: a device that rebooted.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener)
    }
}

/// Read, and write when `writable`.
fn access(writable: bool) -> AccessLevel {
    if writable {
        AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE
    } else {
        AccessLevel::CURRENT_READ
    }
}

fn manager_name(ns: u16) -> String {
    format!("ferrite-sim-ns{ns}")
}

fn namespace_uri(ns: u16) -> String {
    format!("urn:ferrite-sim:ns{ns}")
}
