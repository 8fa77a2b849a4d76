//! The profile as pprof's `profile.proto`, gzipped: the format of Go's
//! net/http/pprof, which `go tool pprof`, Pyroscope and Parca read.
//!
//! Symbols are resolved already, so every mapping says it has functions
//! and no tool tries to symbolize again. Each process's file mappings are
//! mappings of their own (processes map the same file at different
//! addresses); kernel frames are in one `[kernel.kallsyms]` mapping.
//! Samples carry the process as labels `pid` and `comm`, and its cgroup
//! as `cgroup` (the path; the id when it was gone) and `container_id`
//! (when the path names a container).

use std::{
    collections::HashMap,
    io::{self, Write as _},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::report::{Report, Site, Stack};

/// The messages of `profile.proto` that kscope writes (field numbers as
/// in github.com/google/pprof/proto/profile.proto).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(super) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(super) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub(super) mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub(super) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(super) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(super) string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub(super) time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub(super) duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub(super) period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub(super) period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub(super) comment: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(super) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(super) unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub(super) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(super) value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub(super) label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(int64, tag = "1")]
        pub(super) key: i64,
        #[prost(int64, tag = "2")]
        pub(super) str: i64,
        #[prost(int64, tag = "3")]
        pub(super) num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Mapping {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(uint64, tag = "2")]
        pub(super) memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub(super) memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub(super) file_offset: u64,
        #[prost(int64, tag = "5")]
        pub(super) filename: i64,
        #[prost(bool, tag = "7")]
        pub(super) has_functions: bool,
        #[prost(bool, tag = "10")]
        pub(super) has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(uint64, tag = "2")]
        pub(super) mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub(super) address: u64,
        /// Innermost (inlined) function first, the function it was
        /// inlined into last.
        #[prost(message, repeated, tag = "4")]
        pub(super) line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub(super) function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(int64, tag = "2")]
        pub(super) name: i64,
        #[prost(int64, tag = "3")]
        pub(super) system_name: i64,
    }
}

/// Builds the tables of a [`proto::Profile`]: strings, functions,
/// mappings and locations are each stored once and referred to by index
/// or id.
#[derive(Default)]
struct Builder {
    p: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<String, u64>,
    /// User mappings by process and start address.
    mappings: HashMap<(u32, u64), u64>,
    /// Kernel addresses seen, for the kernel mapping's bounds.
    kernel_range: Option<(u64, u64)>,
    /// Locations by (mapping, address, functions).
    locations: HashMap<(u64, u64, Vec<u64>), u64>,
}

