//! `kscope trace connect`: TCP connects (IPv4 and IPv6) as they start, from
//! `trace_connect` in kscope-ebpf.
//!
//! Fallback policy: kprobe/kretprobe on tcp_v4_connect and tcp_v6_connect
//! (RET and call latency), else fentry/fexit on the same functions, else
//! the sock:inet_sock_set_state tracepoint, which has no RET (shown as n/a)
//! and measures latency from SYN_SENT to the next state (the handshake).
//! The choice is made at start and reported on stderr; `--probe` forces
//! one, and forcing one the kernel lacks fails, naming the feature.
//! Without kernel BTF, IPv6 source addresses cannot be located in struct
//! sock and read as `::` (warned once); everything else still works.
//!
//! RET is tcp_v{4,6}_connect's own return: errors found before the SYN is
//! sent (no route, no source address). A refused connection returns 0 there;
//! the refusal arrives later.
//!
//! Connects that fail before the SYN never reach SYN_SENT, so the state
//! tracepoint cannot see them; with it, the syscalls:sys_{enter,exit}_connect
//! tracepoints report those, with their RET (no source address or port:
//! none was bound). That needs the offsets from kernel BTF that lead from a
//! file descriptor to its socket type; without BTF they go unreported
//! (warned once).
//!
//! Minimum kernel: 5.8 (ring buffer); fentry needs 5.5 and BTF.

use std::{
    fs,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Btf as AyaBtf, Ebpf,
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use kscope_common::trace::{
    ConnectEvent, ConnectKey, Counts, GLOBAL_COUNT_BY_TASK, GLOBAL_OFF_SADDR, GLOBAL_OFF_SADDR6,
    GLOBAL_OFF_SPORT, GLOBAL_PORT_FILTER_ON, GLOBAL_SOCK_PATH, GLOBAL_TP_OFFSETS, MAP_PORTS,
    PROG_CONNECT_FENTRY_V4, PROG_CONNECT_FENTRY_V6, PROG_CONNECT_FEXIT_V4, PROG_CONNECT_FEXIT_V6,
    PROG_CONNECT_KPROBE, PROG_CONNECT_KRETPROBE, PROG_CONNECT_STATE, PROG_CONNECT_SYS_ENTER,
    PROG_CONNECT_SYS_EXIT, SP_N, TP_FIELDS, TP_N,
};

use super::{Attached, EventCx, EventTracer, Load, Metric, Mode, TraceError, Tracer, format};
use crate::{
    output::{Align, Column, Row},
    sys::btf::Btf,
};

static TRACE_CONNECT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace_connect"));

const CONNECT_FNS: [&str; 2] = ["tcp_v4_connect", "tcp_v6_connect"];

/// How connects are observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Probe {
    /// The first that works: kprobe, fentry, tracepoint.
    #[default]
    Auto,
    /// kprobe + kretprobe on tcp_v4_connect / tcp_v6_connect.
    Kprobe,
    /// fentry + fexit on the same functions (BTF trampolines).
    Fentry,
    /// The sock:inet_sock_set_state tracepoint (no RET).
    Tracepoint,
}

impl Probe {
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Probe::Auto => "auto",
            Probe::Kprobe => "kprobe",
            Probe::Fentry => "fentry",
            Probe::Tracepoint => "tracepoint",
        }
    }
}

/// The TCP connect tracer.
#[derive(Debug)]
pub(crate) struct Connect;

/// Options of `kscope trace connect`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectOpts {
    /// Destination ports to keep (`-P`); empty keeps all.
    pub(crate) ports: Vec<u16>,
    pub(crate) probe: Probe,
}

/// Offsets the kernel programs need: in struct sock_common (from BTF) and
/// in the tracepoint record (from its format file).
struct Offsets {
    saddr: u32,
    saddr6: u32,
    sport: u32,
    tp: [u32; TP_N],
    /// `SOCK_PATH`: task_struct.files, files_struct.fdt, fdtable.fd,
    /// file.private_data, socket.type; zeros when BTF lacks one.
    sock_path: [u32; SP_N],
}

