//! Turning symbolized stacks into output: folded stacks (flamegraph.pl's
//! input), an SVG flame graph (inferno), the top-functions table, JSON.
//! Everything here is pure, so it is unit-tested on made-up stacks.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{self, Write},
    sync::Arc,
};

use serde::Serialize;

use super::procmaps::Span;
use crate::output::{Align, Column, Format, Output};

/// The file mapping a user frame's code is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileMapping {
    /// The path the process mapped.
    pub(crate) path: Arc<str>,
    pub(crate) span: Span,
}

/// Where the code of one or more frames is: an address and, for user code
/// in a file, its mapping. An address with inlined functions is one site
/// for several frames (the outer function first). A placeholder frame
/// (`[lost … stack]`, `[user mode]`) has a site at address 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Site {
    /// The address looked up: a caller's return address minus one, so it
    /// is inside the call instruction.
    pub(crate) addr: u64,
    /// How many consecutive frame names this site stands for.
    pub(crate) frames: usize,
    pub(crate) mapping: Option<FileMapping>,
}

/// The frames of one side of a stack, root to leaf, with their sites.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    pub(crate) names: Vec<String>,
    pub(crate) sites: Vec<Site>,
}

impl Frames {
    /// Adds one site and the frame names (outer first) whose code is there.
    pub(crate) fn push(
        &mut self,
        addr: u64,
        mapping: Option<FileMapping>,
        names: impl IntoIterator<Item = String>,
    ) {
        let before = self.names.len();
        self.names.extend(names);
        self.sites.push(Site {
            addr,
            frames: self.names.len() - before,
            mapping,
        });
    }
}

/// One aggregated stack: how many samples hit it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Stack {
    /// Process id; 0 for the idle task.
    pub(crate) pid: u32,
    /// Thread name (`[idle]` for the idle task).
    pub(crate) comm: String,
    /// The sampled task's cgroup v2 id (its directory's inode number).
    pub(crate) cgroup_id: u64,
    /// That cgroup's path under the cgroup2 mount; `None` when it was
    /// gone before kscope could name it.
    pub(crate) cgroup: Option<String>,
    /// The container id the cgroup's path names, if any.
    pub(crate) container_id: Option<String>,
    /// User frames, from the outermost caller to the leaf.
    pub(crate) user: Vec<String>,
    /// Kernel frames, from the outermost caller (the syscall or interrupt
    /// entry) to the leaf.
    pub(crate) kernel: Vec<String>,
    pub(crate) count: u64,
    /// Where the `user` frames' code is, root to leaf; empty when not
    /// known (a stack read back from JSON).
    #[serde(skip)]
    pub(crate) user_sites: Vec<Site>,
    /// Where the `kernel` frames' code is, as `user_sites`.
    #[serde(skip)]
    pub(crate) kernel_sites: Vec<Site>,
}

impl Stack {
    /// The innermost frame: the kernel leaf if the sample was in the
    /// kernel, else the user leaf.
    pub(crate) fn leaf(&self) -> Option<&str> {
        self.kernel.last().or(self.user.last()).map(String::as_str)
    }
}

/// A frame or comm made safe for the folded format, where `;` separates
/// frames and a line ends with ` COUNT`. Rust and C++ names can hold `;`
/// (`[u8; 16]`); it becomes `:`. Line breaks become spaces.
fn folded_frame(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ").into()
    } else {
        name.into()
    }
}

/// Suffix that marks a kernel frame in folded stacks: the annotation of
/// flamegraph.pl's stackcollapse scripts (`--kernel`), which flamegraph.pl
/// and inferno colour apart and strip from the names they show.
const KERNEL_MARK: &str = "_[k]";

