//! The Prometheus exposition formats `/metrics` serves: the text format
//! 0.0.4 and OpenMetrics 1.0, chosen by the request's `Accept` header.
//!
//! The daemon writes the text itself rather than through prometheus-client
//! 0.24, whose encoder copies label values verbatim: a process name or file
//! name holding `"`, `\` or a newline (which any local user can choose)
//! would end the label early and add series of its own. Here every label
//! value and help text is escaped as both formats require, in one place.
//!
//! The formats differ in how a counter family is named: OpenMetrics names
//! the family `x` and its samples `x_total`; the text format names both
//! `x_total`, and a parser that reads `# HELP x` there finds no help for
//! `x_total` (promtool's "no help text").

use std::fmt::Write as _;

/// Content type of the text format.
pub(crate) const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One of the two exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT,
            Format::OpenMetrics => OPENMETRICS,
        }
    }

    /// The format an `Accept` header asks for. OpenMetrics when the client
    /// prefers it (by q-value, then by order) over the text format; the
    /// text format otherwise, also without a header or with only `*/*`, as
    /// Prometheus' own client libraries do.
    pub(crate) fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        // Best (q, position) of each format; a lower position wins a tie.
        let mut best: [Option<(u32, usize)>; 2] = [None, None];
        for (pos, range) in accept.split(',').enumerate() {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1000;
            let mut version = None;
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = parse_q(v.trim()).unwrap_or(0),
                    "version" => version = Some(v.trim().trim_matches('"').to_owned()),
                    _ => {}
                }
            }
            let slot = match media.as_str() {
                // 0.0.1 was a draft; this encoder writes 1.0.0.
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    1
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => 0,
                _ => continue,
            };
            if q == 0 {
                continue;
            }
            let better = match best[slot] {
                None => true,
                Some((bq, _)) => q > bq,
            };
            if better {
                best[slot] = Some((q, pos));
            }
        }
        match (best[0], best[1]) {
            (_, None) => Format::Text,
            (None, Some(_)) => Format::OpenMetrics,
            (Some((tq, tp)), Some((oq, op))) => {
                if oq > tq || (oq == tq && op < tp) {
                    Format::OpenMetrics
                } else {
                    Format::Text
                }
            }
        }
    }
}

/// A q-value in thousandths (`0.5` → 500), as RFC 9110 writes them.
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u32 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0;
    for (i, b) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        thousandths += u32::from(b - b'0') * [100, 10, 1][i];
    }
    let q = int * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// What a family's samples count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    /// Samples `NAME_bucket{le=…}` (cumulative), `NAME_sum`, `NAME_count`,
    /// written with [`FamilyWriter::suffixed`].
    Histogram,
}

/// A sample value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value {
    Int(u64),
    Signed(i64),
    Float(f64),
}

/// The exposition text being written.
pub(crate) struct Exposition {
    format: Format,
    text: String,
}

/// The family being written; samples go through it.
pub(crate) struct FamilyWriter<'a> {
    text: &'a mut String,
    /// The samples' name (with `_total` for counters).
    sample_name: String,
}

impl Exposition {
    pub(crate) fn new(format: Format) -> Self {
        Self {
            format,
            text: String::with_capacity(16 * 1024),
        }
    }

    /// Starts the family `name` (without `_total`). `help` is required:
    /// Prometheus' linters reject families without one.
    pub(crate) fn family(&mut self, name: &str, help: &str, kind: MetricType) -> FamilyWriter<'_> {
        let sample_name = match kind {
            MetricType::Counter => format!("{name}_total"),
            MetricType::Gauge | MetricType::Histogram => name.to_owned(),
        };
        let (meta_name, type_name) = match (self.format, kind) {
            (Format::OpenMetrics, MetricType::Counter) => (name, "counter"),
            (Format::Text, MetricType::Counter) => (sample_name.as_str(), "counter"),
            (_, MetricType::Gauge) => (name, "gauge"),
            (_, MetricType::Histogram) => (name, "histogram"),
        };
        let t = &mut self.text;
        t.push_str("# HELP ");
        t.push_str(meta_name);
        t.push(' ');
        escape_into(t, help, self.format == Format::OpenMetrics);
        t.push_str("\n# TYPE ");
        t.push_str(meta_name);
        t.push(' ');
        t.push_str(type_name);
        t.push('\n');
        FamilyWriter {
            text: &mut self.text,
            sample_name,
        }
    }

    /// The finished text (OpenMetrics ends with `# EOF`).
    pub(crate) fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.text.push_str("# EOF\n");
        }
        self.text
    }
}

