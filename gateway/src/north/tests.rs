//! The northbound's payloads and its delivery bookkeeping, without a broker
//! (tests/north_e2e.rs runs them through Mosquitto).

use ferrite_models::Value;
use ferrite_models::model::ValueType;
use ferrite_proto::sparkplug::Payload;
use ferrite_proto::sparkplug::datatype as dt;
use ferrite_proto::sparkplug::payload::{Metric, metric, property_value};
use ferrite_sync::delta::Change;
use prost::Message as _;
use rumqttc::QoS;

use super::sparkplug::{BirthMetric, Command, DeviceBirth, EdgeNode, MAX_METRICS, REBIRTH};
use super::uns::Uns;
use super::{Deliveries, host_online};

fn boiler() -> DeviceBirth {
    DeviceBirth {
        id: "boiler-1".into(),
        metrics: vec![
            BirthMetric {
                name: "temperature".into(),
                ty: ValueType::Float,
                value: Some((Value::Float(21.5), 1_700_000_000_000)),
                unit: Some("°C".into()),
                min: Some(-20.0),
                max: Some(150.0),
                writable: false,
                description: Some("water out".into()),
            },
            BirthMetric {
                name: "setpoint".into(),
                ty: ValueType::Int,
                value: None,
                unit: None,
                min: None,
                max: None,
                writable: true,
                description: None,
            },
        ],
    }
}

fn change(device: &str, property: &str, ts_ms: i64, value: Value) -> Change {
    Change {
        device: device.into(),
        property: property.into(),
        ts_ms,
        value,
    }
}

fn decode(payload: &[u8]) -> Payload {
    Payload::decode(payload).expect("a Sparkplug B payload")
}

fn property<'a>(m: &'a Metric, key: &str) -> Option<&'a property_value::Value> {
    let set = m.properties.as_ref()?;
    let i = set.keys.iter().position(|k| k == key)?;
    set.values[i].value.as_ref()
}

#[test]
fn births_carry_bd_seq_rebirth_types_units_limits_and_current_values() {
    let mut node = EdgeNode::new("plant", "gw-1", 7);
    let births = node.births(&[boiler()]);
    assert_eq!(births.len(), 2);
    assert_eq!(births[0].topic, "spBv1.0/plant/NBIRTH/gw-1");
    assert_eq!(births[1].topic, "spBv1.0/plant/DBIRTH/gw-1/boiler-1");
    let nbirth = decode(&births[0].payload);
    assert_eq!(nbirth.seq, Some(0), "NBIRTH starts the sequence");
    let bd = nbirth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .expect("bdSeq");
    assert_eq!(bd.value, Some(metric::Value::LongValue(7)));
    let rebirth = nbirth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(REBIRTH))
        .expect("rebirth");
    assert_eq!(
        (rebirth.datatype, &rebirth.value),
        (Some(dt::BOOLEAN), &Some(metric::Value::BooleanValue(false)))
    );

    let dbirth = decode(&births[1].payload);
    assert_eq!(dbirth.seq, Some(1));
    let t = &dbirth.metrics[0];
    assert_eq!(t.name.as_deref(), Some("temperature"));
    assert_eq!((t.alias, t.datatype), (Some(1), Some(dt::DOUBLE)));
    assert_eq!(t.value, Some(metric::Value::DoubleValue(21.5)));
    assert_eq!(t.timestamp, Some(1_700_000_000_000));
    assert_eq!(
        property(t, "engUnit"),
        Some(&property_value::Value::StringValue("°C".into()))
    );
    assert_eq!(
        property(t, "engHigh"),
        Some(&property_value::Value::DoubleValue(150.0))
    );
    assert_eq!(
        property(t, "readOnly"),
        Some(&property_value::Value::BooleanValue(true))
    );
    let s = &dbirth.metrics[1];
    assert_eq!(
        (s.alias, s.datatype, s.is_null),
        (Some(2), Some(dt::INT64), Some(true)),
        "no value yet: null"
    );
    assert_eq!(
        property(s, "readOnly"),
        Some(&property_value::Value::BooleanValue(false))
    );

    let death = decode(&node.death().payload);
    assert_eq!(node.death().topic, "spBv1.0/plant/NDEATH/gw-1");
    assert_eq!(
        death.metrics[0].value,
        Some(metric::Value::LongValue(7)),
        "the death matches the birth"
    );
    assert_eq!(death.seq, None, "NDEATH has no seq");
}

