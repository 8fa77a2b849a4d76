//! The `kscope fw` verbs, from parsed arguments to output: the binary
//! calls one function per verb. Tables and JSON go to the writer given
//! (stdout), through [`crate::output`]; what happened goes to the log
//! (stderr).

use std::{
    io::{self, Write},
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{
    FwError, Mode, Policy,
    counters::{self, IfaceStats},
    maps::Edit,
    rules::{Rule, RuleSet, SrcList},
};
use crate::{
    cli::StatsArgs,
    output::{Align, Column, Format, Output},
    sys::{self, Cap},
};

/// `kscope fw attach`: [`super::attach_sized`], logged.
///
/// # Errors
/// As [`super::attach_sized`].
pub fn attach(iface: &str, mode: Mode, policy: Policy, sizes: super::Sizes) -> Result<(), FwError> {
    let a = super::attach_sized(iface, mode, policy, sizes)?;
    tracing::info!(
        "attached {} to {} ({} mode, default {}, program id {}); pinned under {}",
        kscope_common::fw::PROG_FW_XDP,
        a.iface,
        a.mode,
        a.default_policy,
        a.prog_id,
        a.pin_dir.display()
    );
    Ok(())
}

/// `kscope fw detach`: [`super::detach`], logged.
///
/// # Errors
/// As [`super::detach`].
pub fn detach(iface: &str) -> Result<(), FwError> {
    super::detach(iface)?;
    tracing::info!("detached from {iface} and removed its pins");
    Ok(())
}

/// `kscope fw block`, `unblock`, `allow` and `disallow`: applies `edits`
/// to the rules of `iface` (see [`super::resolve_iface`]) and logs what
/// changed.
///
/// # Errors
/// As [`super::open_rules`] and [`super::maps::RuleMaps::apply`].
pub fn edit(iface: Option<&str>, edits: &[Edit]) -> Result<(), FwError> {
    let (iface, mut maps, _lock) = super::open_rules("kscope fw rule changes", iface, true)?;
    let r = maps.apply(edits)?;
    let mut msg = format!("{iface}: {} added, {} removed", r.added, r.removed);
    if r.unchanged > 0 {
        msg.push_str(&format!(", {} already in place", r.unchanged));
    }
    tracing::info!("{msg}");
    Ok(())
}

/// `kscope fw load`: replaces the rule set of `iface` with `file`'s, which
/// is validated whole before any map is touched.
///
/// # Errors
/// A malformed rule file, or as [`super::open_rules`] and
/// [`super::maps::RuleMaps::load`].
pub fn load(iface: Option<&str>, file: &Path) -> Result<(), FwError> {
    let set = RuleSet::read(file)?;
    let (iface, mut maps, _lock) = super::open_rules("kscope fw load", iface, true)?;
    let start = Instant::now();
    let r = maps.load(&set)?;
    tracing::info!(
        "{iface}: loaded {} rules from {} in {:.0?} (slot {})",
        r.rules,
        file.display(),
        start.elapsed(),
        r.slot
    );
    Ok(())
}

/// `kscope fw save`: the rule set of `iface` in rule-file format.
///
/// # Errors
/// As [`super::open_rules`], and [`FwError::Output`].
pub fn save(iface: Option<&str>, mut w: impl Write) -> Result<(), FwError> {
    let (_, maps, _) = super::open_rules("kscope fw save", iface, false)?;
    let text = maps.rule_set()?.to_text();
    w.write_all(text.as_bytes()).map_err(FwError::Output)
}

/// `kscope fw rules`: every rule of `iface` with its hits.
///
/// # Errors
/// As [`super::open_rules`], and [`FwError::Output`].
pub fn rules(iface: Option<&str>, format: Format, w: impl Write) -> Result<(), FwError> {
    let (iface, maps, _) = super::open_rules("kscope fw rules", iface, false)?;
    let all = maps.rules_with_hits()?;
    let cols = vec![
        Column::left("IFACE", "iface", 15),
        Column::left("RULE", "rule", 44),
        Column::json("action"),
        Column::json("kind"),
        Column::json("target"),
        Column::right("HITS", "hits", 14),
    ];
    let mut out = Output::new(w, format, cols);
    let mut write = || -> io::Result<()> {
        out.header()?;
        for r in &all {
            let (action, kind, target) = match &r.rule {
                Rule::Src(SrcList::Allow, c) => ("allow", "src", c.to_string()),
                Rule::Src(SrcList::Block, c) => ("block", "src", c.to_string()),
                Rule::Port(p) => ("block", "port", p.to_string()),
                Rule::Limit(c, _) => ("limit", "src", c.to_string()),
            };
            out.row(|row| {
                row.str(&iface)?;
                row.display(r.rule)?;
                row.str(action)?;
                row.str(kind)?;
                row.str(&target)?;
                row.u64(r.hits)
            })?;
        }
        out.flush()
    };
    write().map_err(FwError::Output)
}

/// `kscope fw status`: the interfaces kscope is attached to. A table with
/// none is a log line instead; JSON is then no line at all.
///
/// # Errors
/// As [`super::status`], and [`FwError::Output`].
pub fn status(format: Format, w: impl Write) -> Result<(), FwError> {
    let all = super::status()?;
    if all.is_empty() && format == Format::Table {
        tracing::info!("kscope is not attached to any interface");
        return Ok(());
    }
    let cols = vec![
        Column::left("IFACE", "iface", 15),
        Column::json("ifindex"),
        Column::left("MODE", "mode", 6),
        Column::left("DEFAULT", "default_policy", 7),
        Column::right("PROG ID", "prog_id", 8),
        Column::right("LINK ID", "link_id", 8),
        Column::right("BUCKETS", "limit_table", 9),
        Column::right("SOURCES", "track_sources", 9),
        Column::left("ATTACHED AT", "attached_at", 20),
        Column::json("attached_at_unix"),
        Column::json("attached"),
        Column::table("STATE", 0, Align::Left),
    ];
    let mut out = Output::new(w, format, cols);
    let mut write = || -> io::Result<()> {
        out.header()?;
        for s in &all {
            out.row(|r| {
                r.str(&s.iface)?;
                r.u64(s.ifindex.into())?;
                r.str(s.mode)?;
                r.str(s.default_policy)?;
                r.u64(s.prog_id.into())?;
                r.u64(s.link_id.into())?;
                r.u64(s.limit_table.into())?;
                r.u64(s.track_sources.into())?;
                r.str(&s.attached_at)?;
                r.u64(s.attached_at_unix)?;
                r.bool(s.attached)?;
                r.str(if s.attached {
                    "attached"
                } else {
                    "interface gone (run fw detach to clean up)"
                })
            })?;
        }
        out.flush()
    };
    write().map_err(FwError::Output)
}

/// `kscope fw stats`: the counters of one interface or of every attached
/// one (see [`counters::write_stats`]); with `--watch`, their rates every
/// interval until SIGINT or SIGTERM (see [`counters::write_rates`]).
///
/// # Errors
/// Missing CAP_BPF, bpffs unavailable, [`FwError::NothingAttached`],
/// unreadable counters, [`FwError::Signals`] or [`FwError::Output`].
pub fn stats(args: &StatsArgs, mut w: impl Write) -> Result<(), FwError> {
    sys::require_caps("kscope fw stats", &[Cap::Bpf])?;
    sys::ensure_bpffs()?;
    let ifaces = match &args.iface {
        Some(i) => vec![i.clone()],
        None => {
            let all = super::attached_ifaces()?;
            if all.is_empty() {
                return Err(FwError::NothingAttached);
            }
            all
        }
    };
    let format = Format::json(args.json);
    let read_all =
        || -> Result<Vec<_>, FwError> { ifaces.iter().map(|i| super::read_counters(i)).collect() };
    let Some(interval) = args.watch else {
        let all = read_all()?;
        let reasons: Vec<_> = ifaces
            .iter()
            .map(|i| super::read_reasons(i).map(|r| r.sum_reasons()))
            .collect::<Result<_, _>>()?;
        let stats: Vec<IfaceStats<'_>> = ifaces
            .iter()
            .zip(&all)
            .zip(&reasons)
            .map(|((iface, counters), reasons)| IfaceStats {
                iface,
                counters,
                reasons,
            })
            .collect();
        return counters::write_stats(w, format, &stats, args.per_cpu).map_err(FwError::Output);
    };

    let stop = sys::stop_on_signals().map_err(FwError::Signals)?;
    let mut before: Vec<_> = read_all()?.iter().map(|pc| pc.sum()).collect();
    let mut at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Sleep in short steps so Ctrl-C ends the watch promptly.
        let deadline = at + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now: Vec<_> = read_all()?.iter().map(|pc| pc.sum()).collect();
        let elapsed = at.elapsed();
        at = Instant::now();
        let rates: Vec<_> = ifaces
            .iter()
            .zip(&now)
            .zip(&before)
            .map(|((iface, n), b)| (iface.as_str(), n.rates_since(b, elapsed)))
            .collect();
        counters::write_rates(&mut w, format, elapsed, &rates).map_err(FwError::Output)?;
        before = now;
    }
    Ok(())
}
