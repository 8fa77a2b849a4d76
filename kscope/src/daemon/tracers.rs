//! The daemon's tracers: each is a tracer of `trace::runner::TRACERS` in
//! count mode, counting in the kernel; the collector reads the counts at
//! scrape time. Nothing goes through a ring buffer, so the daemon runs no
//! task per tracer and loses nothing to a slow consumer.

use std::sync::{Arc, Mutex};

use super::{
    config::TraceConfig,
    metrics::{Shared, TracerSlot, tracer_problem_key},
};
use crate::trace::{self, Filters, runner::TRACERS};

/// Starts and stops the daemon's tracers; the running ones live in the
/// shared state.
#[derive(Debug, Default)]
pub(crate) struct Tracers;

impl Tracers {
    /// Starts the tracers `cfg` asks for that are not running. Returns the
    /// names started; on error, those started by this call are stopped.
    ///
    /// # Errors
    /// Missing capabilities or tracefs, or a tracer that cannot start.
    pub(crate) fn start_missing(
        &mut self,
        cfg: &TraceConfig,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<Vec<&'static str>> {
        let todo: Vec<_> = {
            let s = shared.lock();
            TRACERS
                .iter()
                .filter(|t| cfg.wants(t.name) && !s.tracers.contains_key(t.name))
                .collect()
        };
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        trace::preflight("kscope daemon")?;
        let mut started = Vec::new();
        for t in todo {
            match (t.start)(&Filters::default()) {
                Ok(counter) => {
                    let slot = TracerSlot::new(counter, cfg.max_series);
                    shared
                        .lock()
                        .tracers
                        .insert(t.name, Arc::new(Mutex::new(slot)));
                    started.push(t.name);
                }
                Err(e) => {
                    self.stop(&started, shared);
                    return Err(
                        anyhow::Error::new(e).context(format!("starting the {} tracer", t.name))
                    );
                }
            }
        }
        Ok(started)
    }

    /// Stops the named tracers: dropping a counter detaches it and frees
    /// its maps (once a scrape holding it is done).
    pub(crate) fn stop(&mut self, names: &[&'static str], shared: &Shared) {
        let mut s = shared.lock();
        for name in names {
            s.tracers.remove(name);
            s.problems.remove(&tracer_problem_key(name));
        }
    }

    /// Stops the tracers `cfg` no longer asks for and drops their metrics.
    pub(crate) fn stop_unwanted(&mut self, cfg: &TraceConfig, shared: &Arc<Shared>) {
        let names: Vec<&'static str> = shared
            .lock()
            .tracers
            .keys()
            .copied()
            .filter(|n| !cfg.wants(n))
            .collect();
        self.stop(&names, shared);
    }

    pub(crate) fn stop_all(&mut self, shared: &Arc<Shared>) {
        let names: Vec<&'static str> = shared.lock().tracers.keys().copied().collect();
        self.stop(&names, shared);
    }

    /// Applies a new series limit to what is counted from now on.
    pub(crate) fn max_series(&self, max: usize, shared: &Arc<Shared>) {
        for slot in shared.lock().tracers.values() {
            slot.lock().unwrap_or_else(|p| p.into_inner()).set_max(max);
        }
    }
}