#[test]
fn data_goes_by_alias_one_message_per_device_with_seq_rising_and_history_marked() {
    let mut node = EdgeNode::new("plant", "gw-1", 0);
    node.births(&[
        boiler(),
        DeviceBirth {
            id: "pump".into(),
            ..boiler()
        },
    ]);
    let changes = vec![
        (
            10,
            change("boiler-1", "temperature", 1_000, Value::Float(22.0)),
        ),
        (11, change("pump", "temperature", 1_001, Value::Float(5.0))),
        (12, change("gone", "x", 1_002, Value::Int(1))),
        (13, change("boiler-1", "setpoint", 1_003, Value::Int(60))),
        (14, change("boiler-1", "nope", 1_004, Value::Int(1))),
    ];
    let out = node.data(&changes, 10);
    assert_eq!(
        out.len(),
        2,
        "one message per device, the unknown ones skipped"
    );
    let first = &out[0];
    assert_eq!(first.topic, "spBv1.0/plant/DDATA/gw-1/boiler-1");
    let p = decode(&first.payload);
    assert_eq!(p.seq, Some(3), "NBIRTH 0, two DBIRTHs, then 3");
    assert_eq!(p.metrics.len(), 2, "the device's changes, in order");
    assert_eq!(
        (p.metrics[0].alias, p.metrics[0].name.as_deref()),
        (Some(1), None),
        "alias only"
    );
    assert_eq!(
        p.metrics[0].is_historical,
        Some(true),
        "stored before the births"
    );
    assert_eq!(p.metrics[1].is_historical, None);
    assert_eq!(p.metrics[1].value, Some(metric::Value::LongValue(60)));
    assert_eq!(
        p.metrics[1].timestamp,
        Some(1_003),
        "the reading's own time"
    );
    let second = decode(&out[1].payload);
    assert_eq!(out[1].topic, "spBv1.0/plant/DDATA/gw-1/pump");
    assert_eq!((second.seq, second.metrics[0].alias), (Some(4), Some(3)));

    let only_unknown = node.data(&[(20, change("gone", "x", 1, Value::Int(1)))], 0);
    assert!(only_unknown.is_empty(), "nothing to publish");
    let next = decode(&node.data(&changes[..1], 0)[0].payload);
    assert_eq!(next.seq, Some(5), "no seq spent on what was not made");

    let many: Vec<(u64, Change)> = (0..MAX_METRICS as u64 + 1)
        .map(|i| {
            (
                100 + i,
                change("pump", "setpoint", i as i64, Value::Int(i as i64)),
            )
        })
        .collect();
    let out = node.data(&many, 0);
    assert_eq!(out.len(), 2, "split at MAX_METRICS");
    assert_eq!(decode(&out[0].payload).metrics.len(), MAX_METRICS);
}

#[test]
fn seq_wraps_after_255() {
    let mut node = EdgeNode::new("g", "n", 0);
    node.births(&[boiler()]);
    let mut last = 0;
    for i in 0..300u64 {
        let out = node.data(
            &[(i + 1, change("boiler-1", "setpoint", 0, Value::Int(1)))],
            0,
        );
        last = decode(&out[0].payload).seq.expect("seq");
        assert!(last <= 255);
    }
    assert_eq!(last, (2 + 300 - 1) % 256);
}