/// The id of the one kernel mapping, written last.
const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = i64::try_from(self.p.string_table.len()).unwrap_or(i64::MAX);
        self.p.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.functions.get(name) {
            return id;
        }
        let id = self.p.function.len() as u64 + 1;
        let name_ix = self.string(name);
        self.p.function.push(proto::Function {
            id,
            name: name_ix,
            system_name: name_ix,
        });
        self.functions.insert(name.to_owned(), id);
        id
    }

    /// The mapping id of a site: its file mapping in process `pid`, the
    /// kernel's for a kernel site, none for an address in no file.
    fn mapping(&mut self, pid: u32, site: &Site, kernel: bool) -> u64 {
        if kernel {
            if site.addr != 0 {
                let (lo, hi) = self.kernel_range.unwrap_or((site.addr, site.addr));
                self.kernel_range = Some((lo.min(site.addr), hi.max(site.addr)));
            }
            return u64::MAX; // Replaced by the kernel mapping's id at the end.
        }
        let Some(m) = &site.mapping else {
            return 0;
        };
        if let Some(&id) = self.mappings.get(&(pid, m.span.start)) {
            return id;
        }
        let id = self.p.mapping.len() as u64 + 1;
        let filename = self.string(&m.path);
        self.p.mapping.push(proto::Mapping {
            id,
            memory_start: m.span.start,
            memory_limit: m.span.end,
            file_offset: m.span.offset,
            filename,
            has_functions: true,
            has_inline_frames: true,
        });
        self.mappings.insert((pid, m.span.start), id);
        id
    }

    /// Location ids of one side's frames, leaf first.
    fn locations(&mut self, pid: u32, names: &[String], sites: &[Site], kernel: bool) -> Vec<u64> {
        // Sites that do not cover the names exactly (a stack read back
        // from JSON) count as one site per name, at no address.
        let fallback: Vec<Site>;
        let sites = if sites.iter().map(|s| s.frames).sum::<usize>() == names.len() {
            sites
        } else {
            fallback = names
                .iter()
                .map(|_| Site {
                    frames: 1,
                    ..Site::default()
                })
                .collect();
            &fallback
        };
        let mut ids = Vec::with_capacity(sites.len());
        let mut at = 0;
        for site in sites {
            let chain = &names[at..at + site.frames];
            at += site.frames;
            // Innermost first, as profile.proto orders a location's lines.
            let functions: Vec<u64> = chain.iter().rev().map(|n| self.function(n)).collect();
            let mapping_id = self.mapping(pid, site, kernel);
            let key = (mapping_id, site.addr, functions);
            let next = self.p.location.len() as u64 + 1;
            let id = *self.locations.entry(key.clone()).or_insert(next);
            if id == next {
                self.p.location.push(proto::Location {
                    id,
                    mapping_id,
                    address: site.addr,
                    line: key
                        .2
                        .iter()
                        .map(|&function_id| proto::Line { function_id })
                        .collect(),
                });
            }
            ids.push(id);
        }
        ids.reverse();
        ids
    }

    fn sample(&mut self, s: &Stack, period_ns: i64) {
        // Leaf first: the kernel side is on top of the user side.
        let mut location_id = self.locations(s.pid, &s.kernel, &s.kernel_sites, true);
        location_id.extend(self.locations(s.pid, &s.user, &s.user_sites, false));
        let count = i64::try_from(s.count).unwrap_or(i64::MAX);
        let (pid_key, comm_key) = (self.string("pid"), self.string("comm"));
        let comm = self.string(&s.comm);
        let mut label = vec![
            proto::Label {
                key: pid_key,
                num: i64::from(s.pid),
                ..proto::Label::default()
            },
            proto::Label {
                key: comm_key,
                str: comm,
                ..proto::Label::default()
            },
        ];
        // The cgroup as its path (its id when it was gone before it could
        // be named), and the container it names: the labels profile
        // stores filter and group by.
        if s.cgroup_id != 0 {
            let key = self.string("cgroup");
            let name = s.cgroup.clone().unwrap_or_else(|| s.cgroup_id.to_string());
            let str = self.string(&name);
            label.push(proto::Label {
                key,
                str,
                ..proto::Label::default()
            });
        }
        if let Some(c) = &s.container_id {
            let (key, str) = (self.string("container_id"), self.string(c));
            label.push(proto::Label {
                key,
                str,
                ..proto::Label::default()
            });
        }
        self.p.sample.push(proto::Sample {
            location_id,
            value: vec![count, count.saturating_mul(period_ns)],
            label,
        });
    }

    /// Gives kernel locations the kernel mapping, now that its bounds are
    /// known.
    fn finish(mut self) -> proto::Profile {
        let has_kernel = self.p.location.iter().any(|l| l.mapping_id == u64::MAX);
        let kernel_id = if has_kernel {
            let id = self.p.mapping.len() as u64 + 1;
            let (lo, hi) = self.kernel_range.unwrap_or((0, 0));
            let filename = self.string(KERNEL_MAPPING);
            self.p.mapping.push(proto::Mapping {
                id,
                memory_start: lo,
                memory_limit: hi.saturating_add(1),
                file_offset: 0,
                filename,
                has_functions: true,
                has_inline_frames: false,
            });
            id
        } else {
            0
        };
        for l in &mut self.p.location {
            if l.mapping_id == u64::MAX {
                l.mapping_id = kernel_id;
            }
        }
        self.p
    }
}