/// The offsets of `SOCK_PATH` from kernel BTF, or None (warned) when one
/// is missing.
fn sock_path_offsets() -> Option<[u32; SP_N]> {
    let path = [
        ("task_struct", "files"),
        ("files_struct", "fdt"),
        ("fdtable", "fd"),
        ("file", "private_data"),
        ("socket", "type"),
    ];
    let structs: Vec<&str> = path.iter().map(|(s, _)| *s).collect();
    let found = Btf::from_sys_fs(&structs).and_then(|btf| {
        let mut o = [0u32; SP_N];
        for (slot, (s, m)) in o.iter_mut().zip(path) {
            *slot = btf.member_offset(s, m)?;
        }
        Ok(o)
    });
    match found {
        Ok(o) => Some(o),
        Err(e) => {
            tracing::warn!(
                "{e}; under the tracepoint, connects that fail before the SYN go unreported"
            );
            None
        }
    }
}

/// `off` with the `SOCK_PATH` offsets, read only when the tracepoint is
/// the choice (the probes do not need them).
fn with_sock_path(off: Offsets) -> Offsets {
    Offsets {
        sock_path: sock_path_offsets().unwrap_or([0; SP_N]),
        ..off
    }
}

fn sock_offsets() -> (u32, u32, u32) {
    // Fallbacks: skc_rcv_saddr and skc_num have sat at 4 and 14 since
    // Linux 2.6 (include/net/sock.h); the IPv6 address has no fixed place.
    match Btf::from_sys_fs(&["sock_common"]) {
        Ok(btf) => {
            let off =
                |m: &str, default: u32| btf.member_offset("sock_common", m).unwrap_or(default);
            (
                off("skc_rcv_saddr", 4),
                off("skc_v6_rcv_saddr", 0),
                off("skc_num", 14),
            )
        }
        Err(e) => {
            tracing::warn!("{e}; IPv6 source addresses will read as ::");
            (4, 0, 14)
        }
    }
}

/// Parses a tracefs format file into the offsets of `fields`.
pub(crate) fn parse_format(text: &str, fields: &[&str]) -> Option<Vec<u32>> {
    fields
        .iter()
        .map(|want| {
            text.lines().find_map(|line| {
                let decl = line.trim().strip_prefix("field:")?;
                let (decl, rest) = decl.split_once(';')?;
                // "__u8 saddr_v6[16]" → "saddr_v6"
                let name = decl.split_whitespace().last()?.split('[').next()?;
                if name.trim_start_matches('*') != *want {
                    return None;
                }
                rest.split(';')
                    .find_map(|kv| kv.trim().strip_prefix("offset:"))
                    .and_then(|o| o.parse().ok())
            })
        })
        .collect()
}

fn tracepoint_offsets() -> Option<[u32; TP_N]> {
    let path = Path::new(crate::sys::TRACEFS).join("events/sock/inet_sock_set_state/format");
    let text = fs::read_to_string(path).ok()?;
    parse_format(&text, &TP_FIELDS)?.try_into().ok()
}

fn unsupported(feature: &str, reason: impl ToString) -> TraceError {
    TraceError::Unsupported {
        feature: feature.to_owned(),
        reason: reason.to_string(),
    }
}

fn attach_kprobes(ebpf: &mut Ebpf) -> Result<(), TraceError> {
    if let Some(reason) = crate::probe_check::kprobe_missing_reason() {
        return Err(unsupported("kprobe", reason));
    }
    for prog in [PROG_CONNECT_KPROBE, PROG_CONNECT_KRETPROBE] {
        let p: &mut KProbe = super::program(ebpf, prog)?
            .try_into()
            .map_err(TraceError::program(prog))?;
        p.load().map_err(TraceError::program(prog))?;
        for f in CONNECT_FNS {
            p.attach(f, 0)
                .map_err(|e| unsupported("kprobe", format!("attaching to {f}: {e:#}")))?;
        }
    }
    Ok(())
}