#[test]
fn commands_rebirth_and_typed_writes_by_name_or_alias() {
    let mut node = EdgeNode::new("plant", "gw-1", 0);
    node.births(&[boiler()]);
    let payload = |metrics: Vec<Metric>| {
        Payload {
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let rebirth = Metric {
        name: Some(REBIRTH.into()),
        datatype: Some(dt::BOOLEAN),
        value: Some(metric::Value::BooleanValue(true)),
        ..Metric::default()
    };
    assert_eq!(
        node.command("spBv1.0/plant/NCMD/gw-1", &payload(vec![rebirth.clone()])),
        Ok(Some(Command::Rebirth))
    );
    let not = Metric {
        value: Some(metric::Value::BooleanValue(false)),
        ..rebirth
    };
    assert_eq!(
        node.command("spBv1.0/plant/NCMD/gw-1", &payload(vec![not])),
        Ok(None)
    );
    assert!(
        node.command("spBv1.0/plant/NCMD/other", &payload(vec![]))
            .is_err(),
        "another node's"
    );
    assert!(
        node.command("spBv1.0/plant/DCMD/gw-1/boiler-1", b"\xff\xff junk")
            .is_err()
    );

    let by_alias = Metric {
        alias: Some(2),
        datatype: Some(dt::INT32),
        value: Some(metric::Value::IntValue(75)),
        ..Metric::default()
    };
    let by_name = Metric {
        name: Some("temperature".into()),
        datatype: Some(dt::STRING),
        value: Some(metric::Value::StringValue("hot".into())),
        ..Metric::default()
    };
    let unknown = Metric {
        name: Some("nope".into()),
        ..by_alias.clone()
    };
    let Ok(Some(Command::Write {
        device,
        writes,
        refused,
    })) = node.command(
        "spBv1.0/plant/DCMD/gw-1/boiler-1",
        &payload(vec![by_alias, by_name, unknown]),
    )
    else {
        panic!("a write");
    };
    assert_eq!(device, "boiler-1");
    assert_eq!(writes, vec![("setpoint".to_string(), Value::Int(75))]);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].1.contains("expected a float"), "{refused:?}");
    assert!(refused[1].1.contains("no metric `nope`"), "{refused:?}");
}

#[test]
fn only_a_delivered_prefix_moves_the_backlog() {
    let mut d = Deliveries::default();
    d.push(QoS::AtMostOnce, None); // a birth
    d.push(QoS::AtLeastOnce, Some((10, 4)));
    d.push(QoS::AtLeastOnce, Some((20, 10)));
    d.covered(25);
    assert_eq!(d.take_delivered(), None);
    d.sent(0);
    d.sent(1);
    d.sent(2);
    assert_eq!(d.take_delivered(), Some((None, 0, 1)), "the birth, written");
    d.acked(2);
    assert_eq!(d.take_delivered(), None, "2 waits for 1");
    d.acked(1);
    assert_eq!(
        d.take_delivered(),
        Some((Some(25), 14, 2)),
        "both, and what the last covers"
    );
    assert_eq!(d.len(), 0);
    d.covered(30);
    assert_eq!(d.take_delivered(), Some((Some(30), 0, 0)));
}

#[test]
fn uns_values_status_and_writes() {
    let mut uns = Uns::new("acme/plant-1/line-1/");
    uns.set_units(
        [(
            ("boiler-1".to_string(), "temperature".to_string()),
            "°C".to_string(),
        )]
        .into(),
    );
    let out = uns.data(
        &[(
            5,
            change("boiler-1", "temperature", 1_000, Value::Float(21.5)),
        )],
        5,
    );
    let message = &out[0];
    assert_eq!(message.topic, "acme/plant-1/line-1/boiler-1/temperature");
    let body: serde_json::Value = serde_json::from_slice(&message.payload).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"value": 21.5, "ts": 1000, "unit": "°C", "historical": true})
    );
    assert_eq!(uns.status_topic(), "acme/plant-1/line-1/_status");
    assert_eq!(uns.command_topic(), "acme/plant-1/line-1/+/+/set");
    assert_eq!(
        uns.command("acme/plant-1/line-1/boiler-1/setpoint/set", b"60"),
        Ok(("boiler-1".into(), "setpoint".into(), serde_json::json!(60)))
    );
    assert!(
        uns.command("acme/plant-1/line-1/boiler-1/setpoint/set", b"sixty")
            .is_err()
    );
    assert!(
        uns.command("elsewhere/boiler-1/setpoint/set", b"1")
            .is_err()
    );
}

#[test]
fn the_primary_hosts_state_in_both_spec_versions() {
    assert!(host_online(br#"{"online": true, "timestamp": 1}"#));
    assert!(!host_online(br#"{"online": false, "timestamp": 1}"#));
    assert!(host_online(b"ONLINE"));
    assert!(!host_online(b"OFFLINE"));
    assert!(!host_online(b"junk"));
}
