//! Discovery: browse a server's address space and describe each variable as
//! a property a model can hold (`ferrite discover opcua`).
//!
//! ```text
//! open a session (the driver's own connect: security, identity, trust)
//! browse from the root (Objects by default) along hierarchical references,
//!     with async-opcua's Browser (batched, continuation points followed)
//! read each variable's DataType, ValueRank, AccessLevel, UserAccessLevel,
//!     Description and Value, and its EURange and EngineeringUnits properties
//! resolve DataTypes that are not one of the twelve scalars by walking
//!     HasSubtype up (Duration is a Double, an enumeration an Int32)
//! ```
//!
//! What becomes a property: a variable organised by (or a component of) an
//! object or folder, or a component of another variable. A variable's own
//! properties (EURange, EngineeringUnits, EnumStrings...) describe it and are
//! read, not listed; the properties of objects (Manufacturer, SerialNumber...)
//! are left out unless asked for. Methods, arrays, and DataTypes Ferrite
//! has no type for (DateTime, ByteString, structures...) are listed as
//! skipped, each with the reason. Namespace 0 below the root (the server's
//! own Server object and its diagnostics) is not walked unless the root
//! itself was asked for there (`--root i=2253`).
//!
//! Nothing is written to the server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_models::device::Opcua;
use ferrite_models::model::{Access, UaDataType, ValueType};
use futures_util::StreamExt;
use opcua::client::Session;
use opcua::client::browser::BrowseResultItem;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMaskFlags, DataTypeId, DataValue,
    EUInformation, NodeClass, NodeClassMask, NodeId, ObjectId, Range, ReadValueId, ReferenceTypeId,
    StatusCode, Variant,
};
use tokio_util::sync::CancellationToken;

use super::session::{self, read_chunked};
use super::{Device, connect, read_id};

/// What to browse, and how to reach the server.
#[derive(Debug, Clone)]
pub struct DiscoverOptions {
    /// The endpoint and its security and login, as a device file holds them.
    pub settings: Opcua,
    /// Relative files in `settings` start here.
    pub base: PathBuf,
    /// The PKI folder: the client's certificate (made on first use) and the
    /// trusted and rejected server certificates.
    pub pki: PathBuf,
    /// Where to start, as NodeId text. Default: the Objects folder (`i=85`).
    pub root: Option<String>,
    /// How many levels below the root to walk (1: the root's children only).
    pub depth: usize,
    /// Stop after this many variables.
    pub max_variables: usize,
    /// Also take the properties (HasProperty) of objects.
    pub object_properties: bool,
    /// Each request's timeout.
    pub timeout: Duration,
}

/// One variable, typed for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundVariable {
    /// Browse names from below the root to the variable.
    pub path: Vec<String>,
    /// Its NodeId in text form.
    pub node: String,
    /// Its DataType, resolved to one of the twelve scalars.
    pub datatype: UaDataType,
    /// The property type that holds it.
    pub ty: ValueType,
    /// What the session's user may do with it.
    pub access: Access,
    /// Its EURange (low, high), when it has one.
    pub range: Option<(f64, f64)>,
    /// Its EngineeringUnits' display name, when it has one.
    pub unit: Option<String>,
    /// Its Description, when not empty.
    pub description: Option<String>,
}

/// A node that does not become a property, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedNode {
    /// Browse names from below the root.
    pub path: Vec<String>,
    /// Its NodeId in text form.
    pub node: String,
    /// Why it was left out.
    pub reason: String,
}

/// What a browse found.
#[derive(Debug, Clone, Default)]
pub struct Discovered {
    /// The variables that become properties, sorted by path.
    pub variables: Vec<FoundVariable>,
    /// What was left out, sorted by path.
    pub skipped: Vec<SkippedNode>,
    /// Objects and folders walked.
    pub objects: usize,
    /// Properties of objects left out (see [`DiscoverOptions::object_properties`]).
    pub object_properties_left_out: usize,
    /// Set when the browse stopped at [`DiscoverOptions::max_variables`].
    pub truncated: bool,
}

