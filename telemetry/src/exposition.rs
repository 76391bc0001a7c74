//! [`Exposition`]: metric families written as Prometheus text (0.0.4) or OpenMetrics 1.0.

use std::fmt::Write;

use crate::histogram::Snapshot;

/// The text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4: what every scraper reads.
    Prometheus,
    /// OpenMetrics 1.0 text, for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header prefers: OpenMetrics when it lists
    /// `application/openmetrics-text` at a quality no lower than `text/plain`'s, else
    /// Prometheus text (also without a header).
    ///
    /// ```
    /// use telemetry::Format;
    /// // What Prometheus itself sends.
    /// let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
    /// assert_eq!(Format::negotiate(Some("text/plain")), Format::Prometheus);
    /// assert_eq!(Format::negotiate(None), Format::Prometheus);
    /// ```
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let (mut open, mut text) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a response in this format.
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
    /// Only goes up; its samples are named `<family>_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count: `<family>_bucket`, `_sum`, `_count`.
    Histogram,
    /// Labels that describe the process (build information); one sample valued 1, named
    /// `<family>_info`.
    Info,
}

/// Writes metric families: [`family`](Self::family) starts one, then one call per series.
/// Label values are escaped; label names and family names are the caller's constants.
#[derive(Debug)]
pub struct Exposition {
    format: Format,
    out: String,
    name: String,
    kind: Option<Kind>,
}

impl Exposition {
    /// An empty exposition in `format`.
    pub fn new(format: Format) -> Self {
        Exposition {
            format,
            out: String::with_capacity(16 * 1024),
            name: String::new(),
            kind: None,
        }
    }

    /// Starts the family `name` (without `_total` or `_info`: they are added to the samples).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        self.name.clear();
        self.name.push_str(name);
        self.kind = Some(kind);
        let (described, type_name) = match (self.format, kind) {
            (Format::Prometheus, Kind::Counter) => (format!("{name}_total"), "counter"),
            (Format::Prometheus, Kind::Info) => (format!("{name}_info"), "gauge"),
            (Format::Prometheus, Kind::Gauge) | (Format::OpenMetrics, Kind::Gauge) => {
                (name.to_owned(), "gauge")
            }
            (_, Kind::Histogram) => (name.to_owned(), "histogram"),
            (Format::OpenMetrics, Kind::Counter) => (name.to_owned(), "counter"),
            (Format::OpenMetrics, Kind::Info) => (name.to_owned(), "info"),
        };
        let _ = writeln!(self.out, "# HELP {described} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {described} {type_name}");
    }

    /// A counter's series.
    pub fn counter(&mut self, labels: &[(&str, &str)], value: u64) {
        self.sample("_total", labels, None, &value.to_string());
    }

    /// A counter's series with a fractional value (CPU seconds).
    pub fn counter_f64(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample("_total", labels, None, &number(value));
    }

    /// A gauge's series.
    pub fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample("", labels, None, &number(value));
    }

    /// An info family's series (value 1).
    pub fn info(&mut self, labels: &[(&str, &str)]) {
        self.sample("_info", labels, None, "1");
    }

    /// A histogram's series.
    pub fn histogram(&mut self, labels: &[(&str, &str)], snapshot: &Snapshot) {
        for (bound, cumulative) in snapshot.cumulative() {
            let le = number(bound);
            self.sample("_bucket", labels, Some(&le), &cumulative.to_string());
        }
        self.sample("_sum", labels, None, &number(snapshot.sum_seconds()));
        self.sample("_count", labels, None, &snapshot.count().to_string());
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: &str) {
        self.out.push_str(&self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let mut first = true;
            for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
                if !first {
                    self.out.push(',');
                }
                first = false;
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape_label(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }

    /// The text (OpenMetrics ends with `# EOF`).
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A sample value or bound: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Histogram;
    use std::time::Duration;

    #[test]
    fn both_formats_name_counters_and_info_their_own_way() {
        for (format, counter_type, info_type, eof) in [
            (
                Format::Prometheus,
                "# TYPE reqs_total counter",
                "# TYPE build_info gauge",
                false,
            ),
            (
                Format::OpenMetrics,
                "# TYPE reqs counter",
                "# TYPE build info",
                true,
            ),
        ] {
            let mut e = Exposition::new(format);
            e.family("reqs", "Requests.", Kind::Counter);
            e.counter(&[("path", "a\"b\\c\nd")], 3);
            e.family("build", "Build.", Kind::Info);
            e.info(&[("version", "1.0")]);
            e.family("up", "Up.", Kind::Gauge);
            e.gauge(&[], 1.0);
            e.gauge(&[("x", "y")], 0.25);
            let text = e.finish();
            assert!(text.contains(counter_type), "{text}");
            assert!(text.contains(info_type), "{text}");
            assert!(
                text.contains("reqs_total{path=\"a\\\"b\\\\c\\nd\"} 3\n"),
                "{text}"
            );
            assert!(text.contains("build_info{version=\"1.0\"} 1\n"), "{text}");
            assert!(text.contains("\nup 1\n"), "{text}");
            assert!(text.contains("up{x=\"y\"} 0.25\n"), "{text}");
            assert_eq!(text.ends_with("# EOF\n"), eof);
        }
    }

    #[test]
    fn histogram_series_are_cumulative_and_end_with_inf() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(1));
        let mut e = Exposition::new(Format::Prometheus);
        e.family("lat_seconds", "Latency.", Kind::Histogram);
        e.histogram(&[("r", "x")], &h.snapshot());
        let text = e.finish();
        let expected = "lat_seconds_bucket{r=\"x\",le=\"0.01\"} 1\n\
                        lat_seconds_bucket{r=\"x\",le=\"0.1\"} 2\n\
                        lat_seconds_bucket{r=\"x\",le=\"+Inf\"} 3\n\
                        lat_seconds_sum{r=\"x\"} 1.055\n\
                        lat_seconds_count{r=\"x\"} 3\n";
        assert!(text.ends_with(expected), "{text}");
    }

    #[test]
    fn negotiation_honours_quality() {
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Prometheus
        );
    }
}
