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
//!
//! Methods ([`UaMethod`]) are served as components of their object, with
//! `InputArguments` and `OutputArguments` properties. A call checks the
//! count and the DataType of each input as a strict server does
//! (Bad_ArgumentsMissing, Bad_TooManyArguments, Bad_TypeMismatch), is
//! recorded ([`UaSim::calls`]) and answered by the handler a test set
//! ([`UaSim::on_call`]), else by echoing: output *i* is input *i*
//! converted to the output's type where there is one, else the number of
//! calls so far.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_models::ua::{from_variant, to_variant};
use opcua::crypto::SecurityPolicy;
use opcua::nodes::{AccessLevel, MethodBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle, ServerUserToken};
use opcua::types::{
    Argument, DataValue, MessageSecurityMode, NodeId, ObjectId, ObjectTypeId, StatusCode, Variant,
};
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

/// One method the server offers.
#[derive(Debug, Clone)]
pub struct UaMethod {
    /// The object it is a component of (created in namespace 2 and up
    /// when it does not exist; `i=85`, the Objects folder, always does).
    pub object: NodeId,
    /// The method node, in namespace 2 or above.
    pub id: NodeId,
    /// Its browse and display name.
    pub name: String,
    /// What it takes.
    pub inputs: Vec<UaArgument>,
    /// What it returns.
    pub outputs: Vec<UaArgument>,
}

/// One input or output of a [`UaMethod`].
#[derive(Debug, Clone)]
pub struct UaArgument {
    /// Its name.
    pub name: String,
    /// Its DataType on the wire.
    pub datatype: UaDataType,
    /// The type handlers see it as.
    pub ty: ValueType,
}

/// What a method does: from its inputs to its outputs, or a refusal.
pub type MethodHandler = Arc<dyn Fn(&[Value]) -> Result<Vec<Value>, StatusCode> + Send + Sync>;

