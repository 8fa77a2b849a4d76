//! `kscope hist runq|syscall`: latency distributions, aggregated in the
//! kernel.
//!
//! These are tracers like the others ([`Tracer`](super::Tracer), rendered as a
//! [`HistTracer`](super::HistTracer)), run by the same runner
//! in a third mode, [`Mode::Hist`](super::Mode): each program adds a
//! latency to its key's log2 histogram ([`Hist`], `tracer_common!(..,
//! hist)`) in a per-CPU hash with atomic adds, and nothing goes through the
//! ring buffer. User space reads the table in batches (`dump_map`) at the
//! end, or every `--interval` (printing what was added since the last
//! read: deltas of the running totals, which the kernel never resets, so
//! no latency is lost or counted twice between two reads).
//!
//! Percentiles are estimated from the buckets: the rank `ceil(q × count)`
//! falls in one bucket, and the value is interpolated linearly between
//! that bucket's bounds by the rank's position among the bucket's
//! latencies. The estimate is within the bucket holding the true value, so
//! within a factor of 2 of it.

use std::{
    io::{self, Write},
    time::Duration,
};

use kscope_common::trace::Hist;

use super::{Filters, HistTracer};
use crate::output::{Align, Column, Format, Output, Row};

/// Width of the distribution's bars, in stars.
const BAR_WIDTH: u64 = 40;

/// Bounds of bucket `i`, both inclusive: `[2^i, 2^(i+1) - 1]` ns, and
/// `[0, 1]` for bucket 0.
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    let lo = if i == 0 { 0 } else { 1u64 << i };
    let hi = if i + 1 >= 64 {
        u64::MAX
    } else {
        (1u64 << (i + 1)) - 1
    };
    (lo, hi)
}

/// Latencies in `h`, from its buckets.
fn total(h: &Hist) -> u64 {
    h.slots.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// The `q` quantile (0 < q ≤ 1) of `h`, in ns, by linear interpolation
/// within the log2 bucket that holds rank `ceil(q × count)` (see the
/// module doc); `None` for an empty histogram.
pub fn percentile(h: &Hist, q: f64) -> Option<u64> {
    let n = total(h);
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut below = 0u64;
    for (i, &c) in h.slots.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if below + c >= rank {
            let (lo, hi) = bucket_bounds(i);
            let frac = (rank - below) as f64 / c as f64;
            let v = lo as f64 + (hi - lo) as f64 * frac;
            return Some(v.round().min(u64::MAX as f64) as u64);
        }
        below += c;
    }
    None
}

/// What `cur` holds beyond `prev`: the latencies added between two reads
/// of the same key's running totals.
pub fn delta(cur: &Hist, prev: &Hist) -> Hist {
    let mut d = Hist::default();
    for (o, (c, p)) in d.slots.iter_mut().zip(cur.slots.iter().zip(&prev.slots)) {
        *o = c.wrapping_sub(*p);
    }
    d.count = cur.count.wrapping_sub(prev.count);
    d.sum_ns = cur.sum_ns.wrapping_sub(prev.sum_ns);
    d
}

/// Adds `b` into `a` (summing CPUs).
pub(crate) fn add(a: &mut Hist, b: &Hist) {
    for (x, y) in a.slots.iter_mut().zip(&b.slots) {
        *x = x.wrapping_add(*y);
    }
    a.count = a.count.wrapping_add(b.count);
    a.sum_ns = a.sum_ns.wrapping_add(b.sum_ns);
}

/// The buckets a histogram shows: from its lowest non-empty bucket to its
/// highest; empty when it is.
fn shown(h: &Hist) -> std::ops::Range<usize> {
    let first = h.slots.iter().position(|&c| c != 0);
    let last = h.slots.iter().rposition(|&c| c != 0);
    match (first, last) {
        (Some(a), Some(b)) => a..b + 1,
        _ => 0..0,
    }
}

/// The bar of a bucket of `count` when the fullest holds `max`.
fn bar(count: u64, max: u64) -> String {
    let stars = if max == 0 {
        0
    } else {
        (u128::from(count) * u128::from(BAR_WIDTH) / u128::from(max)) as usize
    };
    format!(
        "|{}{}|",
        "*".repeat(stars),
        " ".repeat(BAR_WIDTH as usize - stars)
    )
}

/// A duration for a table: `950ns`, `12.3us`, `2.10ms`, `1.50s`.
fn human_ns(ns: u64) -> String {
    let f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", f / 1e6)
    } else {
        format!("{:.2}s", f / 1e9)
    }
}

