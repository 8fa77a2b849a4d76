//! `kscope daemon`: keeps the firewall and aggregate tracers running and
//! exports what they see as Prometheus metrics.
//!
//! Lifecycle:
//! - start: read and check the whole config (rule files included), bind the
//!   metrics address, attach or adopt the firewall on each configured
//!   interface and load its rules, start the tracers, then serve. A failure
//!   before serving undoes what this start did and exits non-zero.
//! - SIGHUP: read and check the config again. An invalid one is logged and
//!   the running one stays. A valid one is applied: rule sets are swapped
//!   atomically (the programs stay attached), new interfaces are attached,
//!   interfaces dropped from the config are detached, tracers start or stop.
//! - SIGTERM or SIGINT: the tracers detach and the stats are released. The
//!   firewall stays attached, so traffic keeps being filtered, unless
//!   `[firewall] detach_on_exit = true`.

pub mod config;
mod expo;
mod hists;
mod http;
mod metrics;
mod rule_hits;
mod tracers;

use std::{
    collections::BTreeSet,
    os::fd::OwnedFd,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use self::{
    config::{Config, IfaceConfig, Loaded},
    metrics::Shared,
    tracers::Tracers,
};
use crate::{
    firewall::{self, FwError, Mode, maps::RuleMaps},
    sys::Chain,
};

/// Runs the daemon with the config at `path` until SIGTERM or SIGINT.
///
/// # Errors
/// An invalid config, the metrics address unavailable, or a firewall or
/// tracer that fails to start; whatever this run had started is undone.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let loaded = Config::load(path)?;
    crate::sys::require_caps("kscope daemon", &needed_caps(&loaded.config))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(loaded))
}

/// Capabilities `config` needs: CAP_BPF always (BPF stats, pinned maps),
/// CAP_NET_ADMIN for the firewall, CAP_PERFMON for tracers and profiles.
fn needed_caps(config: &Config) -> Vec<crate::sys::Cap> {
    use crate::sys::Cap;
    let mut caps = vec![Cap::Bpf];
    if !config.firewall.interfaces.is_empty() {
        caps.push(Cap::NetAdmin);
    }
    let t = &config.trace;
    if t.tracers.values().any(|&on| on) || config.profile.enabled {
        caps.push(Cap::Perfmon);
    }
    caps
}

/// What the daemon has running.
struct Daemon {
    loaded: Loaded,
    shared: Arc<Shared>,
    tracers: Tracers,
    /// BPF_ENABLE_STATS; closing it turns the stats off again.
    stats: Option<OwnedFd>,
    /// Interfaces this run attached (as opposed to adopted).
    attached_here: BTreeSet<String>,
}

async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("catching SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    crate::sys::raise_memlock();

    let listen = loaded.config.metrics.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([metrics] listen)"))?;
    if !listen.ip().is_loopback() {
        tracing::warn!(
            "metrics are served on {listen}, beyond loopback: anyone who can reach it can read them and start profiles"
        );
    }
    let shared = Shared::new();
    let mut daemon = Daemon {
        loaded: Loaded {
            path: loaded.path.clone(),
            config: Config::default(),
            rules: Default::default(),
        },
        shared: shared.clone(),
        tracers: Tracers,
        stats: None,
        attached_here: BTreeSet::new(),
    };
    if let Err(e) = daemon.apply(loaded).await {
        daemon.shutdown(true).await;
        return Err(e);
    }
    let ctx = Arc::new(http::Ctx::new(
        shared.clone(),
        daemon.loaded.config.profile.clone(),
        &daemon.loaded.config.metrics,
    ));
    let server = tokio::spawn(http::serve(listener, ctx.clone()));
    tracing::info!("kscope daemon ready: serving http://{listen}/metrics");

    loop {
        tokio::select! {
            _ = hup.recv() => {
                daemon.reload().await;
                *ctx.profile.lock().unwrap_or_else(|p| p.into_inner()) =
                    daemon.loaded.config.profile.clone();
            }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
        }
    }
    ctx.stop.store(true, Ordering::Relaxed);
    server.abort();
    daemon.shutdown(false).await;
    Ok(())
}

