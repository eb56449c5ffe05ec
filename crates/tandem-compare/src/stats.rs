//! Summaries of repeated measurements.

use serde::{Deserialize, Serialize};

/// A measured quantity: median, 10th and 90th percentile over `samples` runs.
///
/// ```
/// let f = tandem_compare::Figure::from_samples("us", &[3.0, 1.0, 2.0]).unwrap();
/// assert_eq!(f.median, 2.0);
/// assert_eq!(f.samples, 3);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Unit of every value, e.g. "us", "KiB", "GB/s", "x".
    pub unit: String,
    /// Median.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// How many samples.
    pub samples: usize,
}

impl Figure {
    /// Summarize samples; None if there are none (or any is not finite).
    pub fn from_samples(unit: &str, samples: &[f64]) -> Option<Figure> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Figure {
            unit: unit.to_string(),
            median: percentile(&sorted, 0.5),
            p10: percentile(&sorted, 0.1),
            p90: percentile(&sorted, 0.9),
            samples: sorted.len(),
        })
    }

    /// The median with its unit, to three significant digits.
    pub fn show(&self) -> String {
        let space = if self.unit == "x" { "" } else { " " };
        format!("{}{space}{}", significant(self.median), self.unit)
    }
}

/// Linear interpolation between closest ranks of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A number to about three significant digits, without exponent.
pub fn significant(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let f = Figure::from_samples("us", &[10.0, 0.0, 5.0, 20.0, 15.0]).unwrap();
        assert_eq!((f.p10, f.median, f.p90), (2.0, 10.0, 18.0));
        assert!(Figure::from_samples("us", &[]).is_none());
        assert!(Figure::from_samples("us", &[f64::NAN]).is_none());
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(1234.5), "1234");
        assert_eq!(significant(12.34), "12.3");
        assert_eq!(significant(1.234), "1.23");
        assert_eq!(significant(0.1234), "0.123");
    }
}