/// Browses the server `options` name and describes what it holds.
pub async fn discover(options: &DiscoverOptions) -> Result<Discovered, String> {
    let root = match &options.root {
        Some(text) => {
            NodeId::from_str(text).map_err(|_| format!("cannot parse NodeId `{text}`"))?
        }
        None => ObjectId::ObjectsFolder.into(),
    };
    let device = Device {
        name: Arc::from("discover"),
        index: 0,
        settings: options.settings.clone(),
        base: options.base.clone(),
        poll: Duration::from_secs(1),
        timeout: options.timeout,
        points: Vec::new(),
        methods: Vec::new(),
    };
    let pki = connect::pki_for(&device, &options.pki)?;
    let clients = connect::client(&device, &pki)?;
    let (session, event_loop) = connect::open(&device, &clients)
        .await
        .map_err(|e| match e {
            connect::OpenError::Unreachable(why) | connect::OpenError::Unusable(why) => why,
        })?;
    let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
    let pump = tokio::spawn(session::pump(event_loop, events_tx));
    let wait = (options.timeout * 5).max(Duration::from_secs(5));
    let connected = match tokio::time::timeout(wait, session::wait_connected(&mut events)).await {
        Err(_) => Err(format!(
            "no session on {} within {wait:?}",
            options.settings.endpoint
        )),
        Ok(Err(code)) => Err(session::Failure::from_code(code, &device, &pki).why),
        Ok(Ok(())) => Ok(()),
    };
    let found = match connected {
        Ok(()) => Walk::new(&session, options, root).run().await,
        Err(why) => Err(why),
    };
    let _ = tokio::time::timeout(options.timeout, session.disconnect()).await;
    pump.abort();
    found
}

/// One node met on the way down.
#[derive(Debug, Clone)]
struct Met {
    parent: NodeId,
    name: String,
    class: NodeClass,
    /// Reached by HasProperty.
    property: bool,
}

/// The walk over one session.
struct Walk<'a> {
    session: &'a Session,
    options: &'a DiscoverOptions,
    root: NodeId,
    /// Every node met, by id, as first met.
    met: HashMap<NodeId, Met>,
    /// Variables in the order met.
    variables: Vec<NodeId>,
    /// The EURange and EngineeringUnits property of a variable.
    meta: HashMap<NodeId, Meta>,
    truncated: bool,
    /// Whether nodes of namespace 0 below the root are walked.
    walk_ns0: bool,
}

#[derive(Debug, Default, Clone)]
struct Meta {
    range: Option<NodeId>,
    unit: Option<NodeId>,
}

/// The attributes read of each variable, in this order.
const ATTRIBUTES: [AttributeId; 6] = [
    AttributeId::DataType,
    AttributeId::ValueRank,
    AttributeId::AccessLevel,
    AttributeId::UserAccessLevel,
    AttributeId::Description,
    AttributeId::Value,
];

impl<'a> Walk<'a> {
    fn new(session: &'a Session, options: &'a DiscoverOptions, root: NodeId) -> Self {
        Walk {
            session,
            options,
            root,
            met: HashMap::new(),
            variables: Vec::new(),
            meta: HashMap::new(),
            truncated: false,
            walk_ns0: false,
        }
    }

    fn description(node: NodeId) -> BrowseDescription {
        BrowseDescription {
            node_id: node,
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: (NodeClassMask::OBJECT
                | NodeClassMask::VARIABLE
                | NodeClassMask::METHOD)
                .bits(),
            result_mask: BrowseResultMaskFlags::all().bits(),
        }
    }

