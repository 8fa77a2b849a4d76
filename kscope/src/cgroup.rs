//! cgroup v2 in user space: `--cgroup PATH` (open and check the directory
//! every tracer and the profiler filter on) and the names of cgroup ids
//! (the path under the cgroup2 mount, and the container id a path names).
//!
//! The kernel side filters with a one-slot `BPF_MAP_TYPE_CGROUP_ARRAY`
//! holding the directory and `bpf_current_task_under_cgroup` (Linux 4.9+),
//! which takes descendants too. `bpf_get_current_ancestor_cgroup_id` would
//! do the same with a plain id, but Debian's 5.10 does not offer it to
//! tracepoints and perf_event programs.
//!
//! A cgroup id (`bpf_get_current_cgroup_id`) is the inode number of the
//! cgroup's directory in the cgroup2 filesystem (kernfs, 64-bit ids), so
//! names come from walking the mount. Fallback policy: an id no walk finds
//! (the cgroup is gone, or no cgroup2 mount is visible) is shown as its
//! number; losing a name is better than failing.

use std::{
    collections::HashMap,
    fs, io,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::{DirEntryExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::sys;

/// `CGROUP2_SUPER_MAGIC` from include/uapi/linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Directories a walk of the cgroup2 mount reads at most.
const WALK_MAX: usize = 65_536;
/// A walk for an unknown id runs at most this often.
const REWALK_EVERY: Duration = Duration::from_secs(1);

/// Errors of `--cgroup`.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// The directory cannot be opened.
    #[error("cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// It is not a directory of the cgroup v2 hierarchy.
    #[error("{path} is not a cgroup v2 directory ({hint})")]
    NotV2 { path: PathBuf, hint: String },
}

/// An open cgroup v2 directory (`--cgroup PATH`). The kernel side takes
/// its file descriptor into its cgroup array, so it must stay open until
/// the map holds it.
#[derive(Debug)]
pub struct CgroupDir {
    file: fs::File,
    path: PathBuf,
    id: u64,
}

impl CgroupDir {
    /// Opens `path` and checks it is a cgroup v2 directory.
    ///
    /// # Errors
    /// The path missing or unreadable, or not in the cgroup v2 hierarchy
    /// (a v1 controller's directory, or any other directory).
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(|source| CgroupError::Open {
                path: path.into(),
                source,
            })?;
        let magic = sys::fd_fs_magic(file.as_fd()).map_err(|source| CgroupError::Open {
            path: path.into(),
            source,
        })?;
        if magic != CGROUP2_SUPER_MAGIC {
            let hint = match cgroup2_mount() {
                Some(m) => format!("the cgroup v2 hierarchy is mounted at {}", m.display()),
                None => "no cgroup v2 hierarchy is mounted".into(),
            };
            return Err(CgroupError::NotV2 {
                path: path.into(),
                hint,
            });
        }
        let id = file
            .metadata()
            .map_err(|source| CgroupError::Open {
                path: path.into(),
                source,
            })?
            .ino();
        Ok(Self {
            file,
            path: path.into(),
            id,
        })
    }

    /// The cgroup's id, as `bpf_get_current_cgroup_id` reports it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// What a cgroup id names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupName {
    /// The path under the cgroup2 mount, from `/` (the root cgroup).
    pub path: String,
    /// The container id the path names, if any (64 hex digits).
    pub container_id: Option<String>,
}

/// Cgroup ids to names, from walks of the cgroup2 mount.
#[derive(Debug, Default)]
struct Names {
    mount: Option<PathBuf>,
    by_id: HashMap<u64, Arc<CgroupName>>,
    walked: Option<Instant>,
}

impl Names {
    fn get(&mut self, id: u64) -> Option<Arc<CgroupName>> {
        if let Some(n) = self.by_id.get(&id) {
            return Some(n.clone());
        }
        if self.walked.is_some_and(|t| t.elapsed() < REWALK_EVERY) {
            return None;
        }
        self.walked = Some(Instant::now());
        let mount = self.mount()?;
        self.walk(&mount);
        self.by_id.get(&id).cloned()
    }

    /// The cgroup2 mount, found on first use.
    fn mount(&mut self) -> Option<PathBuf> {
        if self.mount.is_none() {
            self.mount = cgroup2_mount();
        }
        self.mount.clone()
    }

