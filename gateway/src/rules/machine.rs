//! A rule's state machine, free of I/O and clocks so that it can be tested
//! step by step.
//!
//! ```text
//!        when ∧ for = 0                       clear_when (or ¬when)
//! Idle ─────────────────────────▶ Active ─────────────────────────▶ Idle
//!   │ when                          ▲         (runs on_clear)
//!   ▼                               │ still when, `for` elapsed
//! Pending(since) ───────────────────┘         (runs then)
//!   │ ¬when
//!   ▼
//! Idle
//! ```
//!
//! An evaluation that fails (a value not read yet, a type error) changes
//! nothing.

use serde::{Deserialize, Serialize};

use crate::time::Micros;

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Phase {
    /// The condition does not hold.
    Idle,
    /// The condition holds, for less than `for:` so far.
    Pending {
        /// Since when it holds.
        since: Micros,
    },
    /// The rule fired and has not cleared yet.
    Active {
        /// When it fired.
        since: Micros,
    },
}

/// What a step asks the engine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Stay,
    /// Wait: the condition holds, and the rule fires at this time if it
    /// still holds then.
    Wait {
        /// When to look again.
        until: Micros,
    },
    /// Run the `then` actions.
    Fire,
    /// Run the `on_clear` actions.
    Clear,
}

/// What one evaluation found: `when`, and `clear_when` if the rule has one.
/// `None`: the expression could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The `when` condition.
    pub when: Option<bool>,
    /// The `clear_when` condition, if the rule has one.
    pub clear_when: Option<Option<bool>>,
}

impl Phase {
    /// Advances on `verdict` at `now`, with a hold of `hold` microseconds.
    pub fn step(&mut self, verdict: Verdict, hold: Micros, now: Micros) -> Step {
        match *self {
            Phase::Idle => match verdict.when {
                Some(true) if hold <= 0 => {
                    *self = Phase::Active { since: now };
                    Step::Fire
                }
                Some(true) => {
                    *self = Phase::Pending { since: now };
                    Step::Wait { until: now + hold }
                }
                _ => Step::Stay,
            },
            Phase::Pending { since } => match verdict.when {
                Some(false) => {
                    *self = Phase::Idle;
                    Step::Stay
                }
                Some(true) if now >= since.saturating_add(hold) => {
                    *self = Phase::Active { since: now };
                    Step::Fire
                }
                _ => Step::Wait {
                    until: since.saturating_add(hold),
                },
            },
            Phase::Active { .. } => {
                let clear = match verdict.clear_when {
                    Some(clear_when) => clear_when,
                    None => verdict.when.map(|w| !w),
                };
                if clear == Some(true) {
                    *self = Phase::Idle;
                    Step::Clear
                } else {
                    Step::Stay
                }
            }
        }
    }

    /// The state's name, as the API shows it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Pending { .. } => "pending",
            Phase::Active { .. } => "active",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when(w: bool) -> Verdict {
        Verdict {
            when: Some(w),
            clear_when: None,
        }
    }

    fn with_clear(w: bool, c: bool) -> Verdict {
        Verdict {
            when: Some(w),
            clear_when: Some(Some(c)),
        }
    }

    #[test]
    fn without_a_hold_the_rule_fires_at_once_and_clears_when_the_condition_stops() {
        let mut p = Phase::Idle;
        assert_eq!(p.step(when(false), 0, 1), Step::Stay);
        assert_eq!(p.step(when(true), 0, 2), Step::Fire);
        assert_eq!(p, Phase::Active { since: 2 });
        assert_eq!(p.step(when(true), 0, 3), Step::Stay, "fires once");
        assert_eq!(p.step(when(false), 0, 4), Step::Clear);
        assert_eq!(p, Phase::Idle);
    }

    #[test]
    fn a_hold_fires_only_if_the_condition_lasts() {
        let mut p = Phase::Idle;
        assert_eq!(p.step(when(true), 10, 100), Step::Wait { until: 110 });
        assert_eq!(p.step(when(true), 10, 105), Step::Wait { until: 110 });
        assert_eq!(p.step(when(false), 10, 106), Step::Stay);
        assert_eq!(p, Phase::Idle, "a dip restarts the hold");
        assert_eq!(p.step(when(true), 10, 107), Step::Wait { until: 117 });
        assert_eq!(p.step(when(true), 10, 117), Step::Fire);
    }

    #[test]
    fn clear_when_gives_hysteresis() {
        let mut p = Phase::Active { since: 0 };
        // temperature 83: `when` (> 85) is false, `clear_when` (< 80) too.
        assert_eq!(p.step(with_clear(false, false), 0, 1), Step::Stay);
        assert_eq!(p.step(with_clear(false, true), 0, 2), Step::Clear);
    }

    #[test]
    fn a_failed_evaluation_changes_nothing() {
        let unknown = Verdict {
            when: None,
            clear_when: None,
        };
        for start in [
            Phase::Idle,
            Phase::Pending { since: 5 },
            Phase::Active { since: 5 },
        ] {
            let mut p = start;
            let step = p.step(unknown, 10, 7);
            assert_eq!(p, start);
            assert!(matches!(step, Step::Stay | Step::Wait { .. }));
        }
    }
}