impl FamilyWriter<'_> {
    /// One sample with `labels` (names are the daemon's own constants;
    /// values come from anywhere and are escaped).
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: Value) {
        self.suffixed("", labels, value);
    }

    /// One sample named the family's name plus `suffix` (a histogram's
    /// `_bucket`, `_sum`, `_count`).
    pub(crate) fn suffixed(&mut self, suffix: &str, labels: &[(&str, &str)], value: Value) {
        let t = &mut *self.text;
        t.push_str(&self.sample_name);
        t.push_str(suffix);
        if !labels.is_empty() {
            t.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    t.push(',');
                }
                t.push_str(k);
                t.push_str("=\"");
                escape_into(t, v, true);
                t.push('"');
            }
            t.push('}');
        }
        t.push(' ');
        // Writing to a String cannot fail.
        let _ = match value {
            Value::Int(v) => write!(t, "{v}"),
            Value::Signed(v) => write!(t, "{v}"),
            Value::Float(v) => write!(t, "{v:?}"),
        };
        t.push('\n');
    }
}

/// Appends `s` with `\`, newline and (for label values and OpenMetrics
/// help) `"` escaped: the three characters that could end a label value or
/// a line early.
fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn accept_headers_pick_the_format_the_client_prefers() {
        for (accept, want) in [
            (None, Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Format::Text,
            ),
            (Some(PROMETHEUS_ACCEPT), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.8"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text;q=0.3, text/plain;q=0.2"),
                Format::OpenMetrics,
            ),
            // Equal q: the first listed wins.
            (
                Some("text/plain, application/openmetrics-text"),
                Format::Text,
            ),
            // A version this encoder does not write is not chosen.
            (
                Some("application/openmetrics-text;version=0.0.1"),
                Format::Text,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (Some("application/openmetrics-text;q=bogus"), Format::Text),
            (Some(",,;;=\u{0}"), Format::Text),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn q_values_parse_as_rfc_9110_writes_them() {
        for (v, want) in [
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("0.5", Some(500)),
            ("0.75", Some(750)),
            ("0", Some(0)),
            ("1.5", None),
            ("2", None),
            ("0.1234", None),
            ("-1", None),
            ("", None),
        ] {
            assert_eq!(parse_q(v), want, "{v:?}");
        }
    }

    fn sample_text(format: Format) -> String {
        let mut e = Exposition::new(format);
        let mut f = e.family(
            "kscope_x",
            "Some \\ help\nwith \"quotes\".",
            MetricType::Counter,
        );
        f.sample(
            &[("comm", "x\"} 1\nevil 9\n#"), ("n", "ex\\ec\"q")],
            Value::Int(3),
        );
        f.sample(&[], Value::Float(0.25));
        let mut g = e.family("kscope_y", "A gauge.", MetricType::Gauge);
        g.sample(&[("a", "b")], Value::Signed(-2));
        e.finish()
    }

    #[test]
    fn hostile_label_values_are_escaped_and_stay_on_their_line() {
        let text = sample_text(Format::Text);
        assert_eq!(
            text,
            "# HELP kscope_x_total Some \\\\ help\\nwith \"quotes\".\n\
             # TYPE kscope_x_total counter\n\
             kscope_x_total{comm=\"x\\\"} 1\\nevil 9\\n#\",n=\"ex\\\\ec\\\"q\"} 3\n\
             kscope_x_total 0.25\n\
             # HELP kscope_y A gauge.\n\
             # TYPE kscope_y gauge\n\
             kscope_y{a=\"b\"} -2\n"
        );
        assert!(!text.lines().any(|l| l.starts_with("evil")), "{text}");
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let text = sample_text(Format::OpenMetrics);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "# HELP kscope_x Some \\\\ help\\nwith \\\"quotes\\\".",
                "# TYPE kscope_x counter"
            ]
        );
        assert!(lines[2].starts_with("kscope_x_total{comm=\"x\\\"} 1\\nevil 9\\n#\""));
        assert_eq!(lines.last(), Some(&"# EOF"));
    }
}