    async fn run(mut self) -> Result<Discovered, String> {
        let depth = self.options.depth.max(1);
        let root_class = read_chunked(
            self.options.timeout,
            self.session,
            &[read_id(&self.root, AttributeId::NodeClass)],
        )
        .await
        .map_err(|e| format!("reading {}: {e}", self.root))?;
        if let Some(code) = root_class
            .first()
            .and_then(|dv| dv.status)
            .filter(|s| s.is_bad())
        {
            return Err(format!("the server has no node {} ({code})", self.root));
        }
        // Namespace 0 holds the server's own objects (Server, Aliases...):
        // walked only when the root was asked for there.
        let walk_ns0 = self.options.root.is_some() && self.root.namespace == 0;
        self.walk_ns0 = walk_ns0;
        // Which children to browse further: objects, and variables reached
        // other than as a property (their properties carry EURange and
        // EngineeringUnits; their components are variables too).
        // A variable on the last level is still browsed, for its EURange and
        // EngineeringUnits (`take` records nothing else below the last level).
        let policy = move |item: &BrowseResultItem| -> Vec<BrowseDescription> {
            if item.depth() > depth {
                return Vec::new();
            }
            let last = item.depth() == depth;
            item.references()
                .iter()
                .filter(|r| r.node_id.server_index == 0)
                .filter(|r| walk_ns0 || r.node_id.node_id.namespace != 0)
                .filter(|r| match r.node_class {
                    NodeClass::Object => !last,
                    NodeClass::Variable => r.reference_type_id != ReferenceTypeId::HasProperty,
                    _ => false,
                })
                .map(|r| Walk::description(r.node_id.node_id.clone()))
                .collect()
        };
        let token = CancellationToken::new();
        let browser = self
            .session
            .browser()
            .handler(policy)
            .token(token.clone())
            .max_nodes_per_request(100)
            .max_references_per_node(1000);
        let stream = browser.run(vec![Walk::description(self.root.clone())]);
        futures_util::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            let item = item.map_err(|e| format!("browsing: {e}"))?;
            if item.status().is_bad() && item.status() != StatusCode::BadNodeIdUnknown {
                return Err(format!("browsing {}: {}", item.parent_id(), item.status()));
            }
            let below_last = item.depth() > depth;
            self.take(item, below_last);
            if self.variables.len() >= self.options.max_variables && !token.is_cancelled() {
                self.truncated = true;
                token.cancel();
            }
        }
        self.describe().await
    }

    /// Records what one browse returned; below the last level, only a
    /// variable's EURange and EngineeringUnits.
    fn take(&mut self, item: BrowseResultItem, below_last: bool) {
        let (parent, references) = item.into_results();
        let parent_is_variable = self
            .met
            .get(&parent)
            .is_some_and(|m| m.class == NodeClass::Variable);
        for r in references {
            if r.node_id.server_index != 0 {
                continue;
            }
            let id = r.node_id.node_id;
            let property = r.reference_type_id == ReferenceTypeId::HasProperty;
            let name = r.browse_name.name.as_ref().to_string();
            if parent_is_variable && property {
                let meta = self.meta.entry(parent.clone()).or_default();
                match name.as_str() {
                    "EURange" => meta.range = Some(id),
                    "EngineeringUnits" => meta.unit = Some(id),
                    _ => {}
                }
                continue;
            }
            if below_last || id == self.root || self.met.contains_key(&id) {
                continue;
            }
            if id.namespace == 0 && !self.walk_ns0 {
                continue;
            }
            if r.node_class == NodeClass::Variable
                && self.variables.len() < self.options.max_variables
            {
                self.variables.push(id.clone());
            }
            self.met.insert(
                id,
                Met {
                    parent: parent.clone(),
                    name,
                    class: r.node_class,
                    property,
                },
            );
        }
    }

    /// Browse names from below the root down to `id`.
    fn path(&self, id: &NodeId) -> Vec<String> {
        let mut path = Vec::new();
        let mut at = id;
        while let Some(m) = self.met.get(at) {
            path.push(m.name.clone());
            if path.len() > 64 {
                break;
            }
            at = &m.parent;
        }
        path.reverse();
        path
    }

    /// Reads what each variable is and makes the result.
    async fn describe(self) -> Result<Discovered, String> {
        let timeout = self.options.timeout;
        let mut out = Discovered {
            truncated: self.truncated,
            objects: self
                .met
                .values()
                .filter(|m| m.class == NodeClass::Object)
                .count(),
            ..Discovered::default()
        };
        let mut candidates = Vec::new();
        for id in &self.variables {
            let Some(met) = self.met.get(id) else {
                continue;
            };
            let under_object = self
                .met
                .get(&met.parent)
                .is_none_or(|p| p.class == NodeClass::Object);
            if met.property && under_object && !self.options.object_properties {
                out.object_properties_left_out += 1;
                continue;
            }
            candidates.push(id);
        }
        for (id, met) in &self.met {
            if met.class == NodeClass::Method {
                out.skipped.push(SkippedNode {
                    path: self.path(id),
                    node: id.to_string(),
                    reason: "a method: add it under `methods:` by hand (models.md)".into(),
                });
            }
        }
        let reads: Vec<ReadValueId> = candidates
            .iter()
            .flat_map(|id| ATTRIBUTES.iter().map(|a| read_id(id, *a)))
            .collect();
        let values = read_chunked(timeout, self.session, &reads)
            .await
            .map_err(|e| format!("reading the variables' attributes: {e}"))?;
        let (ranges, units) = self.read_meta(&candidates).await?;
        let mut types = DataTypes::new(self.session, timeout);
        for (i, id) in candidates.iter().enumerate() {
            let attrs = &values[i * ATTRIBUTES.len()..(i + 1) * ATTRIBUTES.len()];
            let path = self.path(id);
            // Many servers repeat the name as the Description: no news.
            let description = text_of(&attrs[4]).filter(|d| Some(d) != path.last());
            match self.variable(attrs, &mut types).await? {
                Ok((datatype, ty, access)) => out.variables.push(FoundVariable {
                    path,
                    node: id.to_string(),
                    datatype,
                    ty,
                    access,
                    range: ranges.get(*id).copied(),
                    unit: units.get(*id).cloned(),
                    description,
                }),
                Err(reason) => out.skipped.push(SkippedNode {
                    path,
                    node: id.to_string(),
                    reason,
                }),
            }
        }
        out.variables
            .sort_by(|a, b| (&a.path, &a.node).cmp(&(&b.path, &b.node)));
        out.skipped
            .sort_by(|a, b| (&a.path, &a.node).cmp(&(&b.path, &b.node)));
        Ok(out)
    }

    /// One variable's type and access from its attributes, or why it
    /// cannot be a property. The outer error is the link's.
    #[allow(clippy::type_complexity)]
    async fn variable(
        &self,
        attrs: &[DataValue],
        types: &mut DataTypes<'_>,
    ) -> Result<Result<(UaDataType, ValueType, Access), String>, String> {
        let [datatype, rank, access, user_access, _, value] = attrs else {
            return Ok(Err("the server's answer was short".into()));
        };
        if let Some(code) = datatype.status.filter(|s| s.is_bad()) {
            return Ok(Err(format!("its DataType cannot be read: {code}")));
        }
        let Some(Variant::NodeId(datatype)) = &datatype.value else {
            return Ok(Err("it has no DataType".into()));
        };
        let current = value.value.as_ref().filter(|_| !value.status().is_bad());
        let rank = match &rank.value {
            Some(Variant::Int32(r)) => *r,
            _ => -1,
        };
        if rank >= 0 || current.is_some_and(Variant::is_array) {
            return Ok(Err(format!(
                "an array (ValueRank {rank}): Ferrite properties are scalars"
            )));
        }
        let resolved = match types.resolve(datatype, current).await? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let bits = |dv: &DataValue| match dv.value {
            Some(Variant::Byte(b)) => Some(b),
            _ => None,
        };
        // The user's access where the server reports it, within the node's.
        let level = match (bits(access), bits(user_access)) {
            (Some(a), Some(u)) => a & u,
            (Some(a), None) => a,
            (None, Some(u)) => u,
            (None, None) => 1,
        };
        let access = match (level & 1 != 0, level & 2 != 0) {
            (true, true) => Access::ReadWrite,
            (true, false) => Access::Read,
            (false, true) => Access::Write,
            (false, false) => {
                return Ok(Err(
                    "neither readable nor writable by this session's user".into()
                ));
            }
        };
        Ok(Ok((resolved, value_type(resolved), access)))
    }

    /// The EURange and EngineeringUnits of the candidates that have them.
    async fn read_meta(
        &self,
        candidates: &[&NodeId],
    ) -> Result<(HashMap<NodeId, (f64, f64)>, HashMap<NodeId, String>), String> {
        let mut wanted: Vec<(NodeId, bool, NodeId)> = Vec::new();
        for id in candidates {
            if let Some(meta) = self.meta.get(*id) {
                if let Some(range) = &meta.range {
                    wanted.push(((*id).clone(), true, range.clone()));
                }
                if let Some(unit) = &meta.unit {
                    wanted.push(((*id).clone(), false, unit.clone()));
                }
            }
        }
        let reads: Vec<ReadValueId> = wanted
            .iter()
            .map(|(_, _, node)| read_id(node, AttributeId::Value))
            .collect();
        let values = read_chunked(self.options.timeout, self.session, &reads)
            .await
            .map_err(|e| format!("reading EURange and EngineeringUnits: {e}"))?;
        let (mut ranges, mut units) = (HashMap::new(), HashMap::new());
        for ((variable, is_range, _), dv) in wanted.into_iter().zip(values) {
            let Some(Variant::ExtensionObject(ext)) = &dv.value else {
                continue;
            };
            if is_range {
                if let Some(r) = ext.inner_as::<Range>()
                    && r.low.is_finite()
                    && r.high.is_finite()
                    && r.low <= r.high
                {
                    ranges.insert(variable, (r.low, r.high));
                }
            } else if let Some(eu) = ext.inner_as::<EUInformation>() {
                let text = eu.display_name.text.as_ref().trim().to_string();
                if !text.is_empty() {
                    units.insert(variable, text);
                }
            }
        }
        Ok((ranges, units))
    }
}

