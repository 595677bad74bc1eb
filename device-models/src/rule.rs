//! `kind: Rule`: a CEL condition and the actions it triggers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Span;

/// The `kind` tag of a rule document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuleKind {
    /// The only value.
    Rule,
}

/// A control rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Always `Rule`.
    pub kind: RuleKind,
    /// The rule's name.
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Whether the rule runs. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A CEL condition, such as `devices["boiler-1"].temperature > 85`.
    pub when: String,
    /// How long the condition must hold before the rule fires.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Span>,
    /// Once active, the rule clears only when this CEL condition holds
    /// (hysteresis). Default: when `when` stops holding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_when: Option<String>,
    /// Also evaluate on this period, not only when a referenced value changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Span>,
    /// Actions run when the rule fires.
    pub then: Vec<Action>,
    /// Actions run when the rule clears.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_clear: Vec<Action>,
    /// At most this many firings run their writes and publishes per period.
    /// Default: 10 per minute.
    #[serde(default)]
    pub rate_limit: RateLimit,
}

fn yes() -> bool {
    true
}

/// How often a rule may act: `{ firings: 10, per: 1m }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Firings (fire or clear) whose writes and publishes run, per period.
    pub firings: u32,
    /// The period.
    pub per: Span,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            firings: 10,
            per: Span(std::time::Duration::from_secs(60)),
        }
    }
}

/// Something a rule does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Write a property through the same checked path as the REST API.
    Write(WriteAction),
    /// Raise an event.
    Event(EventAction),
    /// Publish a message on the embedded broker.
    Publish(PublishAction),
}

/// Writes `value` (a CEL expression) to a device property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteAction {
    /// Device name.
    pub device: String,
    /// Property name.
    pub property: String,
    /// A CEL expression for the value, such as `"40.0"`.
    pub value: String,
    /// While the rule is active, refuse manual (REST) writes and other
    /// rules' writes to this property. Default false.
    #[serde(default)]
    pub hold: bool,
}

/// Severity of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information.
    #[default]
    Info,
    /// Something to look at.
    Warning,
    /// Something to act on now.
    Critical,
}

/// Raises an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventAction {
    /// Default `info`.
    #[serde(default)]
    pub severity: Severity,
    /// The message; `{...}` holds a CEL expression to fill in.
    pub message: String,
}

/// Publishes to the embedded broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishAction {
    /// The topic.
    pub topic: String,
    /// The payload; `{...}` holds a CEL expression to fill in.
    pub payload: String,
    /// Retain the message. Default false.
    #[serde(default)]
    pub retain: bool,
}