impl Daemon {
    /// Reloads the config file, keeping the running config when the new one
    /// is invalid or cannot be applied.
    async fn reload(&mut self) {
        let start = Instant::now();
        let path = self.loaded.path.clone();
        let result = match Config::load(&path) {
            Ok(new) => self.apply(new).await,
            Err(e) => Err(e.into()),
        };
        let mut s = self.shared.lock();
        match result {
            Ok(()) => {
                s.reloads_ok += 1;
                s.last_reload_ok = true;
                tracing::info!("reloaded {} in {:.0?}", path.display(), start.elapsed());
            }
            Err(e) => {
                s.reloads_failed += 1;
                s.last_reload_ok = false;
                tracing::error!("reload failed, the previous config stays in force: {e:#}");
            }
        }
    }

    /// Moves from the running config to `new`. On error, what this call had
    /// changed is undone: the running config stays in force.
    async fn apply(&mut self, new: Loaded) -> anyhow::Result<()> {
        let old = &self.loaded;
        let c = &new.config;
        if old.config.metrics.listen != c.metrics.listen && old.config != Config::default() {
            tracing::warn!(
                "[metrics] listen changed to {}; that takes a restart, still serving {}",
                c.metrics.listen,
                old.config.metrics.listen
            );
        }
        // 1. Checks that need the kernel, before anything changes.
        let plan = self.plan_firewall(&new)?;
        // 2. Tracers that should run and do not yet: started first, as they
        //    are the likeliest to fail and the easiest to take back.
        let started = self.tracers.start_missing(&c.trace, &self.shared)?;
        let started_hists =
            match hists::start_missing(&c.hist, c.trace.max_series, &self.shared.hists) {
                Ok(h) => h,
                Err(e) => {
                    self.tracers.stop(&started, &self.shared);
                    return Err(e);
                }
            };
        // 3. Firewall: attach new interfaces, then swap rule sets.
        let mut attached = Vec::new();
        let fw = (|| -> anyhow::Result<()> {
            for i in &plan.attach {
                let sizes = firewall::Sizes {
                    limit_table: i.limit_table,
                    ..firewall::Sizes::default()
                };
                let a = firewall::attach_sized(&i.name, i.mode, i.default, sizes)?;
                tracing::info!(
                    "firewall attached to {} ({} mode, default {}, program id {})",
                    a.iface,
                    a.mode,
                    a.default_policy,
                    a.prog_id
                );
                attached.push(i.name.clone());
            }
            for (iface, set) in &new.rules {
                let dir = firewall::pin_dir(iface);
                let _lock = firewall::lock_iface(iface)?;
                let mut maps = RuleMaps::from_pins(&dir)?;
                if maps.rule_set()? == *set {
                    continue;
                }
                let r = maps.load(set)?;
                tracing::info!("{iface}: loaded {} rules (slot {})", r.rules, r.slot);
            }
            Ok(())
        })();
        if let Err(e) = fw {
            for iface in &attached {
                if let Err(d) = firewall::detach(iface) {
                    tracing::error!("undoing the attach to {iface}: {}", Chain(&d));
                }
            }
            self.tracers.stop(&started, &self.shared);
            hists::stop(&started_hists, &self.shared.hists);
            return Err(e);
        }
        self.attached_here.extend(attached);
        // 4. What the new config no longer has.
        for iface in &plan.detach {
            match firewall::detach(iface) {
                Ok(()) => tracing::info!("firewall detached from {iface} (not in the config)"),
                Err(FwError::NotAttached(_)) => {}
                Err(e) => tracing::error!("detaching {iface}: {}", Chain(&e)),
            }
            self.attached_here.remove(iface);
        }
        self.tracers.stop_unwanted(&c.trace, &self.shared);
        hists::settle(&c.hist, c.trace.max_series, &self.shared.hists);
        self.set_bpf_stats(c.metrics.bpf_stats);
        {
            let mut s = self.shared.lock();
            s.fw_ifaces = c
                .firewall
                .interfaces
                .iter()
                .map(|i| i.name.clone())
                .collect();
            s.bpf_stats = self.stats.is_some();
        }
        self.shared.set_max_rule_series(c.firewall.max_rule_series);
        self.tracers.max_series(c.trace.max_series, &self.shared);
        self.shared.set_max_prog_series(c.trace.max_series);
        self.loaded = new;
        release_freed_memory();
        Ok(())
    }