fn attach_fentry(ebpf: &mut Ebpf) -> Result<(), TraceError> {
    let btf =
        AyaBtf::from_sys_fs().map_err(|e| unsupported("fentry", format!("no kernel BTF: {e}")))?;
    for (prog, f, exit) in [
        (PROG_CONNECT_FENTRY_V4, CONNECT_FNS[0], false),
        (PROG_CONNECT_FEXIT_V4, CONNECT_FNS[0], true),
        (PROG_CONNECT_FENTRY_V6, CONNECT_FNS[1], false),
        (PROG_CONNECT_FEXIT_V6, CONNECT_FNS[1], true),
    ] {
        let p = super::program(ebpf, prog)?;
        let refused = |e: aya::programs::ProgramError| {
            unsupported(
                "fentry",
                format!("the kernel refused a BPF trampoline on {f}: {e:#}"),
            )
        };
        if exit {
            let p: &mut FExit = p.try_into().map_err(TraceError::program(prog))?;
            p.load(f, &btf).map_err(refused)?;
            p.attach().map_err(refused)?;
        } else {
            let p: &mut FEntry = p.try_into().map_err(TraceError::program(prog))?;
            p.load(f, &btf).map_err(refused)?;
            p.attach().map_err(refused)?;
        }
    }
    Ok(())
}

/// The state tracepoint, and the connect(2) tracepoints for the connects
/// that fail before the SYN (when their tracepoints and `SOCK_PATH` exist;
/// otherwise warned).
fn attach_tracepoint(ebpf: &mut Ebpf, sock_path_known: bool) -> Result<(), TraceError> {
    let sys = Path::new(crate::sys::TRACEFS).join("events/syscalls/sys_enter_connect");
    if !sys.exists() {
        tracing::warn!(
            "no syscalls:sys_enter_connect tracepoint; connects that fail before the SYN go \
             unreported"
        );
    } else if sock_path_known {
        super::attach_syscalls(
            ebpf,
            &[(PROG_CONNECT_SYS_ENTER, PROG_CONNECT_SYS_EXIT, "connect")],
            false,
        )?;
    }
    let p: &mut TracePoint = super::program(ebpf, PROG_CONNECT_STATE)?
        .try_into()
        .map_err(TraceError::program(PROG_CONNECT_STATE))?;
    p.load().map_err(TraceError::program(PROG_CONNECT_STATE))?;
    p.attach("sock", "inet_sock_set_state")
        .map_err(|e| unsupported("tracepoint sock:inet_sock_set_state", format!("{e:#}")))?;
    Ok(())
}

/// Loads a fresh object (so a failed attempt leaves nothing behind) and
/// attaches `probe`'s programs.
fn try_probe(
    opts: &ConnectOpts,
    load: &Load<'_>,
    off: &Offsets,
    probe: Probe,
) -> Result<Ebpf, TraceError> {
    let port_on = u32::from(!opts.ports.is_empty()).to_ne_bytes();
    let by_task = u32::from(matches!(load.mode, Mode::Count { by_task: true })).to_ne_bytes();
    let (saddr, saddr6, sport) = (
        off.saddr.to_ne_bytes(),
        off.saddr6.to_ne_bytes(),
        off.sport.to_ne_bytes(),
    );
    let tp: Vec<u8> = off.tp.iter().flat_map(|o| o.to_ne_bytes()).collect();
    let sock_path: Vec<u8> = off.sock_path.iter().flat_map(|o| o.to_ne_bytes()).collect();
    let mut ebpf = load.object(
        TRACE_CONNECT_OBJ,
        &[
            (GLOBAL_PORT_FILTER_ON, &port_on[..]),
            (GLOBAL_OFF_SADDR, &saddr[..]),
            (GLOBAL_OFF_SADDR6, &saddr6[..]),
            (GLOBAL_OFF_SPORT, &sport[..]),
            (GLOBAL_TP_OFFSETS, &tp[..]),
            (GLOBAL_SOCK_PATH, &sock_path[..]),
            (GLOBAL_COUNT_BY_TASK, &by_task[..]),
        ],
        &[],
    )?;
    if !opts.ports.is_empty() {
        let missing = || TraceError::Map {
            map: MAP_PORTS,
            source: aya::maps::MapError::InvalidName {
                name: MAP_PORTS.into(),
            },
        };
        let map = ebpf.map_mut(MAP_PORTS).ok_or_else(missing)?;
        let mut ports: aya::maps::HashMap<_, u16, u8> =
            aya::maps::HashMap::try_from(map).map_err(TraceError::map(MAP_PORTS))?;
        for &p in &opts.ports {
            ports.insert(p, 1, 0).map_err(TraceError::map(MAP_PORTS))?;
        }
    }
    match probe {
        Probe::Kprobe => attach_kprobes(&mut ebpf)?,
        Probe::Fentry => attach_fentry(&mut ebpf)?,
        Probe::Tracepoint | Probe::Auto => attach_tracepoint(&mut ebpf, off.sock_path[0] != 0)?,
    }
    Ok(ebpf)
}