/// Folded stacks, one per distinct frame sequence, in flamegraph.pl's
/// format: `comm;user frames;kernel frames count`, frames from root to
/// leaf, each kernel frame marked with [`KERNEL_MARK`] (`vfs_write_[k]`).
/// Stacks that fold to the same line are merged, so the counts sum to the
/// samples given. Sorted by line.
pub(crate) fn folded(stacks: &[Stack]) -> BTreeMap<String, u64> {
    let mut lines = BTreeMap::new();
    for s in stacks {
        let mut line = folded_frame(&s.comm).into_owned();
        for f in &s.user {
            line.push(';');
            line.push_str(&folded_frame(f));
        }
        for f in &s.kernel {
            line.push(';');
            line.push_str(&folded_frame(f));
            line.push_str(KERNEL_MARK);
        }
        *lines.entry(line).or_insert(0) += s.count;
    }
    lines
}

/// Writes [`folded`] lines.
pub(crate) fn write_folded(w: &mut impl Write, stacks: &[Stack]) -> io::Result<()> {
    for (line, count) in folded(stacks) {
        writeln!(w, "{line} {count}")?;
    }
    Ok(())
}

/// Renders an SVG flame graph of `stacks` with inferno. Kernel frames are
/// orange, as flamegraph.pl colours [`KERNEL_MARK`]ed frames; user frames
/// are yellow when their name has `::` (Rust, C++) and red otherwise.
/// That is inferno's "js" palette, the one of its palettes that gives
/// native names no other meaning ("java" paints C names that start with a
/// capital green, as Java classes). Colours follow the names (`hash`), so
/// a function keeps its colour from one graph to the next.
pub(crate) fn write_svg(
    w: &mut impl Write,
    stacks: &[Stack],
    title: &str,
    count_name: &str,
) -> io::Result<()> {
    use inferno::flamegraph::color::{MultiPalette, Palette};
    let lines: Vec<String> = folded(stacks)
        .into_iter()
        .map(|(l, c)| format!("{l} {c}"))
        .collect();
    if lines.is_empty() {
        // inferno refuses a profile without stacks, but one is a fair
        // outcome (the process slept, or exited at once): the picture
        // says so instead of the command failing.
        let xml = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        return write!(
            w,
            "<?xml version=\"1.0\" standalone=\"no\"?>\n\
             <svg version=\"1.1\" width=\"1200\" height=\"66\" xmlns=\"http://www.w3.org/2000/svg\">\n\
             <text x=\"600\" y=\"24\" font-size=\"17\" font-family=\"Verdana\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"600\" y=\"50\" font-size=\"12\" font-family=\"Verdana\" text-anchor=\"middle\">no {} in this profile</text>\n\
             </svg>\n",
            xml(title),
            xml(count_name)
        );
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = count_name.to_owned();
    opts.colors = Palette::Multi(MultiPalette::Js);
    opts.hash = true;
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
        .map_err(io::Error::other)
}

/// A function's share of the samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct FunctionStat {
    pub(crate) name: String,
    /// Samples with this function as the leaf.
    self_samples: u64,
    /// Samples with this function anywhere on the stack (once per sample,
    /// however often it recurses).
    total_samples: u64,
}

