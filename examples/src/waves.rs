//! Values that change over time.

use std::time::Duration;

use ferrite_models::Value;
use ferrite_models::model::{Property, ValueType};
use ferrite_models::units::Span;
use serde::Deserialize;

/// The shape of a simulated signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Sine between min and max over `period`.
    Sine,
    /// Sawtooth from min to max over `period`.
    Ramp,
    /// min for half the period, max for the other half.
    Square,
    /// Uniform noise between min and max.
    Noise,
    /// Rises by `rate` per second from min, without end (energy counters).
    Counter,
    /// Stays at min.
    Constant,
}

/// A signal for one property.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Its shape.
    pub shape: Shape,
    /// Low end.
    #[serde(default)]
    pub min: f64,
    /// High end.
    #[serde(default = "one_hundred")]
    pub max: f64,
    /// Period of sine, ramp and square. Default 60 s.
    #[serde(default)]
    pub period: Option<Span>,
    /// Increase per second of a counter. Default 1.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Fixed text for string properties.
    #[serde(default)]
    pub text: Option<String>,
}

fn one_hundred() -> f64 {
    100.0
}

impl Wave {
    /// The default signal for a property: a sine within its limits for
    /// numbers, a slow square for bools, the device name for text.
    pub fn default_for(device: &str, property: &Property) -> Wave {
        let (min, max) = match (property.min, property.max) {
            (Some(lo), Some(hi)) => (lo + (hi - lo) * 0.1, hi - (hi - lo) * 0.1),
            (Some(lo), None) => (lo, lo + 100.0),
            (None, Some(hi)) => (hi - 100.0, hi),
            (None, None) => (10.0, 90.0),
        };
        let shape = match property.ty {
            ValueType::Bool => Shape::Square,
            ValueType::String => Shape::Constant,
            ValueType::Int if property.unit.as_deref().is_some_and(|u| u.ends_with("Wh")) => {
                Shape::Counter
            }
            ValueType::Int | ValueType::Float => Shape::Sine,
        };
        Wave {
            shape,
            min,
            max,
            period: Some(Span(Duration::from_secs(if shape == Shape::Square {
                20
            } else {
                60
            }))),
            rate: Some(10.0),
            text: Some(format!("SIM-{device}")),
        }
    }

    /// The value at `t` seconds since the start, typed for `ty`.
    pub fn at(&self, t: f64, ty: ValueType) -> Value {
        let period = self
            .period
            .map_or(60.0, |p| p.get().as_secs_f64())
            .max(0.001);
        let phase = (t / period).fract();
        let span = self.max - self.min;
        let x = match self.shape {
            Shape::Sine => self.min + span * (0.5 + 0.5 * (phase * std::f64::consts::TAU).sin()),
            Shape::Ramp => self.min + span * phase,
            Shape::Square => {
                if phase < 0.5 {
                    self.min
                } else {
                    self.max
                }
            }
            Shape::Noise => self.min + span * rand::random::<f64>(),
            Shape::Counter => self.min + self.rate.unwrap_or(1.0) * t,
            Shape::Constant => self.min,
        };
        match ty {
            ValueType::Bool => Value::Bool(x > self.min + span / 2.0),
            ValueType::Int => Value::Int(x.round() as i64),
            ValueType::Float => Value::Float((x * 100.0).round() / 100.0),
            ValueType::String => Value::String(self.text.clone().unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_stay_within_their_range() {
        let wave = |shape| Wave {
            shape,
            min: 10.0,
            max: 20.0,
            period: Some(Span(Duration::from_secs(10))),
            rate: Some(2.0),
            text: None,
        };
        for shape in [Shape::Sine, Shape::Ramp, Shape::Square, Shape::Noise] {
            for t in 0..50 {
                let v = wave(shape)
                    .at(f64::from(t) * 0.7, ValueType::Float)
                    .as_f64()
                    .unwrap_or(-1.0);
                assert!((10.0..=20.0).contains(&v), "{shape:?} at {t}: {v}");
            }
        }
        assert_eq!(wave(Shape::Counter).at(5.0, ValueType::Int), Value::Int(20));
        assert_eq!(
            wave(Shape::Ramp).at(5.0, ValueType::Float),
            Value::Float(15.0)
        );
    }
}
