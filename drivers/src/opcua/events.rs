//! Events and alarms (A&C): one monitored item on the device's notifier
//! (`opcua.events.notifier`), whose EventFilter selects the fields of
//! BaseEventType and of the condition types that Ferrite journals. The item
//! lives in a subscription of its own, so events survive a lost connection
//! like data changes do (transfer, republish: `resume`); each event the
//! server reports becomes a [`DeviceEvent`] in the events journal.

use std::sync::Arc;

use ferrite_core::driver::{DeviceEvent, DriverContext, Severity};
use ferrite_models::Value;
use ferrite_models::device::OpcuaEvents;
use opcua::types::{
    AttributeId, ContentFilter, EventFilter, ExtensionObject, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, NumericRange, ObjectTypeId, QualifiedName,
    ReadValueId, SimpleAttributeOperand, Variant,
};

/// The client handle of the events item (data items count up from 1).
pub(super) const EVENTS_HANDLE: u32 = u32::MAX;

/// The kind of a journal entry for an event, and for an alarm (an event
/// of a condition type: it names its condition).
pub(super) const EVENT: &str = "opcua_event";
/// See [`EVENT`].
pub(super) const ALARM: &str = "opcua_alarm";

/// The fields selected, in order: the type that defines each, and its
/// browse path from there.
const FIELDS: [(ObjectTypeId, &str); 10] = [
    (ObjectTypeId::BaseEventType, "EventId"),
    (ObjectTypeId::BaseEventType, "EventType"),
    (ObjectTypeId::BaseEventType, "SourceName"),
    (ObjectTypeId::BaseEventType, "Time"),
    (ObjectTypeId::BaseEventType, "Message"),
    (ObjectTypeId::BaseEventType, "Severity"),
    (ObjectTypeId::ConditionType, "ConditionName"),
    (ObjectTypeId::ConditionType, "Retain"),
    (ObjectTypeId::AlarmConditionType, "ActiveState/Id"),
    (ObjectTypeId::AcknowledgeableConditionType, "AckedState/Id"),
];

/// The monitored item on `notifier`, keeping up to `settings.queue()`
/// events while the gateway is away.
pub(super) fn monitored_item(
    notifier: &NodeId,
    settings: &OpcuaEvents,
) -> MonitoredItemCreateRequest {
    let select_clauses = FIELDS
        .iter()
        .map(|(ty, path)| SimpleAttributeOperand {
            type_definition_id: (*ty).into(),
            browse_path: Some(path.split('/').map(|p| QualifiedName::new(0, p)).collect()),
            attribute_id: AttributeId::Value as u32,
            index_range: NumericRange::None,
        })
        .collect();
    let filter = EventFilter {
        select_clauses: Some(select_clauses),
        where_clause: ContentFilter { elements: None },
    };
    MonitoredItemCreateRequest {
        item_to_monitor: ReadValueId {
            node_id: notifier.clone(),
            attribute_id: AttributeId::EventNotifier as u32,
            index_range: NumericRange::None,
            data_encoding: QualifiedName::null(),
        },
        monitoring_mode: MonitoringMode::Reporting,
        requested_parameters: MonitoringParameters {
            client_handle: EVENTS_HANDLE,
            sampling_interval: 0.0,
            filter: ExtensionObject::from_message(filter),
            queue_size: settings.queue(),
            discard_oldest: true,
        },
    }
}

/// Where a device's events go: the events journal, through its context.
pub(super) struct EventSink {
    pub(super) device: Arc<str>,
    pub(super) endpoint: String,
    pub(super) min_severity: u16,
    pub(super) ctx: DriverContext,
}

impl EventSink {
    /// Journals one event, given its selected fields (in [`FIELDS`]
    /// order), unless it is below `min_severity`.
    pub(super) fn take(&self, fields: &[Variant]) {
        if let Some(event) = self.event(fields) {
            self.ctx.raise(event);
        }
    }

