//! Method calls: a model's `methods` called on the server with the Call
//! service. Each input is sent as the DataType the method's
//! `InputArguments` property declares (read once per session), so a model
//! need not repeat the server's types; a method without that property gets
//! the default type of each input (Boolean, Int32, Double, String).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ferrite_models::Value;
use ferrite_models::model::{UaDataType, ValueType};
use ferrite_models::ua::{from_variant, to_variant};
use opcua::client::Session;
use opcua::types::{
    Argument, BrowsePath, CallMethodRequest, NodeId, QualifiedName, ReferenceTypeId, RelativePath,
    RelativePathElement, TimestampsToReturn, Variant,
};

use super::status;
use ferrite_core::driver::DriverError;

/// One model method as the driver sees it.
#[derive(Debug, Clone)]
pub(super) struct MethodPoint {
    pub(super) name: String,
    /// The object it is called on and the method node, or why they do not
    /// parse.
    nodes: Result<(NodeId, NodeId), String>,
    inputs: Vec<(String, ValueType)>,
    outputs: Vec<(String, ValueType)>,
}

/// The model's methods that have an OPC UA binding.
pub(super) fn methods_of(model: &ferrite_models::DeviceModel) -> Vec<MethodPoint> {
    let args = |list: &[ferrite_models::model::Argument]| {
        list.iter().map(|a| (a.name.clone(), a.ty)).collect()
    };
    model
        .methods
        .iter()
        .filter_map(|(name, m)| {
            let b = m.opcua.as_ref()?;
            let parse = |id: &ferrite_models::model::NodeId| {
                NodeId::from_str(&id.0).map_err(|_| format!("cannot parse NodeId `{id}`"))
            };
            Some(MethodPoint {
                name: name.clone(),
                nodes: parse(&b.object).and_then(|o| Ok((o, parse(&b.method)?))),
                inputs: args(&m.inputs),
                outputs: args(&m.outputs),
            })
        })
        .collect()
}

/// The DataType of each input of a method, `None` where the server
/// declares one Ferrite has no type for.
type Declared = Arc<Vec<Option<UaDataType>>>;

/// The DataTypes of each method's inputs, as read on one session: a new
/// session (a restarted server may have changed them) reads them again.
#[derive(Default)]
pub(super) struct InputTypes {
    /// Per method node: the session it was read on, and the types. (A
    /// weak pointer: it keeps the session's allocation, so a later session
    /// cannot come to the same address and pass for it.)
    known: Mutex<HashMap<NodeId, (Weak<Session>, Declared)>>,
}

impl InputTypes {
    async fn of(
        &self,
        session: &Arc<Session>,
        method: &NodeId,
        timeout: Duration,
    ) -> Result<Declared, DriverError> {
        let lock = || self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read_on, types)) = lock().get(method)
            && read_on.ptr_eq(&Arc::downgrade(session))
        {
            return Ok(types.clone());
        }
        let types = Arc::new(read_input_types(session, method, timeout).await?);
        lock().insert(method.clone(), (Arc::downgrade(session), types.clone()));
        Ok(types)
    }
}

/// Reads the `InputArguments` property of `method`: empty when it has none
/// (a method without inputs need not have it).
async fn read_input_types(
    session: &Session,
    method: &NodeId,
    timeout: Duration,
) -> Result<Vec<Option<UaDataType>>, DriverError> {
    let path = BrowsePath {
        starting_node: method.clone(),
        relative_path: RelativePath {
            elements: Some(vec![RelativePathElement {
                reference_type_id: ReferenceTypeId::HasProperty.into(),
                is_inverse: false,
                include_subtypes: true,
                target_name: QualifiedName::new(0, "InputArguments"),
            }]),
        },
    };
    let found =
        status::within(timeout, session.translate_browse_paths_to_node_ids(&[path])).await?;
    let Some(target) = found
        .first()
        .filter(|r| r.status_code.is_good())
        .and_then(|r| r.targets.as_ref()?.first())
    else {
        return Ok(Vec::new());
    };
    let read = super::read_values(&[&target.target_id.node_id]);
    let values = status::within(
        timeout,
        session.read(&read, TimestampsToReturn::Neither, 0.0),
    )
    .await?;
    let Some(Variant::Array(array)) = values.first().and_then(|dv| dv.value.as_ref()) else {
        return Ok(Vec::new());
    };
    Ok(array
        .values
        .iter()
        .map(|v| match v {
            Variant::ExtensionObject(o) => o
                .inner_as::<Argument>()
                .and_then(|a| UaDataType::from_node_id(&a.data_type)),
            _ => None,
        })
        .collect())
}

/// Calls `method` with `inputs` (checked against the model, in declared
/// order) and returns its declared outputs.
pub(super) async fn call(
    methods: &[MethodPoint],
    types: &InputTypes,
    session: &Arc<Session>,
    timeout: Duration,
    method: &str,
    inputs: Vec<Value>,
) -> Result<Vec<Value>, DriverError> {
    let Some(m) = methods.iter().find(|m| m.name == method) else {
        return Err(DriverError::Refused(format!(
            "no OPC UA binding for method `{method}`"
        )));
    };
    let (object, node) = m
        .nodes
        .as_ref()
        .map_err(|e| DriverError::Refused(e.clone()))?;
    let declared = types.of(session, node, timeout).await?;
    let mut arguments = Vec::with_capacity(inputs.len());
    for (i, (value, (name, ty))) in inputs.iter().zip(&m.inputs).enumerate() {
        let datatype = declared
            .get(i)
            .copied()
            .flatten()
            .unwrap_or(UaDataType::default_for(*ty));
        let variant = to_variant(value, datatype)
            .map_err(|e| DriverError::Rejected(format!("input `{name}`: {e}")))?;
        arguments.push(variant);
    }
    let request = CallMethodRequest {
        object_id: object.clone(),
        method_id: node.clone(),
        input_arguments: Some(arguments),
    };
    let results = status::within(timeout, session.call(vec![request])).await?;
    let Some(result) = results.into_iter().next() else {
        return Err(DriverError::Refused(
            "the server answered the call with no result".into(),
        ));
    };
    if result.status_code.is_bad() {
        let bad_input = result
            .input_argument_results
            .iter()
            .flatten()
            .zip(&m.inputs)
            .find(|(code, _)| code.is_bad());
        return Err(match bad_input {
            Some((code, (name, _))) => DriverError::Rejected(format!("input `{name}`: {code}")),
            None => status::error(result.status_code),
        });
    }
    let outputs = result.output_arguments.unwrap_or_default();
    if outputs.len() < m.outputs.len() {
        return Err(DriverError::Refused(format!(
            "`{method}` returned {} outputs; the model declares {}",
            outputs.len(),
            m.outputs.len()
        )));
    }
    m.outputs
        .iter()
        .zip(&outputs)
        .map(|((name, ty), variant)| {
            from_variant(variant, *ty)
                .map_err(|e| DriverError::Refused(format!("output `{name}`: {e}")))
        })
        .collect()
}
