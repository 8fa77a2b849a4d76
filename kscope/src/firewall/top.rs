//! `kscope fw top`: the heaviest sources of an interface, from the
//! per-source counters the programs keep when attached with
//! `--track-sources` (an LRU per-CPU hash, read in batches).
//!
//! Rates are the difference of two reads over the interval; totals are
//! what the kernel counted since the source entered the table (a source
//! the LRU recycled starts again from zero).

use std::{
    collections::HashMap,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::maps::MapData;
use kscope_common::fw::{MAP_SOURCES, SourceKey, SourceStats, port_hit_id};

use super::{
    FwError,
    maps::HitKey,
    rules::{PortSpec, Rule},
};
use crate::{
    output::{Column, Format, Output},
    sys,
};

/// What `fw top` sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// Packets per second over the interval.
    Pps,
    /// Bytes per second over the interval.
    Bps,
    /// Packets since the source was first seen.
    Packets,
    /// Bytes since the source was first seen.
    Bytes,
}

/// One source's counts, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub rate_limited: u64,
    /// The rule the source's last packet matched (the CPU that saw the
    /// most packets decides when CPUs disagree); 0 for none.
    pub rule: u32,
}

/// A row of `fw top`.
#[derive(Clone, Debug, PartialEq)]
pub struct Talker {
    pub source: IpAddr,
    pub now: Totals,
    pub pps: f64,
    pub bps: f64,
}

/// Sums one source's per-CPU values.
fn sum(per_cpu: &[SourceStats]) -> Totals {
    let mut t = Totals::default();
    let mut busiest = 0;
    for s in per_cpu {
        t.packets = t.packets.wrapping_add(s.packets);
        t.bytes = t.bytes.wrapping_add(s.bytes);
        t.dropped = t.dropped.wrapping_add(s.dropped);
        t.rate_limited = t.rate_limited.wrapping_add(s.rate_limited);
        if s.packets > busiest {
            busiest = s.packets;
            t.rule = s.rule;
        }
    }
    t
}

fn address(k: &SourceKey) -> Option<IpAddr> {
    match k.family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            k.addr[0], k.addr[1], k.addr[2], k.addr[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(k.addr))),
        _ => None,
    }
}

/// Reads a source table (`FW_SOURCES`) in batches, summed over CPUs.
///
/// # Errors
/// A failed map read, or an unknown number of CPUs.
pub fn read(map: &MapData) -> Result<HashMap<IpAddr, Totals>, FwError> {
    let cpus = super::nr_cpus()?;
    let (ks, vs) = (size_of::<SourceKey>(), size_of::<SourceStats>());
    let ops = sys::bpf::MapFdOps::new(map.fd().as_fd(), ks, vs, cpus);
    let (d, _) = sys::bpf::dump_map(&ops, None).map_err(|source| FwError::MapIo {
        what: "read FW_SOURCES",
        source,
    })?;
    let mut out = HashMap::with_capacity(d.len);
    let mut per_cpu = Vec::with_capacity(cpus);
    for i in 0..d.len {
        let (k, v) = d.entry(&ops, i);
        // SAFETY: `k` is one key of `ks` bytes; SourceKey is plain data.
        let key: SourceKey = unsafe { std::ptr::read_unaligned(k.as_ptr().cast()) };
        per_cpu.clear();
        for c in v.chunks_exact(vs).take(cpus) {
            // SAFETY: each chunk is one CPU's value of `vs` bytes.
            per_cpu.push(unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<SourceStats>()) });
        }
        if let Some(ip) = address(&key) {
            out.insert(ip, sum(&per_cpu));
        }
    }
    Ok(out)
}

