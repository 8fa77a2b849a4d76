//! `kscope demo`: the packet counter on real traffic, with nothing to set up.
//!
//! It builds a private [`Lab`] (two namespaces joined by veth), attaches
//! `fw_xdp` on the receiving end, sends a known number of IPv4 and IPv6
//! packets (UDP and ICMP echo) from the other end, and prints what kscope
//! counted next to what was sent. Everything is torn down on the way out,
//! also on Ctrl-C or an error: the lab and the attachment are values whose
//! `Drop` removes them.

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kscope_common::fw::Family;
use kscope_lab::netlab::{Lab, Observer, Seen, Sent, Traffic};

use crate::firewall::{self, Mode, Policy, counters};

/// Detaches on drop, so every way out of the demo removes the program.
struct Attachment<'a> {
    lab: &'a Lab,
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        let iface = self.lab.iface_b.clone();
        match self.lab.b.run(move || firewall::detach(&iface)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: detach failed: {e}"),
            Err(e) => eprintln!("warning: detach failed: {e}"),
        }
    }
}

/// Waits until the observer has seen everything that arrived and `read`
/// returns counters that agree with it (per `agree`), or `timeout` passes.
/// Returns the last observation either way, so a caller can report a
/// disagreement with numbers.
pub fn settle<T>(
    obs: &mut Observer,
    timeout: Duration,
    mut read: impl FnMut() -> anyhow::Result<T>,
    agree: impl Fn(&Seen, &T) -> bool,
) -> anyhow::Result<(Seen, T)> {
    let start = Instant::now();
    loop {
        obs.drain()?;
        let counted = read()?;
        std::thread::sleep(Duration::from_millis(30));
        let late = obs.drain()?;
        if (late == 0 && agree(&obs.seen, &counted)) || start.elapsed() > timeout {
            return Ok((obs.seen, counted));
        }
    }
}

fn check_stop(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs the demo, writing its report to `out`. Fails if the counters do not
/// match what was sent plus what the kernel sent by itself.
pub fn run(out: &mut impl Write, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let traffic = Traffic {
        udp4: 20,
        udp6: 20,
        ping4: 5,
        ping6: 5,
        payload: 64,
    };
    let lab = Lab::new("demo").context("creating the demo namespaces")?;
    check_stop(&stop)?;
    let iface = lab.iface_b.clone();
    let attached = lab
        .b
        .run(move || firewall::attach(&iface, Mode::Auto, Policy::Pass))
        .context("entering the demo namespace")??;
    let _attachment = Attachment { lab: &lab };
    let mut obs = Observer::open(&lab.b, &lab.iface_b).context("opening the packet observer")?;
    lab.up().context("configuring the demo link")?;
    check_stop(&stop)?;
    let sent = lab.send(&traffic).context("sending demo traffic")?;
    check_stop(&stop)?;

    let iface = lab.iface_b.clone();
    let (seen, pc) = settle(
        &mut obs,
        Duration::from_secs(3),
        || Ok(firewall::read_counters(&iface)?),
        |seen, pc| agrees(seen, &pc.sum()),
    )?;
    check_stop(&stop)?;

    let t = pc.sum();
    writeln!(
        out,
        "kscope demo: {} attached to {} in namespace {} ({} mode, program id {})",
        kscope_common::fw::PROG_FW_XDP,
        lab.iface_b,
        lab.b.name(),
        attached.mode,
        attached.prog_id
    )?;
    writeln!(
        out,
        "sent from namespace {}: {} UDP + {} ICMP echo over IPv4, {} UDP + {} ICMPv6 echo over IPv6, {} payload bytes each\n",
        lab.a.name(),
        traffic.udp4,
        traffic.ping4,
        traffic.udp6,
        traffic.ping6,
        traffic.payload
    )?;
    write!(out, "{}", comparison(&sent, &seen, &t))?;
    writeln!(out, "\n`kscope fw stats` for {}:", lab.iface_b)?;
    let mut table = counters::counter_table(&mut *out, false);
    counters::counter_rows(&mut table, &lab.iface_b, &pc, false)?;
    table.flush()?;
    out.flush()?;

    if !agrees(&seen, &t)
        || seen.marked_ipv4 != sent.ipv4_packets
        || seen.marked_ipv6 != sent.ipv6_packets
    {
        bail!("kscope's counters do not match the traffic (see the table above)");
    }
    Ok(())
}

/// True when kscope counted exactly what the observer saw arrive.
fn agrees(seen: &Seen, t: &counters::Totals) -> bool {
    let (v4, v6, other) = (
        t.family(Family::Ipv4),
        t.family(Family::Ipv6),
        t.family(Family::Other),
    );
    (
        v4.packets,
        v4.bytes,
        v6.packets,
        v6.bytes,
        other.packets,
        other.bytes,
    ) == (
        seen.ipv4_packets,
        seen.ipv4_bytes,
        seen.ipv6_packets,
        seen.ipv6_bytes,
        seen.other_packets,
        seen.other_bytes,
    )
}

/// The sent-versus-counted table.
fn comparison(sent: &Sent, seen: &Seen, t: &counters::Totals) -> String {
    let mut s = format!(
        "{:<7} {:>10} {:>12} {:>10} {:>12}  {}\n",
        "FAMILY", "SENT PKTS", "SENT BYTES", "COUNTED", "COUNTED B", "NOTE"
    );
    let rows = [
        (
            Family::Ipv4,
            sent.ipv4_packets,
            sent.ipv4_bytes,
            seen.unmarked_ipv4(),
        ),
        (
            Family::Ipv6,
            sent.ipv6_packets,
            sent.ipv6_bytes,
            seen.unmarked_ipv6(),
        ),
        (Family::Other, 0, 0, seen.other_packets),
    ];
    for (f, p, b, extra) in rows {
        let c = t.family(f);
        let note = if extra > 0 {
            format!("+{extra} the kernel sent by itself (MLD/ND)")
        } else {
            String::new()
        };
        let line = format!(
            "{:<7} {p:>10} {b:>12} {:>10} {:>12}  {note}",
            f.name(),
            c.packets,
            c.bytes
        );
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}