/// Chooses and attaches the probe kind (`opts.probe`, or the first that
/// works when it is `Auto`). Returns the object and the kind; dropping the
/// object detaches it.
///
/// # Errors
/// No usable probe kind (or the forced one missing), or a verifier
/// rejection.
fn choose(opts: &ConnectOpts, load: &Load<'_>) -> Result<(Ebpf, Probe), TraceError> {
    let (saddr, saddr6, sport) = sock_offsets();
    let tp = tracepoint_offsets();
    let off = Offsets {
        saddr,
        saddr6,
        sport,
        tp: tp.unwrap_or([0; TP_N]),
        sock_path: [0; SP_N],
    };
    let tp_missing = || {
        unsupported(
            "tracepoint sock:inet_sock_set_state",
            "its format file is missing from tracefs (Linux 4.16+)",
        )
    };
    match opts.probe {
        Probe::Auto => {
            let mut why = Vec::new();
            for kind in [Probe::Kprobe, Probe::Fentry] {
                match try_probe(opts, load, &off, kind) {
                    Ok(e) => return Ok((e, kind)),
                    Err(TraceError::Unsupported { feature, reason }) => {
                        why.push(format!("{feature}: {reason}"));
                    }
                    Err(e) => return Err(e),
                }
            }
            for w in &why {
                tracing::info!("not available: {w}");
            }
            if tp.is_none() {
                return Err(tp_missing());
            }
            let off = with_sock_path(off);
            Ok((
                try_probe(opts, load, &off, Probe::Tracepoint)?,
                Probe::Tracepoint,
            ))
        }
        Probe::Tracepoint if tp.is_none() => Err(tp_missing()),
        Probe::Tracepoint => Ok((
            try_probe(opts, load, &with_sock_path(off), Probe::Tracepoint)?,
            Probe::Tracepoint,
        )),
        kind => Ok((try_probe(opts, load, &off, kind)?, kind)),
    }
}

impl Tracer for Connect {
    const NAME: &'static str = "connect";

    type Opts = ConnectOpts;

    type Key = ConnectKey;

    fn attach(opts: &ConnectOpts, load: &Load<'_>) -> Result<Attached, TraceError> {
        let (ebpf, probe) = choose(opts, load)?;
        let what = match probe {
            Probe::Kprobe => "TCP connects with kprobe/kretprobe on tcp_v4_connect, tcp_v6_connect",
            Probe::Fentry => "TCP connects with fentry/fexit on tcp_v4_connect, tcp_v6_connect",
            _ => {
                "TCP connects with the sock:inet_sock_set_state tracepoint (RET not available: \
                 shown as n/a), and connect(2)'s tracepoints for connects that fail before the \
                 SYN"
            }
        };
        Ok(Attached {
            ebpf,
            what: what.into(),
            probe: probe.name(),
        })
    }
}

impl EventTracer for Connect {
    const METRIC: Metric = Metric {
        name: "kscope_trace_connects",
        help: "TCP connects, by destination and result (unknown where the probe cannot see it).",
        labels: &["daddr", "dport", "result"],
        errors: None,
    };