/// The `n` functions with the most self samples (ties: more total samples,
/// then name), over all stacks.
pub(crate) fn top_functions(stacks: &[Stack], n: usize) -> Vec<FunctionStat> {
    let mut by_name: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut on_stack = HashSet::new();
    for s in stacks {
        if let Some(leaf) = s.leaf() {
            by_name.entry(leaf).or_default().0 += s.count;
        }
        on_stack.clear();
        for f in s.user.iter().chain(&s.kernel) {
            if on_stack.insert(f.as_str()) {
                by_name.entry(f).or_default().1 += s.count;
            }
        }
    }
    let mut stats: Vec<FunctionStat> = by_name
        .into_iter()
        .map(|(name, (self_samples, total_samples))| FunctionStat {
            name: name.to_owned(),
            self_samples,
            total_samples,
        })
        .collect();
    stats.sort_by(|a, b| {
        b.self_samples
            .cmp(&a.self_samples)
            .then(b.total_samples.cmp(&a.total_samples))
            .then(a.name.cmp(&b.name))
    });
    stats.truncate(n);
    stats
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// The top-functions table: self and total samples, as counts and as
/// percentages of `total`, written through [`crate::output`] (a table
/// only: `--json` prints the whole [`Report`] instead).
pub(crate) fn write_table(w: impl Write, stats: &[FunctionStat], total: u64) -> io::Result<()> {
    let cols = vec![
        Column::table("SELF%", 7, Align::Right),
        Column::table("TOTAL%", 7, Align::Right),
        Column::table("SELF", 9, Align::Right),
        Column::table("TOTAL", 9, Align::Right),
        Column::table("FUNCTION", 0, Align::Left).gap(2),
    ];
    let mut out = Output::new(w, Format::Table, cols);
    out.header()?;
    for s in stats {
        out.row(|r| {
            r.display(format_args!("{:.2}%", percent(s.self_samples, total)))?;
            r.display(format_args!("{:.2}%", percent(s.total_samples, total)))?;
            r.u64(s.self_samples)?;
            r.u64(s.total_samples)?;
            // A symbol name is text from outside kscope.
            r.str(&s.name)
        })?;
    }
    out.flush()
}

/// Stacks lost per reason, for one side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Lost {
    pub(crate) eexist: u64,
    pub(crate) efault: u64,
    pub(crate) stack_map_full: u64,
    pub(crate) other: u64,
}

impl Lost {
    pub(crate) fn total(&self) -> u64 {
        self.eexist + self.efault + self.stack_map_full + self.other
    }
}

/// Everything `--json` prints: one JSON document.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// `cycles` or `cpu-clock`; `off-cpu` for an off-CPU profile.
    pub(crate) event: &'static str,
    /// What a stack's `count` (and `samples`) counts: `samples`, or
    /// `microseconds` off the CPU.
    pub(crate) unit: &'static str,
    pub(crate) frequency_hz: u64,
    pub(crate) cpus: Vec<u32>,
    /// The `-p` processes; empty when system-wide.
    pub(crate) pids: Vec<u32>,
    pub(crate) duration_secs: f64,
    /// Samples in `stacks` (their counts' sum).
    pub(crate) samples: u64,
    /// Idle-task samples left out (without `-I`).
    pub(crate) idle_samples: u64,
    /// Samples dropped because the counts map was full.
    pub(crate) counts_map_full: u64,
    pub(crate) lost_kernel_stacks: Lost,
    pub(crate) lost_user_stacks: Lost,
    pub(crate) symbolize_secs: f64,
    /// The kernel's id of the sampling program while it ran.
    pub(crate) prog_id: u32,
    /// When sampling began, in nanoseconds since the Unix epoch.
    pub(crate) start_unix_ns: u64,
    /// The DWARF unwinder's tables and walks; `None` when it was off
    /// (`--no-dwarf`, off-CPU mode, or a kernel that cannot run it).
    pub(crate) unwind: Option<UnwindReport>,
    pub(crate) stacks: Vec<Stack>,
}

/// The DWARF unwinder's part of [`Report`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct UnwindReport {
    /// Bytes of the kernel's row array (allocated whole at the start).
    pub(crate) table_capacity_bytes: u64,
    /// The most bytes of rows in use at once.
    pub(crate) table_peak_bytes: u64,
    /// Files (executables, libraries) whose tables were built.
    pub(crate) objects: u64,
    /// Rows of those tables.
    pub(crate) rows: u64,
    /// Files left without a table because the row array was full.
    pub(crate) objects_left_out: u64,
    /// Processes given tables.
    pub(crate) processes: u64,
    /// User stacks walked with tables.
    pub(crate) walks: u64,
    /// Frames of those walks stepped by frame pointer (no table).
    pub(crate) frame_pointer_steps: u64,
    /// Walks cut at the frame limit.
    pub(crate) truncated: u64,
    /// Walks that stopped before the outermost frame (no rule, a failed
    /// read).
    pub(crate) stopped: u64,
}