/// When a histogram was printed: `ts_unix_ns` (JSON), and in interval mode
/// TIME(s), seconds since the start (a table).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    pub(crate) unix_ns: u64,
    pub(crate) elapsed: Option<f64>,
}

/// The quantiles every histogram reports.
const QUANTILES: [f64; 3] = [0.50, 0.90, 0.99];

/// Writes the histograms `hists` of tracer `T`.
///
/// Table, per histogram: a summary row (`TIME(s)` in interval mode, the
/// key's columns, `COUNT AVG P50 P90 P99`), then the bucket rows
/// `NSECS COUNT DISTRIBUTION` (`lo -> hi`, inclusive bounds in ns, and a
/// bar of stars scaled to the fullest bucket), then a blank line.
/// JSON, one object per histogram: `ts_unix_ns`, the key's members,
/// `count`, `sum_ns`, `p50_ns`, `p90_ns`, `p99_ns` (null when empty) and
/// `buckets`: `[{le_ns, count}]` from the lowest non-empty bucket to the
/// highest, `le_ns` the bucket's inclusive upper bound.
///
/// # Errors
/// Output errors.
pub(crate) fn write_hists<T: HistTracer, W: Write>(
    mut w: W,
    format: Format,
    stamp: Stamp,
    by_cgroup: bool,
    hists: &[(T::Key, Hist)],
) -> io::Result<()> {
    // `--per-cgroup`: the cgroup's columns come first in the key's.
    let key_columns = || {
        let cgroup = by_cgroup.then(super::cgroup_columns);
        cgroup.into_iter().flatten().chain(T::hist_key_columns())
    };
    let write_key = |key: &T::Key, r: &mut Row<'_, &mut W>| -> io::Result<()> {
        if by_cgroup {
            super::write_cgroup(r, T::hist_cgroup_id(key))?;
        }
        T::write_hist_key(key, r)
    };
    if format == Format::Json {
        let mut cols = vec![Column::json("ts_unix_ns")];
        cols.extend(key_columns());
        cols.extend([
            Column::json("count"),
            Column::json("sum_ns"),
            Column::json("p50_ns"),
            Column::json("p90_ns"),
            Column::json("p99_ns"),
            Column::json("buckets"),
        ]);
        const BUCKET: [Column; 2] = [Column::json("le_ns"), Column::json("count")];
        let mut out = Output::new(&mut w, format, cols);
        for (key, h) in hists {
            out.row(|r| {
                r.u64(stamp.unix_ns)?;
                write_key(key, r)?;
                r.u64(total(h))?;
                r.u64(h.sum_ns)?;
                for q in QUANTILES {
                    opt_u64(r, percentile(h, q))?;
                }
                r.objects(&BUCKET, shown(h), |r, i| {
                    r.u64(bucket_bounds(i).1)?;
                    r.u64(h.slots[i])
                })
            })?;
        }
        return out.flush();
    }
    for (key, h) in hists {
        let mut cols = Vec::new();
        if stamp.elapsed.is_some() {
            cols.push(Column::table("TIME(s)", 10, Align::Left));
        }
        cols.extend(key_columns());
        cols.extend([
            Column::right("COUNT", "", 10),
            Column::right("AVG", "", 10),
            Column::right("P50", "", 10),
            Column::right("P90", "", 10),
            Column::right("P99", "", 10),
        ]);
        let mut out = Output::new(&mut w, format, cols);
        out.row(|r| {
            if let Some(t) = stamp.elapsed {
                r.f64(t, 3)?;
            }
            write_key(key, r)?;
            let n = total(h);
            r.u64(n)?;
            match h.sum_ns.checked_div(n) {
                Some(avg) => r.str(&human_ns(avg))?,
                None => r.null()?,
            }
            for q in QUANTILES {
                match percentile(h, q) {
                    Some(v) => r.str(&human_ns(v))?,
                    None => r.null()?,
                }
            }
            Ok(())
        })?;
        out.flush()?;
        write_bars(&mut w, h)?;
        writeln!(w)?;
    }
    w.flush()
}

/// The bucket rows of one histogram's table.
fn write_bars<W: Write>(w: W, h: &Hist) -> io::Result<()> {
    let cols = vec![
        Column::right("NSECS", "", 27),
        Column::right("COUNT", "", 10).gap(3),
        Column::left("DISTRIBUTION", "", 0),
    ];
    let mut out = Output::new(w, Format::Table, cols);
    out.header()?;
    let max = h.slots.iter().copied().max().unwrap_or(0);
    for i in shown(h) {
        let (lo, hi) = bucket_bounds(i);
        out.row(|r| {
            r.str(&format!("{lo} -> {hi}"))?;
            r.u64(h.slots[i])?;
            r.str(&bar(h.slots[i], max))
        })?;
    }
    out.flush()
}