    type Event = ConnectEvent;

    /// Table: `PID COMM CGROUP FAM SADDR SPORT DADDR DPORT RET LAT(ms)`;
    /// RET is `n/a` where the probe cannot see it. JSON: `ts_unix_ns`,
    /// `pid`, `tid`, `uid`, `comm`, `cgroup_id`, `cgroup`, `container_id`,
    /// `family` ("ipv4"/"ipv6"), `saddr`, `sport`,
    /// `daddr`, `dport`, `ret` (null where the probe cannot see it),
    /// `errno_name`, `latency_ns`, `probe` ("kprobe", "fentry" or
    /// "tracepoint").
    fn event_columns(timestamps: bool) -> Vec<Column> {
        let mut cols: Vec<Column> = super::time_columns(timestamps).collect();
        cols.extend([
            Column::left("PID", "pid", 7),
            Column::json("tid"),
            Column::json("uid"),
            Column::left("COMM", "comm", 16),
        ]);
        cols.extend(super::cgroup_columns());
        cols.extend([
            Column::table("FAM", 4, Align::Left),
            Column::json("family"),
            Column::left("SADDR", "saddr", 39),
            Column::right("SPORT", "sport", 5),
            Column::left("DADDR", "daddr", 39),
            Column::right("DPORT", "dport", 5),
        ]);
        cols.extend(super::ret_columns());
        cols.extend([
            Column::table("LAT(ms)", 9, Align::Right),
            Column::json("latency_ns"),
            Column::json("probe"),
        ]);
        cols
    }

    fn write_event<W: Write>(
        ev: &ConnectEvent,
        _tail: &[u8],
        cx: &EventCx,
        r: &mut Row<'_, W>,
    ) -> io::Result<()> {
        super::write_time(r, cx, ev.ts_ns)?;
        r.u64(ev.pid.into())?;
        r.u64(ev.tid.into())?;
        r.u64(ev.uid.into())?;
        r.text(format::cstr(&ev.comm))?;
        super::write_cgroup(r, ev.cgroup_id)?;
        let v6 = i32::from(ev.family) == libc::AF_INET6;
        r.str(if v6 { "6" } else { "4" })?;
        r.str(family_name(ev.family))?;
        r.display(addr(ev.family, &ev.saddr))?;
        r.u64(ev.sport.into())?;
        r.display(addr(ev.family, &ev.daddr))?;
        r.u64(ev.dport.into())?;
        super::write_ret(r, (ev.has_ret != 0).then_some(ev.ret))?;
        r.f64(ev.latency_ns as f64 / 1e6, 3)?;
        r.u64(ev.latency_ns)?;
        r.str(cx.probe)
    }

    /// Table: `PID COMM DADDR DPORT RESULT CONNECTS`; JSON: `pid`, `comm`,
    /// `daddr`, `dport`, `result` (`ok`, the errno's name, or `unknown`
    /// where the probe cannot see it), `connects`.
    fn count_columns() -> Vec<Column> {
        vec![
            Column::left("PID", "pid", 7),
            Column::left("COMM", "comm", 16),
            Column::left("DADDR", "daddr", 39),
            Column::right("DPORT", "dport", 5),
            Column::right("RESULT", "result", 12),
            Column::right("CONNECTS", "connects", 9),
        ]
    }

    fn write_count<W: Write>(key: &ConnectKey, c: &Counts, r: &mut Row<'_, W>) -> io::Result<()> {
        r.u64(key.pid.into())?;
        r.text(format::cstr(&key.comm))?;
        r.display(addr(key.family, &key.daddr))?;
        r.u64(key.dport.into())?;
        r.str(&format::result_label((key.has_ret != 0).then_some(key.ret)))?;
        r.u64(c.events)
    }

    fn label_values(key: &ConnectKey) -> Vec<String> {
        vec![
            addr(key.family, &key.daddr).to_string(),
            key.dport.to_string(),
            format::result_label((key.has_ret != 0).then_some(key.ret)).into_owned(),
        ]
    }
}