/// How a [`UaSim`] is set up.
#[derive(Debug, Clone, Default)]
pub struct UaSimOptions {
    /// The endpoint path, such as `/ferrite`.
    pub path: String,
    /// Where its certificate and key live (created on first start).
    pub pki_dir: PathBuf,
    /// Users it accepts, besides anonymous.
    pub users: Vec<UaUser>,
    /// Methods it offers.
    pub methods: Vec<UaMethod>,
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
    /// Handlers set by [`UaSim::on_call`], by method node.
    handlers: Arc<Mutex<HashMap<NodeId, MethodHandler>>>,
    /// The inputs of every call, by method node.
    calls: Arc<Mutex<HashMap<NodeId, Vec<Vec<Value>>>>>,
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
            handlers: Arc::default(),
            calls: Arc::default(),
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
            let mut space = nm.address_space().write();
            let folder = ferrite_folder(&mut space, node.id.namespace);
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
        for method in &self.options.methods {
            let Some(nm) = managers.get(&method.id.namespace) else {
                tracing::warn!(
                    "sim serves methods in namespaces 2 and up, not {}",
                    method.id
                );
                continue;
            };
            self.add_method(nm, method);
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

    /// Puts `method` (and its object, where it is missing) in the address
    /// space, and answers its calls.
    fn add_method(&self, nm: &SimpleNodeManager, method: &UaMethod) {
        let arguments = |list: &[UaArgument]| -> Vec<Argument> {
            list.iter()
                .map(|a| (a.name.as_str(), a.datatype.id()).into())
                .collect()
        };
        let property_id = |what: &str| {
            NodeId::new(
                method.id.namespace,
                format!("{}.{what}", method.id.identifier),
            )
        };
        {
            let mut space = nm.address_space().write();
            if !space.node_exists(&method.object) && method.object.namespace >= 2 {
                let folder = ferrite_folder(&mut space, method.object.namespace);
                let name = method.object.identifier.to_string();
                ObjectBuilder::new(&method.object, name.as_str(), name.as_str())
                    .organized_by(folder)
                    .insert(&mut *space);
            }
            let mut builder =
                MethodBuilder::new(&method.id, method.name.as_str(), method.name.as_str())
                    .component_of(method.object.clone())
                    .executable(true)
                    .user_executable(true);
            if !method.inputs.is_empty() {
                let id = property_id("InputArguments");
                builder = builder.input_args(&mut *space, &id, &arguments(&method.inputs));
            }
            if !method.outputs.is_empty() {
                let id = property_id("OutputArguments");
                builder = builder.output_args(&mut *space, &id, &arguments(&method.outputs));
            }
            builder.insert(&mut *space);
        }
        let (method_def, handlers, calls) =
            (method.clone(), self.handlers.clone(), self.calls.clone());
        nm.inner()
            .add_method_callback(method.id.clone(), move |args| {
                answer(&method_def, args, &handlers, &calls)
            });
    }

    /// Reports an event (BaseEventType) from `source` through the Server
    /// object (`i=2253`), as a device reporting a fault would. Returns
    /// its EventId.
    pub fn raise_event(
        &self,
        source: &str,
        message: &str,
        severity: u16,
    ) -> Result<Vec<u8>, String> {
        let running = self.lock();
        let Some(r) = running.as_ref() else {
            return Err("the server is stopped".into());
        };
        let id: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
        let event = opcua::nodes::BaseEventType::new_now(
            ObjectTypeId::BaseEventType,
            opcua::types::ByteString::from(id.clone()),
            message,
        )
        .set_source_node(ObjectId::Server.into())
        .set_source_name(source.into())
        .set_severity(severity);
        let server: NodeId = ObjectId::Server.into();
        r.handle
            .subscriptions()
            .notify_events([(&event as &dyn opcua::nodes::Event, &server)].into_iter());
        Ok(id)
    }

    /// From now on, calls of `method` are answered by `handler`.
    pub fn on_call(
        &self,
        method: &NodeId,
        handler: impl Fn(&[Value]) -> Result<Vec<Value>, StatusCode> + Send + Sync + 'static,
    ) {
        lock(&self.handlers).insert(method.clone(), Arc::new(handler));
    }

    /// The inputs of every call of `method` so far, oldest first.
    pub fn calls(&self, method: &NodeId) -> Vec<Vec<Value>> {
        lock(&self.calls).get(method).cloned().unwrap_or_default()
    }

    /// Namespace indexes the nodes and methods use, 2 and up.
    fn namespaces(&self) -> Vec<u16> {
        let max = self
            .nodes
            .iter()
            .map(|n| n.id.namespace)
            .chain(self.options.methods.iter().map(|m| m.id.namespace))
            .max()
            .unwrap_or(2);
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

/// The `Objects/Ferrite` folder of namespace `ns`, made if missing.
fn ferrite_folder(space: &mut opcua::server::address_space::AddressSpace, ns: u16) -> NodeId {
    let folder = NodeId::new(ns, "Ferrite");
    if !space.node_exists(&folder) {
        space.add_folder(
            &folder,
            "Ferrite",
            "Ferrite",
            &ObjectId::ObjectsFolder.into(),
        );
    }
    folder
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers a call of `method`, as a strict server would.
fn answer(
    method: &UaMethod,
    args: &[Variant],
    handlers: &Mutex<HashMap<NodeId, MethodHandler>>,
    calls: &Mutex<HashMap<NodeId, Vec<Vec<Value>>>>,
) -> Result<Vec<Variant>, StatusCode> {
    if args.len() < method.inputs.len() {
        return Err(StatusCode::BadArgumentsMissing);
    }
    if args.len() > method.inputs.len() {
        return Err(StatusCode::BadTooManyArguments);
    }
    let mut inputs = Vec::with_capacity(args.len());
    for (arg, declared) in args.iter().zip(&method.inputs) {
        // The variant must be of the declared DataType, not merely
        // convertible to it.
        let value = from_variant(arg, declared.ty).map_err(|_| StatusCode::BadTypeMismatch)?;
        let expected =
            to_variant(&value, declared.datatype).map_err(|_| StatusCode::BadTypeMismatch)?;
        if std::mem::discriminant(arg) != std::mem::discriminant(&expected) {
            return Err(StatusCode::BadTypeMismatch);
        }
        inputs.push(value);
    }
    let count = {
        let mut calls = lock(calls);
        let seen = calls.entry(method.id.clone()).or_default();
        seen.push(inputs.clone());
        seen.len()
    };
    let handler = lock(handlers).get(&method.id).cloned();
    let outputs = match handler {
        Some(handler) => handler(&inputs)?,
        None => method
            .outputs
            .iter()
            .enumerate()
            .map(|(i, out)| {
                inputs
                    .get(i)
                    .and_then(|v| convert(v, out.ty))
                    .unwrap_or_else(|| {
                        convert(&Value::Int(count as i64), out.ty).unwrap_or(Value::Int(0))
                    })
            })
            .collect(),
    };
    method
        .outputs
        .iter()
        .zip(&outputs)
        .map(|(out, v)| to_variant(v, out.datatype).map_err(|_| StatusCode::BadInternalError))
        .collect()
}

/// `v` as a value of type `ty`, where that makes sense.
fn convert(v: &Value, ty: ValueType) -> Option<Value> {
    Some(match (v, ty) {
        (Value::String(s), ValueType::String) => Value::String(s.clone()),
        (v, ValueType::String) => Value::String(v.to_string()),
        (Value::Bool(b), ValueType::Bool) => Value::Bool(*b),
        (Value::Bool(b), ValueType::Int) => Value::Int(i64::from(*b)),
        (Value::Int(i), ValueType::Bool) => Value::Bool(*i != 0),
        (v, ValueType::Int) => Value::Int(ferrite_models::value::whole_number(v.as_f64()?)?),
        (v, ValueType::Float) => Value::Float(v.as_f64()?),
        _ => return None,
    })
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