/// The heaviest `n` sources by `by`, with rates from `before` to `now`
/// over `secs` seconds.
pub fn rank(
    before: &HashMap<IpAddr, Totals>,
    now: &HashMap<IpAddr, Totals>,
    secs: f64,
    by: By,
    n: usize,
) -> Vec<Talker> {
    let mut rows: Vec<Talker> = now
        .iter()
        .map(|(&source, &t)| {
            // A source recycled by the LRU since `before` starts again.
            let was = before
                .get(&source)
                .filter(|b| b.packets <= t.packets)
                .copied()
                .unwrap_or_default();
            Talker {
                source,
                now: t,
                pps: (t.packets - was.packets) as f64 / secs,
                bps: t.bytes.wrapping_sub(was.bytes) as f64 / secs,
            }
        })
        .collect();
    let key = |r: &Talker| match by {
        By::Pps => r.pps,
        By::Bps => r.bps,
        By::Packets => r.now.packets as f64,
        By::Bytes => r.now.bytes as f64,
    };
    rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.source.cmp(&b.source)));
    rows.truncate(n);
    rows
}

/// The rule text for a rule id (or per-port counter id) `fw top` shows.
fn rule_names(rules: &[(Rule, HitKey)]) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for (rule, key) in rules {
        match key {
            HitKey::Id(id) => {
                out.insert(*id, rule.to_string());
            }
            HitKey::Ports(PortSpec { lo, hi, bits }) => {
                for port in *lo..=*hi {
                    for (bit, udp) in [
                        (kscope_common::fw::PORT_TCP, false),
                        (kscope_common::fw::PORT_UDP, true),
                    ] {
                        if bits & bit != 0 {
                            out.insert(port_hit_id(udp, port), rule.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Reads the source table and ranks it against the previous read.
struct Sampler {
    map: MapData,
    maps: super::maps::RuleMaps,
    names: (super::maps::Generation, HashMap<u32, String>),
    before: HashMap<IpAddr, Totals>,
    at: Instant,
    n: usize,
}

impl Sampler {
    /// The heaviest `n` sources since the last call, with the text of the
    /// rule each last matched.
    fn sample(&mut self, by: By) -> Result<Vec<(Talker, String)>, FwError> {
        let now = read(&self.map)?;
        let secs = self.at.elapsed().as_secs_f64();
        self.at = Instant::now();
        let generation = self.maps.generation()?;
        if generation != self.names.0 {
            self.names = (generation, rule_names(&self.maps.rules_with_keys()?));
        }
        let rows = rank(&self.before, &now, secs, by, self.n);
        self.before = now;
        Ok(rows
            .into_iter()
            .map(|r| {
                let rule = match r.now.rule {
                    0 => "-".to_owned(),
                    id => self
                        .names
                        .1
                        .get(&id)
                        .cloned()
                        .unwrap_or_else(|| "(removed rule)".to_owned()),
                };
                (r, rule)
            })
            .collect())
    }
}

/// `kscope fw top`: samples the sources of `iface` over `interval` and
/// prints the heaviest `n`; with `watch`, again every interval until
/// SIGINT or SIGTERM, as a live screen when `screen` (stdout a terminal,
/// no `--json`).
///
/// # Errors
/// kscope not attached, sources not tracked, a map read, or the output.
#[expect(clippy::too_many_arguments, reason = "one per command-line option")]
pub fn top(
    iface: Option<&str>,
    n: usize,
    by: By,
    interval: Duration,
    watch: bool,
    screen: bool,
    format: Format,
    mut w: impl Write,
) -> Result<(), FwError> {
    let (iface, maps, _) = super::open_rules("kscope fw top", iface, false)?;
    let config = super::read_config(&super::pin_dir(&iface))?;
    if config.track_sources == 0 {
        return Err(FwError::NotTracking(iface));
    }
    let path = super::pin_dir(&iface).join(MAP_SOURCES);
    let map = MapData::from_pin(&path).map_err(super::pin_err(&path))?;
    let stop = if watch {
        sys::stop_on_signals().map_err(FwError::Signals)?
    } else {
        std::sync::Arc::new(AtomicBool::new(false))
    };
    let names = (maps.generation()?, rule_names(&maps.rules_with_keys()?));
    let mut s = Sampler {
        before: read(&map)?,
        map,
        maps,
        names,
        at: Instant::now(),
        n,
    };
    if watch && screen {
        return screen::run(&iface, interval, by, &stop, |by| s.sample(by));
    }
    let mut at = s.at;
    loop {
        let deadline = at + interval;
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(100)));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        at = Instant::now();
        let rows = s.sample(by)?;
        write_rows(&mut w, format, &iface, &rows).map_err(FwError::Output)?;
        if !watch {
            return Ok(());
        }
    }
}

fn write_rows(
    w: &mut impl Write,
    format: Format,
    iface: &str,
    rows: &[(Talker, String)],
) -> io::Result<()> {
    let cols = vec![
        Column::json("ts_unix_ns"),
        Column::json("iface"),
        Column::left("SOURCE", "source", 39),
        Column::right("PPS", "pps", 10),
        Column::right("BPS", "bps", 12),
        Column::right("PACKETS", "packets", 12),
        Column::right("BYTES", "bytes", 14),
        Column::right("PASSED", "passed", 12),
        Column::right("DROPPED", "dropped", 12),
        Column::right("LIMITED", "rate_limited", 12),
        Column::left("RULE", "rule", 0),
    ];
    let ts = sys::unix_now_ns();
    let mut out = Output::new(w, format, cols);
    out.header()?;
    for (r, rule) in rows {
        out.row(|row| {
            row.u64(ts)?;
            row.str(iface)?;
            row.display(r.source)?;
            row.f64(r.pps, 1)?;
            row.f64(r.bps, 0)?;
            row.u64(r.now.packets)?;
            row.u64(r.now.bytes)?;
            row.u64(r.now.packets.saturating_sub(r.now.dropped))?;
            row.u64(r.now.dropped)?;
            row.u64(r.now.rate_limited)?;
            row.str(rule)
        })?;
    }
    out.flush()
}

/// The live screen of `fw top --watch` on a terminal.
mod screen {
    use std::{io, sync::atomic::AtomicBool, time::Duration};

    use ratatui::{
        crossterm::event::{KeyCode, KeyModifiers},
        layout::{Constraint, Layout},
        style::{Modifier, Style},
        widgets::{Paragraph, Row, Table},
    };

    use super::{By, FwError, Talker};
    use crate::top::screen::{Key, Screen, live};

    const SORTS: [By; 4] = [By::Pps, By::Bps, By::Packets, By::Bytes];

    fn name(by: By) -> &'static str {
        match by {
            By::Pps => "pps",
            By::Bps => "bps",
            By::Packets => "packets",
            By::Bytes => "bytes",
        }
    }

    fn draw(
        f: &mut ratatui::Frame<'_>,
        iface: &str,
        by: By,
        every: Duration,
        rows: &[(Talker, String)],
    ) {
        let [head, body] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(f.area());
        f.render_widget(
            Paragraph::new(format!(
                "kscope fw top - {iface}, {} sources, every {}s, sort: {} (s: next sort, q: quit)",
                rows.len(),
                every.as_secs_f64(),
                name(by)
            )),
            head,
        );
        let header = Row::new([
            "SOURCE", "PPS", "BPS", "PACKETS", "BYTES", "PASSED", "DROPPED", "LIMITED", "RULE",
        ])
        .style(Style::default().add_modifier(Modifier::REVERSED));
        let lines = rows.iter().map(|(r, rule)| {
            Row::new([
                r.source.to_string(),
                format!("{:.1}", r.pps),
                format!("{:.0}", r.bps),
                r.now.packets.to_string(),
                r.now.bytes.to_string(),
                r.now.packets.saturating_sub(r.now.dropped).to_string(),
                r.now.dropped.to_string(),
                r.now.rate_limited.to_string(),
                rule.clone(),
            ])
        });
        let widths = [
            Constraint::Length(39),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(14),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Min(10),
        ];
        f.render_widget(Table::new(lines, widths).header(header), body);
    }

    /// The screen over one interface's sources; `sample` gives the rows
    /// for a sort key.
    struct Talkers<'a, F> {
        iface: &'a str,
        every: Duration,
        by: By,
        rows: Vec<(Talker, String)>,
        sample: F,
    }

    impl<F> Screen for Talkers<'_, F>
    where
        F: FnMut(By) -> Result<Vec<(Talker, String)>, FwError>,
    {
        type Error = FwError;

        fn terminal_error(e: io::Error) -> FwError {
            FwError::Output(e)
        }

        fn refresh(&mut self) -> Result<(), FwError> {
            self.rows = (self.sample)(self.by)?;
            Ok(())
        }

        fn draw(&mut self, f: &mut ratatui::Frame<'_>) {
            draw(f, self.iface, self.by, self.every, &self.rows);
        }

        fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> Key {
            match code {
                KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
                KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Key::Quit,
                KeyCode::Char('s') => {
                    let i = SORTS.iter().position(|s| *s == self.by).unwrap_or(0);
                    self.by = SORTS[(i + 1) % SORTS.len()];
                    Key::Redraw
                }
                _ => Key::Nothing,
            }
        }
    }

    /// Runs the screen until `q`, Esc, Ctrl-C or SIGTERM (`stop`); `sample`
    /// gives the rows for a sort key each interval.
    pub(super) fn run(
        iface: &str,
        every: Duration,
        by: By,
        stop: &AtomicBool,
        sample: impl FnMut(By) -> Result<Vec<(Talker, String)>, FwError>,
    ) -> Result<(), FwError> {
        let mut screen = Talkers {
            iface,
            every,
            by,
            rows: Vec::new(),
            sample,
        };
        live(&mut screen, every, stop, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(packets: u64, bytes: u64) -> Totals {
        Totals {
            packets,
            bytes,
            ..Totals::default()
        }
    }

    #[test]
    fn per_cpu_values_add_up_and_the_busiest_cpu_names_the_rule() {
        let s = |packets, dropped, rule| SourceStats {
            packets,
            bytes: packets * 100,
            dropped,
            rate_limited: dropped / 2,
            rule,
            _pad: 0,
        };
        let got = sum(&[s(3, 2, 7), s(10, 4, 9), s(0, 0, 0)]);
        assert_eq!(
            got,
            Totals {
                packets: 13,
                bytes: 1300,
                dropped: 6,
                rate_limited: 3,
                rule: 9
            }
        );
    }

    #[test]
    fn ranking_uses_the_interval_and_restarts_recycled_sources() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let before = HashMap::from([
            (ip("192.0.2.1"), t(100, 1_000)),
            (ip("192.0.2.2"), t(10, 50_000)),
            (ip("192.0.2.3"), t(500, 500)),
        ]);
        let now = HashMap::from([
            (ip("192.0.2.1"), t(300, 3_000)),  // +200 packets, +2,000 bytes
            (ip("192.0.2.2"), t(20, 150_000)), // +10 packets, +100,000 bytes
            (ip("192.0.2.3"), t(40, 40)),      // recycled: 40 new packets
            (ip("2001:db8::1"), t(1_000, 10)), // new: 1,000 packets
        ]);
        let order = |by, n| -> Vec<String> {
            rank(&before, &now, 2.0, by, n)
                .iter()
                .map(|r| r.source.to_string())
                .collect()
        };
        assert_eq!(
            order(By::Pps, 10),
            ["2001:db8::1", "192.0.2.1", "192.0.2.3", "192.0.2.2"]
        );
        assert_eq!(order(By::Bps, 1), ["192.0.2.2"]);
        assert_eq!(order(By::Packets, 2), ["2001:db8::1", "192.0.2.1"]);
        let r = rank(&before, &now, 2.0, By::Pps, 10);
        assert_eq!(r[1].pps, 100.0);
        assert_eq!(r[1].bps, 1_000.0);
        assert_eq!(r[2].pps, 20.0);
    }
}