fn text_of(dv: &DataValue) -> Option<String> {
    match &dv.value {
        Some(Variant::LocalizedText(t)) => {
            Some(t.text.as_ref().trim().to_string()).filter(|s| !s.is_empty())
        }
        _ => None,
    }
}

/// The property type for a node of `datatype`.
pub fn value_type(datatype: UaDataType) -> ValueType {
    use UaDataType::*;
    match datatype {
        Boolean => ValueType::Bool,
        SByte | Byte | Int16 | UInt16 | Int32 | UInt32 | Int64 | UInt64 => ValueType::Int,
        Float | Double => ValueType::Float,
        String => ValueType::String,
    }
}

/// DataTypes resolved to one of the twelve scalars, cached by id.
struct DataTypes<'a> {
    session: &'a Session,
    timeout: Duration,
    /// The supertype of each DataType asked about.
    parents: HashMap<NodeId, Option<NodeId>>,
}

/// How many supertypes up a DataType is followed.
const MAX_SUBTYPE_DEPTH: usize = 16;

impl<'a> DataTypes<'a> {
    fn new(session: &'a Session, timeout: Duration) -> Self {
        DataTypes {
            session,
            timeout,
            parents: HashMap::new(),
        }
    }

    /// `datatype` as one of the twelve, or why not. An abstract DataType
    /// (BaseDataType, Number, Integer, UInteger) takes the type of the
    /// current value. The outer error is the link's.
    async fn resolve(
        &mut self,
        datatype: &NodeId,
        value: Option<&Variant>,
    ) -> Result<Result<UaDataType, String>, String> {
        let mut at = datatype.clone();
        for _ in 0..MAX_SUBTYPE_DEPTH {
            if let Some(t) = UaDataType::from_node_id(&at) {
                return Ok(Ok(t));
            }
            if at.namespace == 0 {
                match builtin(&at) {
                    Builtin::Enumeration => return Ok(Ok(UaDataType::Int32)),
                    Builtin::Abstract => {
                        let of_value = value
                            .and_then(Variant::data_type)
                            .and_then(|t| UaDataType::from_node_id(&t.node_id));
                        return Ok(of_value.ok_or_else(|| {
                            format!(
                                "its DataType {datatype} is abstract and its value does not \
                                 say which scalar it holds"
                            )
                        }));
                    }
                    Builtin::Unsupported(name) => {
                        return Ok(Err(format!(
                            "a {name} (DataType {datatype}): no Ferrite type holds it"
                        )));
                    }
                    Builtin::Other => {}
                }
            }
            match self.parent(&at).await? {
                Some(parent) => at = parent,
                None => break,
            }
        }
        Ok(Err(format!(
            "its DataType {datatype} is not a subtype of a scalar Ferrite can hold"
        )))
    }