fn opt_u64<W: Write>(r: &mut Row<'_, W>, v: Option<u64>) -> io::Result<()> {
    match v {
        Some(v) => r.u64(v),
        None => r.null(),
    }
}

/// How `kscope hist NAME` runs, whatever the tracer.
#[derive(Clone, Debug, Default)]
pub(crate) struct HistRun {
    pub(crate) filters: Filters,
    /// Stop after this long (default: at SIGINT or SIGTERM).
    pub(crate) duration: Option<Duration>,
    /// Print what was added every this long, too.
    pub(crate) interval: Option<Duration>,
    pub(crate) format: Format,
    /// One histogram per cgroup too (`--per-cgroup`).
    pub(crate) by_cgroup: bool,
}

#[cfg(test)]
mod tests {
    use kscope_common::trace::{HIST_SLOTS, SyscallKey, hist_slot};

    use super::*;
    use crate::trace::render::json_lines;

    fn hist(latencies: &[u64]) -> Hist {
        let mut h = Hist::default();
        for &ns in latencies {
            h.slots[hist_slot(ns)] += 1;
            h.count += 1;
            h.sum_ns += ns;
        }
        h
    }

    #[test]
    fn every_latency_lands_in_the_bucket_whose_bounds_hold_it() {
        for ns in (0..4096)
            .chain((1..64).flat_map(|s| [(1u64 << s) - 1, 1 << s, (1 << s) + 1]))
            .chain([u64::MAX, 2_000_000, 2_100_000])
        {
            let i = hist_slot(ns);
            assert!(i < HIST_SLOTS);
            let (lo, hi) = bucket_bounds(i);
            assert!((lo..=hi).contains(&ns), "{ns} in bucket {i} [{lo}, {hi}]");
        }
        // The buckets tile 0..=u64::MAX without gaps.
        for i in 1..HIST_SLOTS {
            assert_eq!(bucket_bounds(i).0, bucket_bounds(i - 1).1 + 1);
        }
        assert_eq!(hist_slot(2_000_000), 20);
        assert_eq!(bucket_bounds(20), (1_048_576, 2_097_151));
        assert_eq!(bucket_bounds(63).1, u64::MAX);
    }

