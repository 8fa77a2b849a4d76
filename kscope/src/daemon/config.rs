//! The daemon's TOML configuration: parsing and validation.
//!
//! [`Config::load`] reads the file and every rule file it names, and checks
//! all of it, before the daemon changes anything: a config that fails here
//! is never half applied. `packaging/kscope.toml` is the documented example.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    firewall::{
        Mode, Policy,
        rules::{RuleError, RuleSet},
    },
    sys,
};

/// Where `kscope daemon` looks without `--config`.
pub(crate) const DEFAULT_PATH: &str = "/etc/kscope/kscope.toml";
/// The metrics address without a `[metrics] listen`.
const DEFAULT_LISTEN: &str = "127.0.0.1:9435";

/// Largest config file the daemon reads: 1 MiB. A config names its rule
/// files rather than holding rules, so real ones are a few KiB; the cap
/// keeps a hostile path (`/dev/zero`) from exhausting memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a config was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The reason is the `source` only, so a cause chain says it once.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type. The text
    /// is toml's message, reduced to one line.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: interface {iface}: {source}")]
    Rules {
        path: PathBuf,
        iface: String,
        #[source]
        source: RuleError,
    },
}

/// The file as written.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub(crate) metrics: MetricsConfig,
    #[serde(default)]
    pub(crate) firewall: FirewallConfig,
    #[serde(default)]
    pub(crate) trace: TraceConfig,
    #[serde(default)]
    pub(crate) profile: ProfileConfig,
    #[serde(default)]
    pub(crate) hist: HistConfig,
}

/// `[hist]`: which latency histograms the daemon keeps (in the kernel, as
/// `kscope hist` does) and serves as Prometheus histograms. Their label
/// sets are bounded by `[trace] max_series`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistConfig {
    /// Run queue latency (`kscope_hist_runq_latency_seconds`).
    #[serde(default)]
    pub(crate) runq: bool,
    /// System call latency by syscall
    /// (`kscope_hist_syscall_latency_seconds`).
    #[serde(default)]
    pub(crate) syscall: bool,
    /// Block I/O latency by device and operation
    /// (`kscope_hist_block_latency_seconds`).
    #[serde(default)]
    pub(crate) block: bool,
    /// A `cgroup` label too: the task's cgroup v2 path (a cgroup gone by
    /// the scrape is summed under `[other]`).
    #[serde(default)]
    pub(crate) cgroup: bool,
}