/// The one-line summary printed on stderr when sampling ends.
pub(crate) fn summary(r: &Report) -> String {
    let lost = r.lost_kernel_stacks.total() + r.lost_user_stacks.total();
    let mut s = if r.event == super::OFF_CPU_EVENT {
        format!(
            "{} us off the CPU in {:.1}s (sched:sched_switch)",
            r.samples, r.duration_secs
        )
    } else {
        format!(
            "{} samples in {:.1}s ({} at {} Hz on {} CPU{})",
            r.samples,
            r.duration_secs,
            r.event,
            r.frequency_hz,
            r.cpus.len(),
            if r.cpus.len() == 1 { "" } else { "s" }
        )
    };
    if r.idle_samples > 0 {
        s += &format!(
            ", {} idle samples not shown (-I shows them)",
            r.idle_samples
        );
    }
    if lost > 0 {
        let side = |name: &str, l: &Lost| {
            format!(
                "{name}: {} eexist, {} efault, {} map full, {} other",
                l.eexist, l.efault, l.stack_map_full, l.other
            )
        };
        s += &format!(
            "; {lost} stacks lost ({}; {})",
            side("kernel", &r.lost_kernel_stacks),
            side("user", &r.lost_user_stacks)
        );
    }
    if let Some(u) = &r.unwind {
        s += &format!(
            "; unwind tables: {} files, {} KiB of {} MiB{}",
            u.objects,
            u.table_peak_bytes.div_ceil(1024),
            u.table_capacity_bytes >> 20,
            if u.objects_left_out > 0 {
                format!(
                    " ({} files left out: full, see --unwind-memory)",
                    u.objects_left_out
                )
            } else {
                String::new()
            }
        );
    }
    if r.counts_map_full > 0 {
        s += &format!(
            "; {} samples dropped: the counts map was full",
            r.counts_map_full
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(comm: &str, user: &[&str], kernel: &[&str], count: u64) -> Stack {
        Stack {
            pid: 42,
            comm: comm.into(),
            user: user.iter().map(|s| s.to_string()).collect(),
            kernel: kernel.iter().map(|s| s.to_string()).collect(),
            count,
            ..Stack::default()
        }
    }

    fn sample_stacks() -> Vec<Stack> {
        vec![
            stack("app", &["main", "work", "hot"], &[], 60),
            stack("app", &["main", "work"], &[], 10),
            stack(
                "app",
                &["main", "write"],
                &["entry_SYSCALL_64", "ksys_write", "vfs_write"],
                25,
            ),
            // Recursion: `rec` counts once per sample in its total.
            stack("app", &["main", "rec", "rec", "rec"], &[], 5),
        ]
    }

    #[test]
    fn folded_lines_go_comm_user_kernel_root_to_leaf() {
        let f = folded(&sample_stacks());
        assert_eq!(f["app;main;work;hot"], 60);
        assert_eq!(
            f["app;main;write;entry_SYSCALL_64_[k];ksys_write_[k];vfs_write_[k]"],
            25
        );
        assert_eq!(f.values().sum::<u64>(), 100);
        let mut out = Vec::new();
        write_folded(&mut out, &sample_stacks()).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("app;main;work;hot 60\n"), "{text}");
    }

    #[test]
    fn folded_merges_identical_lines_and_escapes_separators() {
        let stacks = vec![
            stack("app", &["<[u8; 16] as Foo>::bar"], &[], 2),
            stack("app", &["<[u8; 16] as Foo>::bar"], &[], 3),
            stack("we;ird\ncomm", &["f"], &[], 1),
        ];
        let f = folded(&stacks);
        assert_eq!(f.len(), 2);
        assert_eq!(f["app;<[u8: 16] as Foo>::bar"], 5);
        assert_eq!(f["we:ird comm;f"], 1);
    }

    #[test]
    fn top_functions_count_self_at_the_leaf_and_total_once_per_sample() {
        let top = top_functions(&sample_stacks(), 10);
        let get = |n: &str| {
            top.iter()
                .find(|s| s.name == n)
                .map(|s| (s.self_samples, s.total_samples))
        };
        assert_eq!(get("hot"), Some((60, 60)));
        assert_eq!(get("work"), Some((10, 70)));
        // The leaf of a syscall sample is the kernel leaf, not the user one.
        assert_eq!(get("vfs_write"), Some((25, 25)));
        assert_eq!(get("write"), Some((0, 25)));
        assert_eq!(get("rec"), Some((5, 5)));
        assert_eq!(get("main"), Some((0, 100)));
        assert_eq!(top[0].name, "hot");
        assert_eq!(top[1].name, "vfs_write");
        assert_eq!(top_functions(&sample_stacks(), 2).len(), 2);
    }

    #[test]
    fn table_shows_percentages_of_the_total() {
        let stacks = sample_stacks();
        let mut out = Vec::new();
        write_table(&mut out, &top_functions(&stacks, 3), 100).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "  SELF%  TOTAL%      SELF     TOTAL  FUNCTION");
        assert_eq!(lines[1], " 60.00%  60.00%        60        60  hot");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["60.00%", "60.00%", "60", "60", "hot"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["10.00%", "70.00%", "10", "70", "work"]
        );
        // No division by zero on an empty profile.
        let mut out = Vec::new();
        write_table(&mut out, &top_functions(&stacks, 1), 0).expect("write");
        assert!(String::from_utf8_lossy(&out).contains("0.00%"));
    }

    #[test]
    fn json_report_round_trips_with_stacks_and_losses() {
        let r = Report {
            event: "cpu-clock",
            unit: "samples",
            frequency_hz: 49,
            cpus: vec![0, 1],
            pids: vec![],
            duration_secs: 1.5,
            samples: 100,
            idle_samples: 7,
            counts_map_full: 0,
            lost_kernel_stacks: Lost {
                eexist: 1,
                ..Default::default()
            },
            lost_user_stacks: Lost::default(),
            symbolize_secs: 0.01,
            unwind: None,
            start_unix_ns: 1_700_000_000_000_000_000,
            prog_id: 9,
            stacks: sample_stacks(),
        };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("serializes")).expect("parses");
        assert_eq!(v["samples"], 100);
        assert_eq!(v["lost_kernel_stacks"]["eexist"], 1);
        assert_eq!(v["stacks"][2]["kernel"][2], "vfs_write");
        assert_eq!(v["stacks"][0]["user"][0], "main");
        let sum: u64 = v["stacks"]
            .as_array()
            .expect("array")
            .iter()
            .map(|s| s["count"].as_u64().expect("count"))
            .sum();
        assert_eq!(sum, 100);
        let s = summary(&r);
        assert!(
            s.starts_with("100 samples in 1.5s (cpu-clock at 49 Hz on 2 CPUs)"),
            "{s}"
        );
        assert!(
            s.contains("7 idle samples") && s.contains("1 stacks lost"),
            "{s}"
        );
    }

    #[test]
    fn folded_marks_kernel_frames_and_only_them() {
        let stacks = vec![
            // A user function and a kernel function of the same name stay
            // apart.
            stack("app", &["main", "read"], &["ksys_read", "read"], 4),
            stack("app", &["main", "read"], &[], 3),
            stack("kworker", &[], &["[unknown]"], 2),
            stack("app", &["[user mode]"], &[], 1),
        ];
        let f = folded(&stacks);
        assert_eq!(f["app;main;read;ksys_read_[k];read_[k]"], 4);
        assert_eq!(f["app;main;read"], 3);
        assert_eq!(f["kworker;[unknown]_[k]"], 2);
        assert_eq!(f["app;[user mode]"], 1);
        assert_eq!(f.len(), 4);
    }

    /// The SVG's frames: (title, fill colour).
    fn svg_frames(svg: &str) -> Vec<(String, (u8, u8, u8))> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(svg, opts).expect("well-formed XML");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.has_tag_name("g"))
            .filter_map(|g| {
                let title = g.children().find(|n| n.has_tag_name("title"))?.text()?;
                let fill = g
                    .children()
                    .find(|n| n.has_tag_name("rect"))?
                    .attribute("fill")?;
                let rgb: Vec<u8> = fill
                    .strip_prefix("rgb(")?
                    .strip_suffix(')')?
                    .split(',')
                    .map(|c| c.trim().parse().expect("colour component"))
                    .collect();
                Some((title.to_owned(), (rgb[0], rgb[1], rgb[2])))
            })
            .collect()
    }

    /// flamegraph.pl's kernel orange: red highest, no blue, green between
    /// 35% and 65% of red (a hue of about 20-40 degrees, where its red
    /// frames have 0 and its yellow ones 60).
    fn is_orange((r, g, b): (u8, u8, u8)) -> bool {
        b == 0 && r > g && (35..=65).contains(&(u32::from(g) * 100 / u32::from(r.max(1))))
    }

    #[test]
    fn svg_of_a_profile_without_samples_says_so() {
        let mut out = Vec::new();
        write_svg(&mut out, &[], "a <b> & c", "samples").expect("render");
        let svg = String::from_utf8(out).expect("utf8");
        assert!(svg_frames(&svg).is_empty(), "{svg}");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(texts, ["a <b> & c", "no samples in this profile"], "{svg}");
    }

    #[test]
    fn svg_is_rendered_from_the_folded_stacks() {
        let mut out = Vec::new();
        write_svg(&mut out, &sample_stacks(), "test", "samples").expect("render");
        let frames = svg_frames(&String::from_utf8(out).expect("utf8"));
        let titles: Vec<&str> = frames.iter().map(|(t, _)| t.as_str()).collect();
        assert!(
            titles.iter().any(|t| t.starts_with("hot (60 samples")),
            "{titles:?}"
        );
        // The kernel mark is not part of the name shown.
        assert!(
            titles
                .iter()
                .any(|t| t.starts_with("vfs_write (25 samples")),
            "{titles:?}"
        );
        assert!(
            !titles.iter().any(|t| t.contains(KERNEL_MARK)),
            "{titles:?}"
        );
    }

    #[test]
    fn svg_colours_kernel_frames_apart() {
        let stacks = vec![
            stack(
                "app",
                &["main", "app::work", "read"],
                &["ksys_read", "vfs_read"],
                5,
            ),
            stack("app", &["main", "app::work", "hot"], &[], 5),
        ];
        let mut out = Vec::new();
        write_svg(&mut out, &stacks, "test", "samples").expect("render");
        let frames = svg_frames(&String::from_utf8(out).expect("utf8"));
        let colour = |name: &str| {
            frames
                .iter()
                .find(|(t, _)| t.starts_with(&format!("{name} (")))
                .unwrap_or_else(|| panic!("no frame {name}: {frames:?}"))
                .1
        };
        for k in ["ksys_read", "vfs_read"] {
            assert!(is_orange(colour(k)), "kernel {k}: {:?}", colour(k));
        }
        for u in ["main", "app::work", "read", "hot"] {
            assert!(!is_orange(colour(u)), "user {u}: {:?}", colour(u));
        }
        // Colours follow names: the same graph renders the same.
        let mut again = Vec::new();
        write_svg(&mut again, &stacks, "test", "samples").expect("render");
        assert_eq!(svg_frames(&String::from_utf8(again).expect("utf8")), frames);
    }
}
