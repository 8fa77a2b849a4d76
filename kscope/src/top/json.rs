//! `kscope top --json`: one object per program per snapshot, one per line.

use std::io::{self, Write};

use super::{Collector, Prog};
use crate::output::text::write_json_str;

/// Writes one line for `p`, as of `ts_unix_ns`.
pub(crate) fn write_prog(
    w: &mut impl Write,
    c: &Collector,
    p: &Prog,
    ts_unix_ns: u64,
) -> io::Result<()> {
    write!(w, "{{\"ts_unix_ns\":{ts_unix_ns},\"id\":{},\"type\":", p.id)?;
    write_json_str(w, p.type_name.as_bytes())?;
    w.write_all(b",\"name\":")?;
    write_json_str(w, p.name.as_bytes())?;
    w.write_all(b",\"pids\":[")?;
    for (i, pid) in p.pids.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write!(w, "{pid}")?;
    }
    w.write_all(b"],\"comms\":[")?;
    for (i, &pid) in p.pids.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_json_str(w, c.comm(pid))?;
    }
    writeln!(
        w,
        "],\"runs_per_sec\":{:.3},\"avg_ns\":{},\"cpu_pct\":{:.4},\"run_count\":{},\"run_time_ns\":{},\"map_bytes\":{}}}",
        p.runs_per_sec, p.avg_ns, p.cpu_pct, p.run_count, p.run_time_ns, p.map_bytes
    )
}