impl HistConfig {
    /// Whether histogram `name` (`runq`, `syscall`, `block`) is on.
    pub(crate) fn wants(&self, name: &str) -> bool {
        match name {
            "runq" => self.runq,
            "syscall" => self.syscall,
            "block" => self.block,
            _ => false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsConfig {
    /// Address of /metrics, /healthz and /profile.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// Per-program run time and run count (BPF_ENABLE_STATS, held while
    /// the daemon runs).
    #[serde(default = "yes")]
    pub(crate) bpf_stats: bool,
    /// Most connections served at once; one more is answered 503 and
    /// closed, so idle or slow clients cannot exhaust the daemon's file
    /// descriptors.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// Seconds a connection may take to send a complete request header,
    /// counted from when it opens or from its previous response: a
    /// connection silent that long (idle keep-alive included) is closed.
    #[serde(default = "default_header_timeout")]
    pub(crate) header_timeout_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            bpf_stats: true,
            max_connections: default_max_connections(),
            header_timeout_seconds: default_header_timeout(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FirewallConfig {
    /// Detach the firewall when the daemon stops. By default it stays, so
    /// traffic keeps being filtered across restarts and upgrades.
    #[serde(default)]
    pub(crate) detach_on_exit: bool,
    /// Most rules of one interface with a `kscope_fw_rule_hits_total`
    /// series of their own; the hits of the others are summed under
    /// `rule="[other]"`, so a million-rule set cannot blow up Prometheus.
    #[serde(default = "default_max_rule_series")]
    pub(crate) max_rule_series: usize,
    #[serde(default, rename = "interface")]
    pub(crate) interfaces: Vec<IfaceConfig>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            detach_on_exit: false,
            max_rule_series: default_max_rule_series(),
            interfaces: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct IfaceConfig {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) mode: Mode,
    /// Verdict for IP packets no rule matches; fixed while attached.
    #[serde(default)]
    pub(crate) default: Policy,
    /// Rule file (the `kscope fw load` format). Relative paths are taken
    /// from the config file's directory. Without one, the daemon leaves
    /// the interface's rules alone (edit them with `kscope fw block`, ...).
    pub(crate) rules: Option<PathBuf>,
    /// Token buckets of the rate limiter (`kscope fw attach
    /// --limit-table`); fixed while attached.
    #[serde(default = "default_limit_table")]
    pub(crate) limit_table: u32,
}

fn default_limit_table() -> u32 {
    kscope_common::fw::LIMIT_TABLE_DEFAULT
}

/// `[trace]`: which tracers count (each tracer's name is a key: `open`,
/// `exec`, `connect`; see `trace::runner::TRACERS`), and the label limit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct TraceConfig {
    /// Most label sets one tracer metric keeps; the rest are summed under
    /// the label value `[other]`, so an unusual workload cannot blow up
    /// Prometheus.
    #[serde(default = "default_max_series")]
    pub(crate) max_series: usize,
    /// Tracer name to on/off. Names the daemon does not know are rejected
    /// by validation (serde's deny_unknown_fields cannot see past a
    /// flattened map).
    #[serde(flatten)]
    pub(crate) tracers: BTreeMap<String, bool>,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            max_series: default_max_series(),
            tracers: BTreeMap::new(),
        }
    }
}

impl TraceConfig {
    /// Whether the config turns tracer `name` on.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.tracers.get(name).copied().unwrap_or(false)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileConfig {
    /// Serve GET /profile.
    #[serde(default)]
    pub(crate) enabled: bool,
    /// Longest profile one request may ask for.
    #[serde(default = "default_max_seconds")]
    pub(crate) max_seconds: u64,
    /// Samples per second per CPU unless the request says otherwise.
    #[serde(default = "default_frequency")]
    pub(crate) frequency: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_seconds: default_max_seconds(),
            frequency: default_frequency(),
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or_else(|_| unreachable!("DEFAULT_LISTEN is an address"))
}

fn yes() -> bool {
    true
}

fn default_max_series() -> usize {
    1000
}

/// `[firewall] max_rule_series` by default.
pub(crate) const DEFAULT_MAX_RULE_SERIES: usize = 100;

fn default_max_rule_series() -> usize {
    DEFAULT_MAX_RULE_SERIES
}

fn default_max_connections() -> usize {
    512
}

fn default_header_timeout() -> u64 {
    10
}

fn default_max_seconds() -> u64 {
    60
}

fn default_frequency() -> u64 {
    49
}

/// Highest `[profile] frequency` accepted; the kernel's own limit
/// (kernel.perf_event_max_sample_rate) may be lower and is checked when a
/// profile starts.
pub(crate) const MAX_FREQUENCY: u64 = 10_000;

/// A validated config with every rule file read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) config: Config,
    /// The rule set of each interface that names a rule file.
    pub(crate) rules: BTreeMap<String, RuleSet>,
}

impl Config {
    /// Parses config text; `path` only names the file in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Invalid`].
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line(&e),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut seen = std::collections::BTreeSet::new();
        for i in &self.firewall.interfaces {
            sys::validate_ifname(&i.name).map_err(|e| invalid(e.to_string()))?;
            if !seen.insert(i.name.as_str()) {
                return Err(invalid(format!(
                    "interface {} is listed twice under [[firewall.interface]]",
                    i.name
                )));
            }
            crate::firewall::check_limit_table(u64::from(i.limit_table))
                .map_err(|e| invalid(format!("interface {}: limit_table: {e}", i.name)))?;
        }
        let known = crate::trace::runner::TRACERS;
        if let Some(unknown) = self
            .trace
            .tracers
            .keys()
            .find(|k| !known.iter().any(|t| t.name == k.as_str()))
        {
            let names: Vec<&str> = known.iter().map(|t| t.name).collect();
            return Err(invalid(format!(
                "unknown key `{unknown}` in [trace] (tracers: {}; or max_series)",
                names.join(", ")
            )));
        }
        if self.metrics.max_connections == 0 {
            return Err(invalid(
                "[metrics] max_connections must be at least 1".into(),
            ));
        }
        if self.metrics.header_timeout_seconds == 0 {
            return Err(invalid(
                "[metrics] header_timeout_seconds must be at least 1".into(),
            ));
        }
        if self.trace.max_series == 0 {
            return Err(invalid("[trace] max_series must be at least 1".into()));
        }
        let p = &self.profile;
        if p.max_seconds == 0 {
            return Err(invalid("[profile] max_seconds must be at least 1".into()));
        }
        if p.frequency == 0 || p.frequency > MAX_FREQUENCY {
            return Err(invalid(format!(
                "[profile] frequency must be 1-{MAX_FREQUENCY} Hz, not {}",
                p.frequency
            )));
        }
        Ok(())
    }