    fn event(&self, fields: &[Variant]) -> Option<DeviceEvent> {
        let field = |i: usize| fields.get(i).filter(|v| !matches!(v, Variant::Empty));
        let text = |i: usize| -> Option<String> {
            match field(i)? {
                Variant::String(s) => s.value().clone(),
                Variant::LocalizedText(t) => t.text.value().clone(),
                Variant::NodeId(id) => Some(id.to_string()),
                Variant::ExpandedNodeId(id) => Some(id.node_id.to_string()),
                _ => None,
            }
            .filter(|s| !s.is_empty())
        };
        let flag = |i: usize| match field(i)? {
            Variant::Boolean(b) => Some(*b),
            _ => None,
        };
        let severity = match field(5) {
            Some(Variant::UInt16(s)) => *s,
            _ => 0,
        };
        if severity < self.min_severity {
            return None;
        }
        let source = text(2);
        let condition = text(6);
        let mut details: Vec<(&'static str, Value)> = Vec::new();
        let mut put = |key: &'static str, value: Option<Value>| {
            if let Some(v) = value {
                details.push((key, v));
            }
        };
        if let Some(Variant::ByteString(id)) = field(0) {
            let hex: String = id.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            put("event_id", Some(Value::String(hex)));
        }
        put("event_type", text(1).map(Value::String));
        put("source_name", source.clone().map(Value::String));
        if let Some(Variant::DateTime(t)) = field(3) {
            let micros = t.as_chrono().timestamp_micros();
            put(
                "time",
                Some(Value::String(ferrite_core::time::rfc3339(micros))),
            );
        }
        put("ua_severity", Some(Value::Int(i64::from(severity))));
        put("condition", condition.clone().map(Value::String));
        put("retain", flag(7).map(Value::Bool));
        put("active", flag(8).map(Value::Bool));
        put("acked", flag(9).map(Value::Bool));
        let message = text(4).unwrap_or_else(|| {
            format!(
                "an event from {} on {}",
                source.as_deref().unwrap_or("the server"),
                self.endpoint
            )
        });
        Some(DeviceEvent {
            device: self.device.to_string(),
            source: "opcua",
            severity: severity_of(severity),
            kind: if condition.is_some() { ALARM } else { EVENT },
            message,
            details,
        })
    }
}

/// An OPC UA severity (1 to 1000; Part 5's guidance: 801 and up high, 401
/// to 800 medium) as the journal's.
fn severity_of(ua: u16) -> Severity {
    match ua {
        801.. => Severity::Critical,
        401..=800 => Severity::Warning,
        _ => Severity::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{ByteString, DateTime, LocalizedText, UAString};

    fn sink_at(min_severity: u16) -> (EventSink, tokio::sync::mpsc::Receiver<DeviceEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let ctx = DriverContext::standalone(tx);
        let sink = EventSink {
            device: Arc::from("d"),
            endpoint: "opc.tcp://x".into(),
            min_severity,
            ctx,
        };
        (sink, rx)
    }

    fn fields(severity: u16, condition: Option<&str>) -> Vec<Variant> {
        vec![
            Variant::ByteString(ByteString::from(vec![0xab, 0x01])),
            Variant::NodeId(Box::new(ObjectTypeId::AlarmConditionType.into())),
            Variant::String(UAString::from("Boiler")),
            Variant::DateTime(Box::new(DateTime::now())),
            Variant::LocalizedText(Box::new(LocalizedText::new("", "too hot"))),
            Variant::UInt16(severity),
            condition.map_or(Variant::Empty, |c| Variant::String(UAString::from(c))),
            Variant::Boolean(true),
            Variant::Boolean(true),
            Variant::Boolean(false),
        ]
    }

    #[test]
    fn an_alarm_is_journalled_with_its_fields_and_mapped_severity() {
        let (sink, mut rx) = sink_at(1);
        sink.take(&fields(900, Some("HighTemp")));
        let event = rx.try_recv().expect("raised");
        assert_eq!(event.kind, ALARM);
        assert_eq!(event.severity, Severity::Critical);
        assert_eq!(event.message, "too hot");
        let get = |k: &str| {
            event
                .details
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("condition"), Some(Value::String("HighTemp".into())));
        assert_eq!(get("active"), Some(Value::Bool(true)));
        assert_eq!(get("acked"), Some(Value::Bool(false)));
        assert_eq!(get("ua_severity"), Some(Value::Int(900)));
        assert_eq!(get("event_id"), Some(Value::String("ab01".into())));
        assert_eq!(get("source_name"), Some(Value::String("Boiler".into())));
    }

    #[test]
    fn plain_events_and_the_severity_floor() {
        let (sink, mut rx) = sink_at(300);
        sink.take(&fields(200, None));
        assert!(rx.try_recv().is_err(), "below min_severity");
        sink.take(&fields(500, None));
        let event = rx.try_recv().expect("raised");
        assert_eq!((event.kind, event.severity), (EVENT, Severity::Warning));
        // Fields missing or of the wrong type are left out, never a panic.
        let (sink, mut rx) = sink_at(1);
        sink.take(&[Variant::Boolean(true)]);
        assert!(rx.try_recv().is_err(), "no severity: 0, below 1");
        sink.take(&[
            Variant::Empty,
            Variant::Empty,
            Variant::Empty,
            Variant::Empty,
            Variant::Empty,
            Variant::UInt16(10),
        ]);
        let event = rx.try_recv().expect("raised");
        assert_eq!(event.message, "an event from the server on opc.tcp://x");
        assert_eq!(event.details, vec![("ua_severity", Value::Int(10))]);
    }
}