    /// The supertype of `datatype` (inverse HasSubtype).
    async fn parent(&mut self, datatype: &NodeId) -> Result<Option<NodeId>, String> {
        if let Some(known) = self.parents.get(datatype) {
            return Ok(known.clone());
        }
        let description = BrowseDescription {
            node_id: datatype.clone(),
            browse_direction: BrowseDirection::Inverse,
            reference_type_id: ReferenceTypeId::HasSubtype.into(),
            include_subtypes: false,
            node_class_mask: NodeClassMask::DATA_TYPE.bits(),
            result_mask: BrowseResultMaskFlags::empty().bits(),
        };
        let results =
            tokio::time::timeout(self.timeout, self.session.browse(&[description], 1, None))
                .await
                .map_err(|_| format!("no answer to a Browse within {:?}", self.timeout))?
                .map_err(|e| format!("browsing DataType {datatype}: {e}"))?;
        let parent = results
            .into_iter()
            .next()
            .and_then(|r| r.references)
            .and_then(|refs| refs.into_iter().next())
            .map(|r| r.node_id.node_id);
        self.parents.insert(datatype.clone(), parent.clone());
        Ok(parent)
    }
}

/// What a DataType of namespace 0 outside the twelve means here.
enum Builtin {
    Enumeration,
    Abstract,
    Unsupported(&'static str),
    /// A subtype to follow up.
    Other,
}

fn builtin(id: &NodeId) -> Builtin {
    let is = |t: DataTypeId| *id == t;
    if is(DataTypeId::Enumeration) {
        return Builtin::Enumeration;
    }
    if [
        DataTypeId::BaseDataType,
        DataTypeId::Number,
        DataTypeId::Integer,
        DataTypeId::UInteger,
    ]
    .into_iter()
    .any(is)
    {
        return Builtin::Abstract;
    }
    let unsupported = [
        (DataTypeId::DateTime, "DateTime"),
        (DataTypeId::Guid, "Guid"),
        (DataTypeId::ByteString, "ByteString"),
        (DataTypeId::XmlElement, "XmlElement"),
        (DataTypeId::NodeId, "NodeId"),
        (DataTypeId::ExpandedNodeId, "ExpandedNodeId"),
        (DataTypeId::StatusCode, "StatusCode"),
        (DataTypeId::QualifiedName, "QualifiedName"),
        (DataTypeId::LocalizedText, "LocalizedText"),
        (DataTypeId::Structure, "structure"),
        (DataTypeId::DataValue, "DataValue"),
        (DataTypeId::DiagnosticInfo, "DiagnosticInfo"),
    ];
    unsupported
        .into_iter()
        .find(|(t, _)| is(*t))
        .map_or(Builtin::Other, |(_, name)| Builtin::Unsupported(name))
}