    #[test]
    fn percentiles_interpolate_within_the_bucket() {
        assert_eq!(percentile(&Hist::default(), 0.5), None);
        // 100 latencies in [1024, 2047]: rank 50 is halfway through.
        let h = hist(&[1500; 100]);
        assert_eq!(percentile(&h, 0.5), Some(1024 + (1023 * 50 / 100) + 1));
        assert_eq!(percentile(&h, 1.0), Some(2047));
        // 90 fast, 10 slow: p50 and p90 among the fast, p99 among the slow.
        let mut l = vec![100u64; 90];
        l.extend([5_000_000; 10]);
        let h = hist(&l);
        let (lo, hi) = bucket_bounds(hist_slot(100));
        let p50 = percentile(&h, 0.5).expect("p50");
        assert!((lo..=hi).contains(&p50), "{p50}");
        assert_eq!(percentile(&h, 0.9), Some(hi));
        let (lo, hi) = bucket_bounds(hist_slot(5_000_000));
        let p99 = percentile(&h, 0.99).expect("p99");
        assert!((lo..=hi).contains(&p99), "{p99}");
        // Monotonic in q.
        let ps: Vec<u64> = [0.1, 0.5, 0.9, 0.95, 0.99, 1.0]
            .iter()
            .map(|&q| percentile(&h, q).expect("p"))
            .collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "{ps:?}");
    }

    #[test]
    fn deltas_are_what_was_added_between_reads() {
        let before = hist(&[10, 20, 3000]);
        let mut after = before;
        add(&mut after, &hist(&[3000, 1 << 40]));
        let d = delta(&after, &before);
        assert_eq!(d, hist(&[3000, 1 << 40]));
    }

    fn render(format: Format, elapsed: Option<f64>) -> String {
        render_by(format, elapsed, false)
    }

    /// A cgroup id no cgroup2 directory has: it names no path.
    const GONE_CGROUP: u64 = u64::MAX - 1;

    fn render_by(format: Format, elapsed: Option<f64>, by_cgroup: bool) -> String {
        let rows = [
            (
                SyscallKey {
                    nr: 35,
                    cgroup_id: GONE_CGROUP,
                    ..SyscallKey::default()
                },
                hist(&[2_150_000; 7]),
            ),
            (
                SyscallKey {
                    nr: 39,
                    ..SyscallKey::default()
                },
                hist(&[300, 600, 700]),
            ),
        ];
        let stamp = Stamp {
            unix_ns: 1_700_000_000_000_000_000,
            elapsed,
        };
        let mut v = Vec::new();
        write_hists::<crate::trace::syscall::Syscall, _>(&mut v, format, stamp, by_cgroup, &rows)
            .expect("write");
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn tables_show_a_summary_and_a_bar_per_bucket() {
        let text = render(Format::Table, None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SYSCALL"), "{text}");
        assert!(
            lines[0].contains("COUNT") && lines[0].contains("P99"),
            "{text}"
        );
        assert!(lines[1].starts_with("nanosleep "), "{text}");
        assert!(lines[1].contains(" 7 "), "{text}");
        assert!(lines[2].trim_start().starts_with("NSECS"), "{text}");
        let full = format!("|{}|", "*".repeat(40));
        assert!(
            lines[3].trim_start().starts_with("2097152 -> 4194303")
                && lines[3].contains(" 7 ")
                && lines[3].ends_with(&full),
            "{text}"
        );
        assert_eq!(lines[4], "", "{text}");
        // getpid: 300 in [256, 511], 600 and 700 in [512, 1023].
        let bars: Vec<&str> = lines[8..].iter().copied().take(2).collect();
        assert!(bars[0].trim_start().starts_with("256 -> 511"), "{text}");
        assert!(
            bars[0].ends_with(&format!("|{}{}|", "*".repeat(20), " ".repeat(20))),
            "{text}"
        );
        assert!(bars[1].ends_with(&full), "{text}");
        // Every bar row lines up with its header.
        let head = lines[2].find("DISTRIBUTION").expect("head");
        assert_eq!(lines[3].find('|'), Some(head), "{text}");
        // Interval mode stamps each summary.
        let text = render(Format::Table, Some(2.0));
        assert!(text.starts_with("TIME(s)"), "{text}");
        assert!(text.lines().nth(1).is_some_and(|l| l.starts_with("2.000 ")));
    }

    #[test]
    fn json_has_one_object_per_histogram_with_the_documented_members() {
        let v = json_lines(&render(Format::Json, None));
        assert_eq!(v.len(), 2);
        let o = &v[0];
        let keys: Vec<&str> = o
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        for k in [
            "ts_unix_ns",
            "syscall",
            "nr",
            "count",
            "sum_ns",
            "p50_ns",
            "p90_ns",
            "p99_ns",
            "buckets",
        ] {
            assert!(keys.contains(&k), "{k} missing: {o}");
        }
        assert_eq!(o["syscall"], "nanosleep");
        assert_eq!(o["nr"], 35);
        assert_eq!(o["count"], 7);
        assert_eq!(o["sum_ns"], 7 * 2_150_000);
        assert_eq!(o["ts_unix_ns"], 1_700_000_000_000_000_000u64);
        assert_eq!(
            o["buckets"],
            serde_json::json!([{"le_ns": 4_194_303, "count": 7}])
        );
        let p50 = o["p50_ns"].as_u64().expect("p50");
        assert!((2_097_152..=4_194_303).contains(&p50));
        assert_eq!(
            v[1]["buckets"],
            serde_json::json!([{"le_ns": 511, "count": 1}, {"le_ns": 1023, "count": 2}])
        );
    }

    #[test]
    fn per_cgroup_histograms_name_their_cgroup_first() {
        let text = render_by(Format::Table, None, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CGROUP "), "{text}");
        assert!(lines[0].find("SYSCALL") > lines[0].find("CGROUP"), "{text}");
        // A cgroup gone since shows as its id.
        assert!(lines[1].starts_with(&GONE_CGROUP.to_string()), "{text}");
        let v = json_lines(&render_by(Format::Json, None, true));
        assert_eq!(v[0]["cgroup_id"], GONE_CGROUP, "{}", v[0]);
        assert!(v[0]["cgroup"].is_null(), "{}", v[0]);
        assert!(v[0]["container_id"].is_null(), "{}", v[0]);
        assert_eq!(v[0]["syscall"], "nanosleep");
        // Without --per-cgroup, no cgroup members at all.
        let v = json_lines(&render(Format::Json, None));
        assert!(v[0].get("cgroup_id").is_none(), "{}", v[0]);
    }
}
