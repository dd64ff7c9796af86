//! The text a Prometheus scrape reads: the 0.0.4 text format every Prometheus version and
//! `promtool check metrics` read, or OpenMetrics 1.0 when the scraper asks for it in its
//! `Accept` header.
//!
//! The two differ where it touches the relay: a counter's `# TYPE` line names it with its
//! `_total` suffix in 0.0.4 and without it in OpenMetrics; OpenMetrics ends with `# EOF` and
//! escapes `"` in help text. Label values are sanitized (a control character becomes `?`, so
//! a client's `application_name` cannot break a line) and escaped (`\`, `"`, newline).

use std::fmt::Write;

/// Which text format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` names `application/openmetrics-text` with a quality above 0,
    /// the 0.0.4 text format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let wants_open_metrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let is_open_metrics = parts
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"));
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                is_open_metrics && !refused
            })
        });
        if wants_open_metrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of the text.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its samples end in `_total`.
    Counter,
    /// Any value.
    Gauge,
    /// Buckets, a sum and a count.
    Histogram,
}

/// A metrics text being written, family by family.
#[derive(Debug)]
pub struct Exposition {
    format: Format,
    out: String,
}

/// Where a family's samples go; each takes its label pairs and value.
#[derive(Debug)]
pub struct Family<'a> {
    exposition: &'a mut Exposition,
    name: &'a str,
    kind: Kind,
}

impl Exposition {
    /// An empty text in `format`.
    pub fn new(format: Format) -> Exposition {
        Exposition {
            format,
            out: String::with_capacity(8192),
        }
    }

    /// Starts the family `name` (for a counter, without `_total`) with its help text.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let (type_name, kind_text) = match (kind, self.format) {
            (Kind::Counter, Format::Prometheus) => (format!("{name}_total"), "counter"),
            (Kind::Counter, Format::OpenMetrics) => (name.to_owned(), "counter"),
            (Kind::Gauge, _) => (name.to_owned(), "gauge"),
            (Kind::Histogram, _) => (name.to_owned(), "histogram"),
        };
        let help = escape_help(help, self.format);
        let _ = writeln!(self.out, "# HELP {type_name} {help}");
        let _ = writeln!(self.out, "# TYPE {type_name} {kind_text}");
        Family {
            exposition: self,
            name,
            kind,
        }
    }

    /// The text, ended as the format requires.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

impl Family<'_> {
    /// One sample: a counter's gets its `_total` suffix.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let suffix = if self.kind == Kind::Counter {
            "_total"
        } else {
            ""
        };
        self.line(suffix, labels, None, value);
        self
    }

    /// A histogram's samples: cumulative counts per upper bound (`+Inf` added), the sum and
    /// the count.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        for &(le, n) in buckets {
            self.line("_bucket", labels, Some(le), n as f64);
        }
        self.line("_bucket", labels, Some(f64::INFINITY), count as f64);
        self.line("_sum", labels, None, sum);
        self.line("_count", labels, None, count as f64);
        self
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<f64>, value: f64) {
        let out = &mut self.exposition.out;
        out.push_str(self.name);
        out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            out.push('{');
            let mut first = true;
            for (key, value) in labels {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = write!(out, "{key}=\"");
                escape_label_value(out, value);
                out.push('"');
            }
            if let Some(le) = le {
                if !first {
                    out.push(',');
                }
                let _ = write!(out, "le=\"{}\"", number(le));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", number(value));
    }
}

/// A value as the formats write numbers: `+Inf`, `-Inf`, `NaN`, else the shortest decimal.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A label value, control characters replaced by `?`, then `\`, `"` and newline escaped.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
}

/// Help text: `\` and newline escaped, and `"` in OpenMetrics.
fn escape_help(help: &str, format: Format) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4;q=0.3,*/*;q=0.2")),
            Format::Prometheus
        );
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; q=0")),
            Format::Prometheus
        );
    }

    #[test]
    fn writes_the_0_0_4_text_format() {
        let mut e = Exposition::new(Format::Prometheus);
        e.family("walrelay_upstream_reconnects", Kind::Counter, "Ends.")
            .sample(&[("reason", "timeout")], 3.0);
        e.family("walrelay_lag_bytes", Kind::Gauge, "Lag \\ \"x\"\nmore")
            .sample(&[("application_name", "a\"b\\c\nd\u{1}e")], 1.5)
            .sample(&[], f64::NAN);
        e.family("walrelay_fsync_seconds", Kind::Histogram, "Fsync.")
            .histogram(&[], &[(0.001, 1), (0.5, 4)], 0.75, 5);
        assert_eq!(
            e.finish(),
            "# HELP walrelay_upstream_reconnects_total Ends.\n\
             # TYPE walrelay_upstream_reconnects_total counter\n\
             walrelay_upstream_reconnects_total{reason=\"timeout\"} 3\n\
             # HELP walrelay_lag_bytes Lag \\\\ \"x\"\\nmore\n\
             # TYPE walrelay_lag_bytes gauge\n\
             walrelay_lag_bytes{application_name=\"a\\\"b\\\\c\\nd?e\"} 1.5\n\
             walrelay_lag_bytes NaN\n\
             # HELP walrelay_fsync_seconds Fsync.\n\
             # TYPE walrelay_fsync_seconds histogram\n\
             walrelay_fsync_seconds_bucket{le=\"0.001\"} 1\n\
             walrelay_fsync_seconds_bucket{le=\"0.5\"} 4\n\
             walrelay_fsync_seconds_bucket{le=\"+Inf\"} 5\n\
             walrelay_fsync_seconds_sum 0.75\n\
             walrelay_fsync_seconds_count 5\n"
        );
    }

    #[test]
    fn writes_open_metrics() {
        let mut e = Exposition::new(Format::OpenMetrics);
        e.family(
            "walrelay_upstream_reconnects",
            Kind::Counter,
            "Say \"why\".",
        )
        .sample(&[], 2.0);
        assert_eq!(
            e.finish(),
            "# HELP walrelay_upstream_reconnects Say \\\"why\\\".\n\
             # TYPE walrelay_upstream_reconnects counter\n\
             walrelay_upstream_reconnects_total 2\n\
             # EOF\n"
        );
    }
}