/// The report as a `profile.proto` message, before compression. Each
/// sample has two values, as Go's CPU profiles: `samples/count` and
/// `cpu/nanoseconds` (the samples times the sampling period).
fn build(r: &Report, start_unix_ns: i64) -> proto::Profile {
    let mut b = Builder::default();
    b.string("");
    let off_cpu = r.event == super::OFF_CPU_EVENT;
    // Off the CPU, a count is a microsecond.
    let period_ns = if off_cpu {
        1000
    } else {
        1_000_000_000 / i64::try_from(r.frequency_hz.max(1)).unwrap_or(i64::MAX)
    };
    let value_type = |b: &mut Builder, t: &str, u: &str| proto::ValueType {
        r#type: b.string(t),
        unit: b.string(u),
    };
    let (count_type, time_type) = if off_cpu {
        (("blocked", "microseconds"), ("off_cpu", "nanoseconds"))
    } else {
        (("samples", "count"), ("cpu", "nanoseconds"))
    };
    b.p.sample_type = vec![
        value_type(&mut b, count_type.0, count_type.1),
        value_type(&mut b, time_type.0, time_type.1),
    ];
    b.p.period_type = Some(value_type(&mut b, time_type.0, time_type.1));
    b.p.period = period_ns;
    b.p.time_nanos = start_unix_ns;
    b.p.duration_nanos = (r.duration_secs * 1e9) as i64;
    let comment = format!(
        "kscope profile: {} at {} Hz on {} CPUs",
        r.event,
        r.frequency_hz,
        r.cpus.len()
    );
    let comment = b.string(&comment);
    b.p.comment = vec![comment];
    for s in &r.stacks {
        b.sample(s, period_ns);
    }
    b.finish()
}

