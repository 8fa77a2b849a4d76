//! The daemon's aggregate tracers: each runs as a task that owns its loaded
//! object (dropping it detaches) and folds events into [`Shared`] counts.

use std::{collections::BTreeMap, sync::Arc};

use aya::Ebpf;
use tokio::{sync::oneshot, task::JoinHandle};

use kscope_common::trace::ConnectEvent;

use super::{
    config::TraceConfig,
    metrics::{OpenTracer, Shared, State, TracerStats},
};
use crate::trace::{
    self, Filters, Stop,
    connect::{self, ConnectOpts},
    exec,
    open::OpenCounter,
};

/// One running tracer.
struct Task {
    stop: oneshot::Sender<()>,
    join: JoinHandle<()>,
}

/// The tracers the daemon runs, by name (`exec`, `connect`, `open`). The
/// open tracer counts in the kernel and has no task: it lives in the shared
/// state, where the collector reads it.
#[derive(Default)]
pub struct Tracers {
    tasks: BTreeMap<&'static str, Option<Task>>,
}

/// Whether `cfg` asks for tracer `name`.
fn wanted(cfg: &TraceConfig, name: &str) -> bool {
    match name {
        "open" => cfg.open,
        "exec" => cfg.exec,
        "connect" => cfg.connect,
        _ => false,
    }
}

const ALL: [&str; 3] = ["open", "exec", "connect"];

impl Tracers {
    /// Starts the tracers `cfg` asks for that are not running. Returns the
    /// names started; on error, those started by this call are stopped.
    pub async fn start_missing(
        &mut self,
        cfg: &TraceConfig,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<Vec<&'static str>> {
        let todo: Vec<&'static str> = ALL
            .into_iter()
            .filter(|n| wanted(cfg, n) && !self.tasks.contains_key(n))
            .collect();
        if todo.is_empty() {
            return Ok(todo);
        }
        trace::preflight("kscope daemon")?;
        let mut started = Vec::new();
        for name in todo {
            match self.start(name, cfg.max_series, shared) {
                Ok(()) => started.push(name),
                Err(e) => {
                    self.stop(&started, shared).await;
                    return Err(e.context(format!("starting the {name} tracer")));
                }
            }
        }
        Ok(started)
    }

    fn start(
        &mut self,
        name: &'static str,
        max_series: usize,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<()> {
        if name == "open" {
            let counter = OpenCounter::start(&Filters::default())?;
            shared.lock().open = Some(OpenTracer::new(counter, max_series));
            self.tasks.insert(name, None);
            return Ok(());
        }
        let (stop, stopped) = oneshot::channel();
        let join = match name {
            "exec" => {
                // Only the name and result are counted: one argument keeps
                // the kernel's copy short.
                let ebpf = exec::attach(&Filters::default(), 1)?;
                shared.lock().exec = Some(TracerStats::new(max_series));
                spawn(name, ebpf, stopped, shared.clone(), |s, bytes| {
                    let (Some(ev), Some(t)) = (exec::event(bytes), s.exec.as_mut()) else {
                        return;
                    };
                    t.events += 1;
                    t.series.add((ev.comm, ev.ret), 1);
                })
            }
            "connect" => {
                let (ebpf, probe) = connect::attach(&ConnectOpts::default())?;
                tracing::info!("connect tracer: {probe:?} probes");
                shared.lock().connect = Some(TracerStats::new(max_series));
                spawn(name, ebpf, stopped, shared.clone(), |s, bytes| {
                    let (Some(ev), Some(t)) =
                        (trace::decode::<ConnectEvent>(bytes), s.connect.as_mut())
                    else {
                        return;
                    };
                    t.events += 1;
                    let ret = (ev.has_ret != 0).then_some(ev.ret);
                    t.series
                        .add((connect::addr(ev.family, &ev.daddr), ev.dport, ret), 1);
                })
            }
            _ => anyhow::bail!("the {name} tracer is not available in the daemon"),
        };
        self.tasks.insert(name, Some(Task { stop, join }));
        Ok(())
    }

    /// Stops the named tracers, waits until they have detached, and drops
    /// their metrics.
    pub async fn stop(&mut self, names: &[&'static str], shared: &Shared) {
        for name in names {
            if let Some(Some(t)) = self.tasks.remove(name) {
                let _ = t.stop.send(());
                if let Err(e) = t.join.await {
                    tracing::error!("the {name} tracer task failed: {e}");
                }
            }
            // The open tracer's counter is dropped (detached) here.
            clear(&mut shared.lock(), name);
        }
    }

    /// Stops the tracers `cfg` no longer asks for and drops their metrics.
    pub async fn stop_unwanted(&mut self, cfg: &TraceConfig, shared: &Arc<Shared>) {
        let names: Vec<&'static str> = self
            .tasks
            .keys()
            .copied()
            .filter(|n| !wanted(cfg, n))
            .collect();
        self.stop(&names, shared).await;
    }

    pub async fn stop_all(&mut self, shared: &Arc<Shared>) {
        let names: Vec<&'static str> = self.tasks.keys().copied().collect();
        self.stop(&names, shared).await;
    }

    /// Applies a new series limit to what is counted from now on.
    pub fn max_series(&self, max: usize, shared: &Arc<Shared>) {
        let mut s = shared.lock();
        if let Some(t) = s.exec.as_mut() {
            t.series.set_max(max);
        }
        if let Some(t) = s.connect.as_mut() {
            t.series.set_max(max);
        }
        if let Some(t) = s.open.as_mut() {
            t.set_max(max);
        }
    }
}

fn clear(s: &mut State, name: &str) {
    match name {
        "exec" => s.exec = None,
        "connect" => s.connect = None,
        "open" => s.open = None,
        _ => {}
    }
    s.problems.remove(&format!("{name} tracer"));
}

/// Runs `ebpf`'s ring-buffer consumer as a task until `stopped` fires,
/// folding each record into the shared state with `fold`.
fn spawn(
    name: &'static str,
    mut ebpf: Ebpf,
    stopped: oneshot::Receiver<()>,
    shared: Arc<Shared>,
    fold: impl Fn(&mut State, &[u8]) + Send + Sync + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.await;
            Stop::Terminate
        };
        let result = trace::consume(
            &mut ebpf,
            stop,
            None,
            |bytes| {
                fold(&mut shared.lock(), bytes);
                Ok(())
            },
            |summary| {
                let mut s = shared.lock();
                let lost = match name {
                    "exec" => s.exec.as_mut().map(|t| &mut t.lost),
                    "connect" => s.connect.as_mut().map(|t| &mut t.lost),
                    _ => None,
                };
                if let Some(l) = lost {
                    if summary.lost > *l {
                        tracing::warn!(
                            "{name} tracer: {} events lost: the ring buffer was full",
                            summary.lost - *l
                        );
                    }
                    *l = summary.lost;
                }
            },
        )
        .await;
        if let Err(e) = result {
            tracing::error!("the {name} tracer stopped: {e}");
            shared
                .lock()
                .problems
                .insert(format!("{name} tracer"), e.to_string());
        }
        // Dropping the object here detaches the tracer.
        drop(ebpf);
    })
}