    /// Which interfaces to attach and detach to reach `new`, refusing what
    /// cannot be done without detaching (a changed default policy or mode).
    fn plan_firewall(&self, new: &Loaded) -> anyhow::Result<FirewallPlan> {
        let mut plan = FirewallPlan::default();
        let wanted: BTreeSet<&str> = new
            .config
            .firewall
            .interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        for i in &new.config.firewall.interfaces {
            if !firewall::pin_dir(&i.name).is_dir() {
                crate::sys::if_nametoindex(&i.name)
                    .with_context(|| format!("[[firewall.interface]] {}", i.name))?;
                plan.attach.push(i.clone());
                continue;
            }
            let st = firewall::status_of(&i.name)?;
            if st.default_policy != policy_name(i) {
                bail!(
                    "{}: the firewall is attached with default {}, the config asks for {}; \
                     a default policy cannot change while attached (kscope fw detach {}, then reload)",
                    i.name,
                    st.default_policy,
                    policy_name(i),
                    i.name
                );
            }
            let mode_ok = match i.mode {
                Mode::Auto => true,
                Mode::Native => st.mode == "native",
                Mode::Skb => st.mode == "skb",
            };
            if !mode_ok {
                bail!(
                    "{}: the firewall is attached in {} mode, the config asks for {:?}; \
                     the mode cannot change while attached",
                    i.name,
                    st.mode,
                    i.mode
                );
            }
            if st.limit_table != i.limit_table {
                bail!(
                    "{}: the firewall is attached with limit_table {}, the config asks for {}; \
                     the rate limiter's table cannot change while attached \
                     (kscope fw detach {}, then reload)",
                    i.name,
                    st.limit_table,
                    i.limit_table,
                    i.name
                );
            }
        }
        for i in &self.loaded.config.firewall.interfaces {
            if !wanted.contains(i.name.as_str()) {
                plan.detach.push(i.name.clone());
            }
        }
        Ok(plan)
    }

    fn set_bpf_stats(&mut self, on: bool) {
        match (on, self.stats.is_some()) {
            (true, false) => match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => self.stats = Some(fd),
                Err(e) => tracing::warn!(
                    "per-program BPF stats unavailable (BPF_ENABLE_STATS needs Linux 5.8 and CAP_SYS_ADMIN; [metrics] bpf_stats = false silences this): {e}"
                ),
            },
            (false, true) => self.stats = None,
            _ => {}
        }
    }

    /// Stops everything the daemon runs. The firewall stays attached unless
    /// the config says otherwise, or `undo_start` asks to take back what
    /// this run attached (a failed start).
    async fn shutdown(&mut self, undo_start: bool) {
        self.tracers.stop_all(&self.shared);
        self.stats = None;
        let detach: Vec<String> = if self.loaded.config.firewall.detach_on_exit {
            self.loaded
                .config
                .firewall
                .interfaces
                .iter()
                .map(|i| i.name.clone())
                .collect()
        } else if undo_start {
            self.attached_here.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for iface in &detach {
            match firewall::detach(iface) {
                Ok(()) => tracing::info!("firewall detached from {iface}"),
                Err(e) => tracing::error!("detaching {iface}: {}", Chain(&e)),
            }
        }
        let kept = self.loaded.config.firewall.interfaces.len()
            - detach
                .len()
                .min(self.loaded.config.firewall.interfaces.len());
        if kept > 0 {
            tracing::info!(
                "the firewall stays attached on {kept} interface(s) ([firewall] detach_on_exit = false); `kscope fw detach IFACE` removes it"
            );
        }
    }
}

/// Hands memory freed after loading programs back to the kernel. aya
/// parses the kernel's BTF (several MiB) for each object it loads; glibc
/// keeps the freed pages, which would stay in the daemon's RSS for good.
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap memory; no pointers are
    // involved.
    unsafe { libc::malloc_trim(0) };
}

fn policy_name(i: &IfaceConfig) -> &'static str {
    match i.default {
        firewall::Policy::Pass => "pass",
        firewall::Policy::Drop => "drop",
    }
}

#[derive(Default)]
struct FirewallPlan {
    attach: Vec<IfaceConfig>,
    detach: Vec<String>,
}