/// The address in an event's 16 bytes for its family.
pub(crate) fn addr(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if i32::from(family) == libc::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

fn family_name(family: u16) -> &'static str {
    if i32::from(family) == libc::AF_INET6 {
        "ipv6"
    } else {
        "ipv4"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        output::Format,
        trace::render::{self, json_lines},
    };

    const FORMAT: &str = "name: inet_sock_set_state
ID: 1342
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;
";

    #[test]
    fn format_files_give_field_offsets() {
        let offs = parse_format(FORMAT, &TP_FIELDS).expect("all fields");
        assert_eq!(offs, vec![8, 16, 20, 24, 26, 28, 30, 32, 36, 40, 56]);
        assert_eq!(parse_format(FORMAT, &["nosuch"]), None);
    }

    fn event(family: u16, ret: i32, has_ret: u32) -> ConnectEvent {
        let mut ev = ConnectEvent {
            ts_ns: 0,
            latency_ns: 1_500_000,
            // No cgroup has it: shown as the number.
            cgroup_id: u64::MAX,
            pid: 7,
            tid: 8,
            uid: 0,
            ret,
            has_ret,
            family,
            sport: 40000,
            dport: 443,
            _pad: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            _pad2: 0,
        };
        ev.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        ev.daddr[..4].copy_from_slice(&[192, 0, 2, 9]);
        ev.comm[..4].copy_from_slice(b"curl");
        ev
    }

    #[test]
    fn json_has_addresses_and_ret_or_null() {
        let (a, b) = (event(2, -101, 1), event(2, 0, 0));
        let v = json_lines(&render::events::<Connect>(&[&a, &b], Format::Json, false));
        assert_eq!(v[0]["daddr"], "192.0.2.9");
        assert_eq!(v[0]["saddr"], "127.0.0.1");
        assert_eq!(v[0]["dport"], 443);
        assert_eq!(v[0]["sport"], 40000);
        assert_eq!(v[0]["ret"], -101);
        assert_eq!(v[0]["errno_name"], "ENETUNREACH");
        assert_eq!(v[0]["family"], "ipv4");
        assert_eq!(v[0]["latency_ns"], 1_500_000);
        assert_eq!(v[0]["probe"], "kprobe");
        assert!(v[1]["ret"].is_null());
        assert!(v[1]["errno_name"].is_null());
    }

    #[test]
    fn ipv6_addresses_use_all_16_bytes() {
        let a = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(addr(10, &a.octets()), IpAddr::V6(a));
    }

    #[test]
    fn rows_show_na_without_ret_and_errno_names_with_it() {
        let (a, b) = (event(2, 0, 0), event(2, -101, 1));
        let text = render::events::<Connect>(&[&a, &b], Format::Table, false);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "7",
                "curl",
                // The cgroup: no cgroup has this id, so the number.
                "18446744073709551615",
                "4",
                "127.0.0.1",
                "40000",
                "192.0.2.9",
                "443",
                "n/a",
                "1.500"
            ]
        );
        assert_eq!(rows[1][8], "ENETUNREACH");
        let v = &json_lines(&render::events::<Connect>(&[&a], Format::Json, false))[0];
        assert_eq!(v["cgroup_id"], u64::MAX);
        assert_eq!(
            (&v["cgroup"], &v["container_id"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
    }

    #[test]
    fn counts_label_the_result() {
        let mut key = ConnectKey {
            pid: 9,
            family: 2,
            dport: 80,
            ret: 0,
            has_ret: 0,
            ..ConnectKey::default()
        };
        key.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        key.comm[..1].copy_from_slice(b"b");
        let rows = [(
            key,
            Counts {
                events: 5,
                failed: 0,
            },
        )];
        let v = &json_lines(&render::counts::<Connect>(&rows, Format::Json))[0];
        assert_eq!(
            *v,
            serde_json::json!({"pid": 9, "comm": "b", "daddr": "10.0.0.1", "dport": 80,
                "result": "unknown", "connects": 5})
        );
        assert_eq!(Connect::label_values(&key), ["10.0.0.1", "80", "unknown"]);
    }
}
