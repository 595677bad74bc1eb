//! The uplink's MQTT topics, shared by both ends.
//!
//! ```text
//! gateway → cloud   ferrite/v1/gw/GW/up/hello      Hello
//!                   ferrite/v1/gw/GW/up/batch      DeltaBatch, zstd
//!                   ferrite/v1/gw/GW/up/reported   Reported
//!                   ferrite/v1/gw/GW/up/config     ConfigReport
//!                   ferrite/v1/gw/GW/up/events     EventBatch
//!                   ferrite/v1/gw/GW/up/status     "online" / "offline" (its will), retained
//! cloud → gateway   ferrite/v1/gw/GW/down/resume   Resume
//!                   ferrite/v1/gw/GW/down/ack      Ack
//!                   ferrite/v1/gw/GW/down/desired  DesiredPatch
//!                   ferrite/v1/gw/GW/down/config   ConfigBundle
//!                   ferrite/v1/gw/GW/down/events_ack EventAck
//! the cloud         ferrite/v1/cloud/status        "online" / "offline", retained
//! ```
//!
//! Everything goes at QoS 1. A gateway id is a config name (letters,
//! digits, `-`, `_`, `.`), so it is one topic level.

/// What comes before every topic.
pub const ROOT: &str = "ferrite/v1";

/// The cloud's status topic: it publishes `online` (retained) when it
/// starts, which tells connected gateways to say Hello again.
pub const CLOUD_STATUS: &str = "ferrite/v1/cloud/status";

/// What the cloud subscribes to: everything gateways send.
pub const ALL_UP: &str = "ferrite/v1/gw/+/up/#";

/// A message kind from gateway to cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Up {
    /// `Hello`, after every connect.
    Hello,
    /// A `DeltaBatch`.
    Batch,
    /// A `Reported`.
    Reported,
    /// A `ConfigReport`.
    Config,
    /// An `EventBatch`.
    Events,
    /// `online` / `offline`.
    Status,
}

/// A message kind from cloud to gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// `Resume`.
    Resume,
    /// `Ack`.
    Ack,
    /// `DesiredPatch`.
    Desired,
    /// `ConfigBundle`.
    Config,
    /// `EventAck`.
    EventsAck,
}

impl Up {
    /// Every kind.
    pub const ALL: [Up; 6] = [
        Up::Hello,
        Up::Batch,
        Up::Reported,
        Up::Config,
        Up::Events,
        Up::Status,
    ];

    fn name(self) -> &'static str {
        match self {
            Up::Hello => "hello",
            Up::Batch => "batch",
            Up::Reported => "reported",
            Up::Config => "config",
            Up::Events => "events",
            Up::Status => "status",
        }
    }
}

impl Down {
    /// Every kind.
    pub const ALL: [Down; 5] = [
        Down::Resume,
        Down::Ack,
        Down::Desired,
        Down::Config,
        Down::EventsAck,
    ];

    fn name(self) -> &'static str {
        match self {
            Down::Resume => "resume",
            Down::Ack => "ack",
            Down::Desired => "desired",
            Down::EventsAck => "events_ack",
            Down::Config => "config",
        }
    }
}

/// The topic of `kind` from `gateway`.
pub fn up(gateway: &str, kind: Up) -> String {
    format!("{ROOT}/gw/{gateway}/up/{}", kind.name())
}

/// The topic of `kind` to `gateway`.
pub fn down(gateway: &str, kind: Down) -> String {
    format!("{ROOT}/gw/{gateway}/down/{}", kind.name())
}

/// What a gateway subscribes to.
pub fn all_down(gateway: &str) -> String {
    format!("{ROOT}/gw/{gateway}/down/#")
}

/// The gateway and kind of an upward topic.
pub fn parse_up(topic: &str) -> Option<(&str, Up)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/gw/")?;
    let (gateway, kind) = rest.split_once("/up/")?;
    if gateway.is_empty() || gateway.contains('/') {
        return None;
    }
    let kind = Up::ALL.into_iter().find(|k| k.name() == kind)?;
    Some((gateway, kind))
}

/// The kind of a downward topic meant for `gateway`.
pub fn parse_down(gateway: &str, topic: &str) -> Option<Down> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/gw/")?;
    let kind = rest.strip_prefix(gateway)?.strip_prefix("/down/")?;
    Down::ALL.into_iter().find(|k| k.name() == kind)
}

/// Whether gateway `gateway` may publish on `topic`: only its own upward
/// topics (`ferrite/v1/gw/GW/up/...`). The embedded broker's guard and the
/// Mosquitto ACL that `ferrite-cloud gateway acl` writes say the same.
pub fn gateway_may_publish(gateway: &str, topic: &str) -> bool {
    let prefix = format!("{ROOT}/gw/{gateway}/up/");
    topic.len() > prefix.len() && topic.starts_with(&prefix) && !topic.contains(['+', '#', '\0'])
}

/// Whether gateway `gateway` may subscribe to `filter`: its own downward
/// topics (wildcards allowed below `ferrite/v1/gw/GW/down/`) and the
/// cloud's status, nothing else.
pub fn gateway_may_subscribe(gateway: &str, filter: &str) -> bool {
    let prefix = format!("{ROOT}/gw/{gateway}/down/");
    filter == CLOUD_STATUS
        || (filter.len() > prefix.len() && filter.starts_with(&prefix) && !filter.contains('\0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_strangers_are_refused() {
        for kind in Up::ALL {
            assert_eq!(parse_up(&up("gw-01", kind)), Some(("gw-01", kind)));
        }
        for kind in Down::ALL {
            assert_eq!(parse_down("gw-01", &down("gw-01", kind)), Some(kind));
            assert_eq!(parse_down("gw-02", &down("gw-01", kind)), None);
        }
        assert_eq!(parse_up("ferrite/v1/gw/a/b/up/batch"), None);
        assert_eq!(parse_up("ferrite/v1/gw//up/batch"), None);
        assert_eq!(parse_up("ferrite/v1/gw/a/up/other"), None);
        assert_eq!(parse_up("elsewhere/gw/a/up/batch"), None);
    }

    #[test]
    fn a_gateway_may_use_its_own_topics_only() {
        for kind in Up::ALL {
            assert!(gateway_may_publish("a", &up("a", kind)));
            assert!(!gateway_may_publish("b", &up("a", kind)));
        }
        for kind in Down::ALL {
            assert!(!gateway_may_publish("a", &down("a", kind)), "{kind:?}");
            assert!(gateway_may_subscribe("a", &down("a", kind)));
            assert!(!gateway_may_subscribe("b", &down("a", kind)));
        }
        assert!(gateway_may_subscribe("a", &all_down("a")));
        assert!(gateway_may_subscribe("a", CLOUD_STATUS));
        assert!(!gateway_may_publish("a", CLOUD_STATUS));
        for filter in [
            "#",
            "ferrite/#",
            "ferrite/v1/gw/+/down/#",
            "ferrite/v1/gw/a/#",
            "ferrite/v1/gw/a/down/",
            "ferrite/v1/gw/ab/down/#",
            "ferrite/v1/gw/+/up/#",
        ] {
            assert!(!gateway_may_subscribe("a", filter), "{filter}");
        }
        for topic in [
            "ferrite/v1/gw/a/up/",
            "ferrite/v1/gw/a/up/#",
            "ferrite/v1/gw/ab/up/batch",
        ] {
            assert!(!gateway_may_publish("a", topic), "{topic}");
        }
    }
}