/// Writes the report as gzipped pprof.
pub(crate) fn write(w: impl io::Write, r: &Report) -> io::Result<()> {
    let start = i64::try_from(r.start_unix_ns).unwrap_or(i64::MAX);
    let bytes = build(r, start).encode_to_vec();
    let mut gz = GzEncoder::new(w, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{
        procmaps::Span,
        report::{FileMapping, Frames, Lost},
    };

    fn report(stacks: Vec<Stack>) -> Report {
        Report {
            event: "cpu-clock",
            unit: "samples",
            frequency_hz: 100,
            cpus: vec![0, 1],
            pids: vec![],
            duration_secs: 2.0,
            samples: stacks.iter().map(|s| s.count).sum(),
            idle_samples: 0,
            counts_map_full: 0,
            lost_kernel_stacks: Lost::default(),
            lost_user_stacks: Lost::default(),
            symbolize_secs: 0.0,
            prog_id: 1,
            unwind: None,
            start_unix_ns: 1,
            stacks,
        }
    }

    fn libc(start: u64) -> Option<FileMapping> {
        Some(FileMapping {
            path: "/usr/lib/libc.so.6".into(),
            span: Span {
                start,
                end: start + 0x1000,
                offset: 0x26000,
            },
        })
    }

    const CONTAINER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Two processes with the same library at different addresses, an
    /// inlined chain, a kernel side and a placeholder; one in a
    /// container's cgroup, one in a cgroup gone since, one with none.
    fn stacks() -> Vec<Stack> {
        let mut user = Frames::default();
        user.push(0x1010, libc(0x1000), ["main".to_owned()]);
        user.push(
            0x1020,
            libc(0x1000),
            ["work".to_owned(), "inlined_leaf".to_owned()],
        );
        let mut kernel = Frames::default();
        kernel.push(0xffff_0010, None, ["entry_SYSCALL_64".to_owned()]);
        kernel.push(0xffff_0f00, None, ["vfs_write".to_owned()]);
        let a = Stack {
            pid: 7,
            comm: "app".into(),
            cgroup_id: 4242,
            cgroup: Some(format!("/system.slice/docker-{CONTAINER}.scope")),
            container_id: Some(CONTAINER.into()),
            user: user.names,
            kernel: kernel.names,
            count: 5,
            user_sites: user.sites,
            kernel_sites: kernel.sites,
        };
        let mut user = Frames::default();
        user.push(0x9010, libc(0x9000), ["main".to_owned()]);
        let b = Stack {
            pid: 8,
            comm: "other\"app".into(),
            user: user.names,
            count: 3,
            user_sites: user.sites,
            ..Stack::default()
        };
        let mut placeholder = Frames::default();
        placeholder.push(0, None, ["[lost user stack: efault]".to_owned()]);
        let c = Stack {
            pid: 9,
            comm: "c".into(),
            // A cgroup gone before it was named.
            cgroup_id: 77,
            user: placeholder.names,
            count: 1,
            user_sites: placeholder.sites,
            ..Stack::default()
        };
        vec![a, b, c]
    }

    /// A sample's frames by name, leaf first, read back through the ids.
    fn names(p: &proto::Profile, s: &proto::Sample) -> Vec<String> {
        let func = |id: u64| {
            let f = p.function.iter().find(|f| f.id == id).expect("function id");
            p.string_table[f.name as usize].clone()
        };
        s.location_id
            .iter()
            .flat_map(|id| {
                let l = p
                    .location
                    .iter()
                    .find(|l| l.id == *id)
                    .expect("location id");
                l.line
                    .iter()
                    .map(|ln| func(ln.function_id))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn samples_read_back_leaf_first_with_inlined_frames_innermost_first() {
        let bytes = build(&report(stacks()), 1).encode_to_vec();
        let p = proto::Profile::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 3);
        assert_eq!(
            names(&p, &p.sample[0]),
            [
                "vfs_write",
                "entry_SYSCALL_64",
                "inlined_leaf",
                "work",
                "main"
            ]
        );
        assert_eq!(names(&p, &p.sample[1]), ["main"]);
        assert_eq!(names(&p, &p.sample[2]), ["[lost user stack: efault]"]);
        // samples/count and cpu/nanoseconds at 100 Hz: 10 ms a sample.
        assert_eq!(p.sample[0].value, [5, 50_000_000]);
        assert_eq!(p.period, 10_000_000);
        let st = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<_> = p
            .sample_type
            .iter()
            .map(|t| (st(t.r#type), st(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        // Labels: the pid as a number, the comm as a string, unescaped.
        let labels: Vec<_> = p.sample[1]
            .label
            .iter()
            .map(|l| (st(l.key), st(l.str), l.num))
            .collect();
        assert_eq!(labels, [("pid", "", 8), ("comm", "other\"app", 0)]);
        // The cgroup by path, and the container it names; by id when gone.
        let labels = |i: usize| -> Vec<_> {
            p.sample[i]
                .label
                .iter()
                .skip(2)
                .map(|l| (st(l.key), st(l.str)))
                .collect()
        };
        let path = format!("/system.slice/docker-{CONTAINER}.scope");
        assert_eq!(
            labels(0),
            [("cgroup", path.as_str()), ("container_id", CONTAINER)]
        );
        assert_eq!(labels(2), [("cgroup", "77")]);
    }

    #[test]
    fn mappings_are_per_process_and_the_kernel_has_one() {
        let bytes = build(&report(stacks()), 1).encode_to_vec();
        let p = proto::Profile::decode(bytes.as_slice()).expect("decodes");
        let st = |i: i64| p.string_table[i as usize].as_str();
        let maps: Vec<_> = p
            .mapping
            .iter()
            .map(|m| {
                (
                    st(m.filename),
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                )
            })
            .collect();
        assert_eq!(
            maps,
            [
                ("/usr/lib/libc.so.6", 0x1000, 0x2000, 0x26000),
                ("/usr/lib/libc.so.6", 0x9000, 0xa000, 0x26000),
                ("[kernel.kallsyms]", 0xffff_0010, 0xffff_0f01, 0),
            ]
        );
        for l in &p.location {
            let m = p.mapping.iter().find(|m| m.id == l.mapping_id);
            match m {
                // Every mapped location is inside its mapping.
                Some(m) => assert!((m.memory_start..m.memory_limit).contains(&l.address)),
                // Only the placeholder has none.
                None => assert_eq!((l.mapping_id, l.address), (0, 0)),
            }
        }
        // `main` in two processes: two locations, one function.
        assert_eq!(p.location.len(), 6);
        let mains = p.function.iter().filter(|f| st(f.name) == "main").count();
        assert_eq!(mains, 1);
    }

    #[test]
    fn stacks_without_sites_still_name_every_frame() {
        let s = Stack {
            pid: 1,
            comm: "x".into(),
            user: vec!["a".into(), "b".into()],
            kernel: vec!["k".into()],
            count: 2,
            ..Stack::default()
        };
        let bytes = build(&report(vec![s]), 1).encode_to_vec();
        let p = proto::Profile::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(names(&p, &p.sample[0]), ["k", "b", "a"]);
    }

    #[test]
    fn output_is_gzip() {
        let mut out = Vec::new();
        write(&mut out, &report(stacks())).expect("writes");
        assert_eq!(out[..2], [0x1f, 0x8b]);
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(out.as_slice()), &mut raw)
            .expect("gunzips");
        assert_eq!(
            proto::Profile::decode(raw.as_slice()).expect("decodes"),
            build(&report(stacks()), 1)
        );
    }
}