    /// Reads and validates the config at `path` and every rule file it
    /// names.
    ///
    /// # Errors
    /// Any [`ConfigError`]; nothing has been changed when one is returned.
    pub(crate) fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = sys::read_capped(path, MAX_CONFIG_BYTES).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            ))
        })?;
        let config = Config::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut rules = BTreeMap::new();
        for i in &config.firewall.interfaces {
            let Some(file) = &i.rules else { continue };
            let set = RuleSet::read(&base.join(file)).map_err(|source| ConfigError::Rules {
                path: path.to_owned(),
                iface: i.name.clone(),
                source,
            })?;
            rules.insert(i.name.clone(), set);
        }
        Ok(Loaded {
            path: path.to_owned(),
            config,
            rules,
        })
    }
}

/// toml's errors span several lines (a snippet with a caret); the first
/// line names the place and the rest restates it, so they are joined into
/// one.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => format!("{msg} (at byte {})", span.start),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Defect: `daemon --config /dev/zero` read until memory ran out.
    #[test]
    fn an_endless_config_is_refused_at_the_cap() {
        let e = Config::load(Path::new("/dev/zero")).expect_err("endless config");
        let ConfigError::Read { source, .. } = &e else {
            panic!("not a read error: {e:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(
            source
                .to_string()
                .contains(&format!("limit of {MAX_CONFIG_BYTES} bytes")),
            "{source}"
        );
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn empty_config_takes_the_documented_defaults() {
        let c = parse("").expect("empty config");
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9435");
        assert!(c.metrics.bpf_stats);
        assert!(!c.firewall.detach_on_exit);
        assert!(c.firewall.interfaces.is_empty());
        assert!(!c.trace.wants("open") && !c.trace.wants("exec") && !c.trace.wants("connect"));
        assert_eq!(c.trace.max_series, 1000);
        assert_eq!(c.firewall.max_rule_series, 100);
        assert_eq!(
            (c.metrics.max_connections, c.metrics.header_timeout_seconds),
            (512, 10)
        );
        assert!(!c.profile.enabled);
        assert_eq!((c.profile.max_seconds, c.profile.frequency), (60, 49));
    }

    #[test]
    fn interfaces_parse_with_mode_policy_and_rules() {
        let c = parse(
            r#"
            [[firewall.interface]]
            name = "eth0"
            mode = "skb"
            default = "drop"
            rules = "eth0.rules"
            [[firewall.interface]]
            name = "eth1"
            "#,
        )
        .expect("config");
        let i = &c.firewall.interfaces;
        assert_eq!(i.len(), 2);
        assert_eq!(
            (i[0].name.as_str(), i[0].mode, i[0].default),
            ("eth0", Mode::Skb, Policy::Drop)
        );
        assert_eq!(i[0].rules.as_deref(), Some(Path::new("eth0.rules")));
        assert_eq!(
            (i[1].mode, i[1].default, &i[1].rules),
            (Mode::Auto, Policy::Pass, &None)
        );
    }

    #[test]
    fn bad_configs_are_refused_with_one_line_naming_the_problem() {
        for (text, needle) in [
            ("[metrics]\nlisten = \"nowhere\"", "invalid socket address"),
            (
                "[metrics]\nlisen = \"127.0.0.1:1\"",
                "unknown field `lisen`",
            ),
            ("[trace]\nopen = \"yes\"", "invalid type"),
            ("[trace\nopen = true", "at byte"),
            (
                "[[firewall.interface]]\nname = \"a\"\n[[firewall.interface]]\nname = \"a\"",
                "listed twice",
            ),
            ("[[firewall.interface]]\nname = \"bad name\"", "bad name"),
            (
                "[[firewall.interface]]\nname = \"x\"\ndefault = \"reject\"",
                "unknown variant `reject`",
            ),
            ("[profile]\nfrequency = 0", "frequency must be"),
            ("[profile]\nmax_seconds = 0", "max_seconds"),
            ("[trace]\nmax_series = 0", "max_series"),
            ("[trace]\nopne = true", "unknown key `opne` in [trace]"),
            ("[metrics]\nmax_connections = 0", "max_connections"),
            ("[metrics]\nheader_timeout_seconds = 0", "header_timeout"),
            ("[firewall]\nmax_rule_series = -1", "invalid value"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
            assert!(e.starts_with("test.toml: "), "{e}");
        }
    }

    /// packaging/kscope.toml documents every key with its default,
    /// commented out. It must parse as it is, and again with every key
    /// uncommented, to the same defaults.
    #[test]
    fn the_example_config_documents_the_real_defaults() {
        let text = include_str!("../../../packaging/kscope.toml");
        assert_eq!(parse(text).expect("example as shipped"), Config::default());
        let uncommented: String = text
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or(l);
                let key = rest.split(" = ").next().unwrap_or("");
                let is_key =
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                if rest.starts_with("[[") || (rest.contains(" = ") && is_key) {
                    rest.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&uncommented).expect("example with every key uncommented");
        let iface = IfaceConfig {
            name: "eth0".into(),
            mode: Mode::Auto,
            default: Policy::Pass,
            rules: Some("eth0.rules".into()),
            limit_table: 65_536,
        };
        let mut want = Config {
            firewall: FirewallConfig {
                interfaces: vec![iface],
                ..FirewallConfig::default()
            },
            ..Config::default()
        };
        // Every tracer is documented, off as by default.
        for t in crate::trace::runner::TRACERS {
            assert!(!Config::default().trace.wants(t.name));
            want.trace.tracers.insert(t.name.into(), false);
        }
        assert_eq!(c, want, "{uncommented}");
    }

    #[test]
    fn load_reads_rule_files_relative_to_the_config() {
        let dir = std::env::temp_dir().join(format!("kscope-config-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("a.rules"), "block 10.0.0.0/8\n").expect("write rules");
        fs::write(dir.join("bad.rules"), "block 10.0.0.0/40\n").expect("write rules");
        let cfg = dir.join("kscope.toml");
        fs::write(
            &cfg,
            "[[firewall.interface]]\nname = \"x0\"\nrules = \"a.rules\"\n",
        )
        .expect("write config");
        let loaded = Config::load(&cfg).expect("load");
        assert_eq!(
            loaded.rules["x0"].to_text(),
            RuleSet::parse("t", "block 10.0.0.0/8")
                .expect("rules")
                .to_text()
        );

        fs::write(
            &cfg,
            "[[firewall.interface]]\nname = \"x0\"\nrules = \"bad.rules\"\n",
        )
        .expect("write config");
        let e = Config::load(&cfg).expect_err("bad rule file").to_string();
        assert!(e.contains("interface x0"), "{e}");
        fs::write(
            &cfg,
            "[[firewall.interface]]\nname = \"x0\"\nrules = \"missing.rules\"\n",
        )
        .expect("write config");
        assert!(Config::load(&cfg).is_err());
        let e = Config::load(&dir.join("nope.toml"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