    /// Records every directory under `mount` (breadth first, at most
    /// [`WALK_MAX`]).
    fn walk(&mut self, mount: &Path) {
        if let Ok(m) = fs::metadata(mount) {
            self.insert(m.ino(), "/".into());
        }
        let mut queue = vec![(mount.to_path_buf(), String::new())];
        let mut seen = 0;
        while let Some((dir, rel)) = queue.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                seen += 1;
                if seen > WALK_MAX {
                    return;
                }
                let name = e.file_name();
                let rel = format!("{rel}/{}", name.to_string_lossy());
                self.insert(e.ino(), rel.clone());
                queue.push((e.path(), rel));
            }
        }
    }

    fn insert(&mut self, id: u64, path: String) {
        let container_id = container_id(&path).map(str::to_owned);
        self.by_id
            .insert(id, Arc::new(CgroupName { path, container_id }));
    }
}

static NAMES: Mutex<Option<Names>> = Mutex::new(None);

/// The name of cgroup `id`, or `None` when no cgroup2 directory has it
/// (any more). Looked up in a cache; an unknown id walks the cgroup2 mount
/// again, at most once a second.
pub fn name(id: u64) -> Option<Arc<CgroupName>> {
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    names.get_or_insert_with(Names::default).get(id)
}

/// Names the cgroup process `pid` is in now, so that its id keeps its name
/// after the cgroup is removed (a short-lived container's). Reads the v2
/// line of /proc/PID/cgroup; a process gone, or no cgroup2 mount visible,
/// names nothing.
pub fn remember_pid(pid: u32) {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return;
    };
    let Some(rel) = proc_cgroup_v2(&text) else {
        return;
    };
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let names = names.get_or_insert_with(Names::default);
    let Some(mount) = names.mount() else {
        return;
    };
    let Ok(m) = fs::metadata(mount.join(rel.trim_start_matches('/'))) else {
        return;
    };
    if !names.by_id.contains_key(&m.ino()) {
        names.insert(m.ino(), rel.to_owned());
    }
}

/// The cgroup v2 path in a /proc/PID/cgroup text: its `0::PATH` line
/// (cgroups(7)); `None` without one.
fn proc_cgroup_v2(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// The container id a cgroup path names, from its last component that
/// names one: systemd's `docker-ID.scope`, `cri-containerd-ID.scope`,
/// `crio-ID.scope`, `libpod-ID.scope`, or cgroupfs's bare `ID` (under
/// `/docker/` or a kubepods pod), where ID is 64 hex digits.
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ]
        .iter()
        .find_map(|p| c.strip_prefix(p))
        .unwrap_or(c);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    })
}

/// Where this process sees the cgroup v2 hierarchy mounted (the first
/// `cgroup2` line of /proc/self/mountinfo): `/sys/fs/cgroup` on most
/// machines, `/sys/fs/cgroup/unified` in hybrid mode. `None` when it is not
/// mounted.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

/// The mount point of the first `cgroup2` filesystem in a
/// /proc/self/mountinfo text (proc(5): field 5 is the mount point, with
/// spaces and other bytes escaped as `\ooo`; the type follows ` - `).
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(point)))
    })
}

/// Undoes mountinfo's `\ooo` escapes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_v2_line_of_proc_cgroup_names_the_path() {
        let hybrid =
            "12:memory:/user.slice\n1:name=systemd:/init.scope\n0::/system.slice/x.service\n";
        assert_eq!(proc_cgroup_v2(hybrid), Some("/system.slice/x.service"));
        assert_eq!(proc_cgroup_v2("0::/\n"), Some("/"));
        // cgroup v1 only, or garbage.
        assert_eq!(proc_cgroup_v2("4:cpu:/a\n"), None);
        assert_eq!(proc_cgroup_v2("0::relative\n"), None);
        assert_eq!(proc_cgroup_v2(""), None);
    }

    #[test]
    fn container_ids_come_from_runtime_scopes_and_cgroupfs_paths() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice/cri-containerd-{ID}.scope"
            ),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods/besteffort/pod1234-5678/{ID}"),
            format!("/docker/{ID}"),
            format!("/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path), Some(ID), "{path}");
        }
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            "/kubepods.slice/kubepods-besteffort.slice",
            &format!("/docker-{}.scope", &ID[1..]),
            &format!("/docker-{}x.scope", &ID[1..]),
        ] {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn the_cgroup2_mount_is_found_in_hybrid_and_unified_layouts() {
        let hybrid = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        let v1_only = "35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(v1_only), None);
    }

    #[test]
    fn a_directory_outside_cgroup2_is_refused() {
        let err = CgroupDir::open(Path::new("/")).expect_err("/ is no cgroup");
        assert!(matches!(err, CgroupError::NotV2 { .. }), "{err:?}");
        let err = CgroupDir::open(Path::new("/nonexistent-kscope")).expect_err("missing");
        assert!(matches!(err, CgroupError::Open { .. }), "{err:?}");
    }
}
