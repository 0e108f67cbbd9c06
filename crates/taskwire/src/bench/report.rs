//! Summaries over repeated runs, printed as a table or as JSON lines.

use serde::Serialize;

/// Median of `v` (mean of the two middle values for an even count); NaN when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile `p` (0..=100) of `sorted`, which must be sorted.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One measured figure over all runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    /// `pingpong`, `rate` or `bandwidth`.
    pub(crate) pattern: &'static str,
    /// `tcp`, `mem`, ...
    pub(crate) transport: String,
    /// `in-process`, `two-process` or `client`.
    pub(crate) mode: &'static str,
    /// Payload bytes per message.
    pub(crate) size: usize,
    /// What is measured, e.g. `rtt_median`.
    pub(crate) metric: &'static str,
    /// Unit of the figures.
    pub(crate) unit: &'static str,
    /// Median over runs.
    pub(crate) median: f64,
    /// Smallest run.
    pub(crate) min: f64,
    /// Largest run.
    pub(crate) max: f64,
    /// Every run, in order.
    pub(crate) runs: Vec<f64>,
    /// Messages per run (median).
    pub(crate) msgs_per_run: u64,
}

impl Row {
    /// A row summarising `runs`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pattern: &'static str,
        transport: String,
        mode: &'static str,
        size: usize,
        metric: &'static str,
        unit: &'static str,
        runs: Vec<f64>,
        msgs_per_run: u64,
    ) -> Row {
        let min = runs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = runs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Row {
            pattern,
            transport,
            mode,
            size,
            metric,
            unit,
            median: median(&runs),
            min,
            max,
            runs,
            msgs_per_run,
        }
    }
}

/// Prints rows as they are measured.
pub(crate) struct Printer {
    json: bool,
    header_done: bool,
}

fn fmt_value(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.3} M", v / 1e6)
    } else if v >= 1000.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

impl Printer {
    /// Table output, or JSON lines when `json`.
    pub(crate) fn new(json: bool) -> Printer {
        Printer {
            json,
            header_done: false,
        }
    }

    /// Print one row (and the table header before the first).
    pub(crate) fn row(&mut self, row: &Row) -> Result<(), String> {
        if self.json {
            let line = serde_json::to_string(row).map_err(|e| format!("json: {e}"))?;
            println!("{line}");
            return Ok(());
        }
        if !self.header_done {
            self.header_done = true;
            println!(
                "{:<10} {:<5} {:<11} {:>8}  {:<11} {:>12} {:>12} {:>12}  {:<6} {:>4} {:>10}",
                "pattern",
                "tport",
                "mode",
                "size",
                "metric",
                "median",
                "min",
                "max",
                "unit",
                "runs",
                "msgs/run"
            );
        }
        println!(
            "{:<10} {:<5} {:<11} {:>8}  {:<11} {:>12} {:>12} {:>12}  {:<6} {:>4} {:>10}",
            row.pattern,
            row.transport,
            row.mode,
            super::units::format_size(row.size),
            row.metric,
            fmt_value(row.median),
            fmt_value(row.min),
            fmt_value(row.max),
            row.unit,
            row.runs.len(),
            row.msgs_per_run
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
