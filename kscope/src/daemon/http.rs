//! The daemon's HTTP endpoints: `/metrics`, `/healthz` and `/profile`.
//!
//! The server runs on the daemon's single event-loop thread, which must
//! stay free: a liveness probe that waits behind scrapes gets the pod
//! killed. So:
//! - a scrape is computed on the blocking pool, one at a time; requests
//!   wait for their turn on the event loop, where a request whose client
//!   hangs up is dropped before it is computed;
//! - `/healthz` is answered on the event loop and never waits for a scrape;
//! - at most `[metrics] max_connections` connections are served; one more
//!   gets a 503 and is closed at once;
//! - a connection that sends no complete request header within
//!   `[metrics] header_timeout_seconds` (after it opens, or after its
//!   previous response) is closed.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use super::{
    config::{MAX_FREQUENCY, MetricsConfig, ProfileConfig},
    expo::Format,
    metrics::{KscopeCollector, Shared},
};
use crate::{
    profile::{self, report, symbolize::Sides},
    sys::Chain,
};

const TEXT: &str = "text/plain; charset=utf-8";

/// Test seam: while the file this variable names exists, each scrape
/// waits (on the blocking pool, holding its turn) before it is computed,
/// with a file of the same name and extension `held` present meanwhile.
/// The integration tests use it to hold scrapes in flight for as long as
/// they need, instead of hoping a scrape is slow enough.
const SCRAPE_GATE_ENV: &str = "KSCOPE_TEST_SCRAPE_GATE";

/// What the handlers share.
pub(crate) struct Ctx {
    pub(crate) collector: Arc<KscopeCollector>,
    pub(crate) shared: Arc<Shared>,
    /// Swapped on reload.
    pub(crate) profile: Mutex<ProfileConfig>,
    /// Set while a profile runs: one at a time.
    profiling: AtomicBool,
    /// Set on shutdown, to end a running profile early.
    pub(crate) stop: Arc<AtomicBool>,
    /// One scrape computed at a time: more in parallel would only share
    /// the same CPUs and the same kernel maps.
    scrape_turn: Arc<Semaphore>,
    connections: Arc<Semaphore>,
    header_timeout: Duration,
    scrape_gate: Option<PathBuf>,
}

impl Ctx {
    /// `metrics`' connection settings are read here, once: like the
    /// listen address, changing them takes a restart.
    pub(crate) fn new(
        shared: Arc<Shared>,
        profile: ProfileConfig,
        metrics: &MetricsConfig,
    ) -> Self {
        Self {
            collector: Arc::new(KscopeCollector(shared.clone())),
            shared,
            profile: Mutex::new(profile),
            profiling: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
            scrape_turn: Arc::new(Semaphore::new(1)),
            connections: Arc::new(Semaphore::new(metrics.max_connections)),
            header_timeout: Duration::from_secs(metrics.header_timeout_seconds),
            scrape_gate: std::env::var_os(SCRAPE_GATE_ENV).map(PathBuf::from),
        }
    }
}

/// The whole answer to a connection over `[metrics] max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 38\r\nconnection: close\r\n\r\ntoo many connections; try again later\n";

/// Accepts connections until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            refuse(&stream);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = ctx.header_timeout;
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, &req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

/// Answers a connection over the limit with a 503 and closes it. One
/// non-blocking write into a fresh socket's empty send buffer: a client
/// that never reads cannot hold it.
fn refuse(stream: &TcpStream) {
    if let Err(e) = stream.try_write(BUSY) {
        tracing::debug!("refusing a connection: {e}");
    }
    tracing::debug!("metrics: connection refused, [metrics] max_connections reached");
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    reply(status, TEXT, body)
}

async fn handle(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    // HEAD is answered as GET would be; hyper sends the headers only.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            metrics(ctx, Format::negotiate(accept)).await
        }
        "/healthz" => health(ctx),
        "/profile" => profile(ctx, req.uri().query().unwrap_or("")).await,
        "/" => text(
            StatusCode::OK,
            "kscope daemon: /metrics, /healthz, /profile?seconds=N[&hz=F][&pid=P...][&format=folded|svg|json|pprof]\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// One scrape: waits for its turn here, on the event loop, where hyper
/// drops this future if the client hangs up; only then is it computed,
/// on the blocking pool.
async fn metrics(ctx: &Ctx, format: Format) -> Response<Full<Bytes>> {
    let Ok(turn) = ctx.scrape_turn.clone().acquire_owned().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    };
    let collector = ctx.collector.clone();
    let gate = ctx.scrape_gate.clone();
    // The turn goes with the computation: a client leaving mid-scrape
    // does not let a second one start beside it.
    let job = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        if let Some(gate) = gate {
            // `<gate>.held` tells the test a scrape is waiting here.
            let held = gate.with_extension("held");
            if gate.exists() {
                let _ = std::fs::write(&held, b"");
            }
            while gate.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = std::fs::remove_file(&held);
        }
        collector.encode(format)
    });
    match job.await {
        Ok(body) => reply(StatusCode::OK, format.content_type(), body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        ),
    }
}

/// Healthy when no problem is recorded (a tracer whose kernel counters the
/// last scrape could not read, see [`super::metrics::State::problems`])
/// and every managed interface still has the firewall attached (someone
/// may have run `kscope fw detach`, or the interface may have gone away).
fn health(ctx: &Ctx) -> Response<Full<Bytes>> {
    let problems = problems(&ctx.shared);
    if problems.is_empty() {
        return text(StatusCode::OK, "ok\n".into());
    }
    let why: Vec<String> = problems.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("unhealthy: {}\n", why.join("; ")),
    )
}

/// Why the daemon is unhealthy, by component: the problems recorded, and
/// the firewall checked now.
fn problems(shared: &Shared) -> BTreeMap<String, String> {
    let (ifaces, mut problems) = {
        let s = shared.lock();
        (s.fw_ifaces.clone(), s.problems.clone())
    };
    for iface in ifaces {
        let why = match crate::firewall::status_of(&iface) {
            Ok(st) if st.attached => continue,
            Ok(_) => "the interface is gone".to_owned(),
            Err(e) => format!("not attached ({})", Chain(&e)),
        };
        problems.insert(format!("firewall on {iface}"), why);
    }
    problems
}

/// Output of a `/profile` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProfileFormat {
    Folded,
    Svg,
    Json,
    /// Gzipped `profile.proto`, as Go's net/http/pprof serves it.
    Pprof,
}

/// A `/profile` request, checked against the config.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProfileRequest {
    pub(crate) seconds: u64,
    hz: u64,
    pub(crate) pids: Vec<u32>,
    pub(crate) format: ProfileFormat,
}

/// Highest pid Linux can hand out (PID_MAX_LIMIT in include/linux/threads.h,
/// the ceiling of kernel.pid_max on 64-bit).
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Parses a `/profile` query string (`seconds=N&hz=F&pid=P&format=F`).
///
/// # Errors
/// A one-line reason for a 400 reply.
fn parse_profile_query(query: &str, cfg: &ProfileConfig) -> Result<ProfileRequest, String> {
    let mut req = ProfileRequest {
        seconds: 10.min(cfg.max_seconds),
        hz: cfg.frequency,
        pids: Vec::new(),
        format: ProfileFormat::Folded,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |what: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, not {v:?}"))
        };
        match k {
            "seconds" => req.seconds = num("seconds")?,
            "hz" => req.hz = num("hz")?,
            "pid" => req.pids.push(
                v.parse()
                    .ok()
                    .filter(|p| (1..=PID_MAX_LIMIT).contains(p))
                    .ok_or_else(|| {
                        format!("pid must be a process id (1-{PID_MAX_LIMIT}), not {v:?}")
                    })?,
            ),
            "format" => {
                req.format = match v {
                    "folded" => ProfileFormat::Folded,
                    "svg" => ProfileFormat::Svg,
                    "json" => ProfileFormat::Json,
                    "pprof" => ProfileFormat::Pprof,
                    _ => {
                        return Err(format!(
                            "format must be folded, svg, json or pprof, not {v:?}"
                        ));
                    }
                }
            }
            _ => return Err(format!("unknown parameter {k:?}")),
        }
    }
    if req.seconds == 0 || req.seconds > cfg.max_seconds {
        return Err(format!(
            "seconds must be 1-{} ([profile] max_seconds), not {}",
            cfg.max_seconds, req.seconds
        ));
    }
    if req.hz == 0 || req.hz > MAX_FREQUENCY {
        return Err(format!("hz must be 1-{MAX_FREQUENCY}, not {}", req.hz));
    }
    Ok(req)
}

/// The status for a profile that could not run: the request's fault (a
/// process that is not there, too many of them, a rate over the kernel's
/// limit) is a 4xx, the daemon's a 500.
fn profile_status(e: &profile::ProfileError) -> StatusCode {
    use profile::ProfileError as E;
    match e {
        E::NoSuchProcess(_) => StatusCode::NOT_FOUND,
        E::TooManyPids { .. } | E::FrequencyTooHigh { .. } | E::NoSuchCpu { .. } => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Clears the one-profile-at-a-time flag however the request ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

async fn profile(ctx: &Ctx, query: &str) -> Response<Full<Bytes>> {
    let cfg = ctx
        .profile
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !cfg.enabled {
        return text(
            StatusCode::NOT_FOUND,
            "profiling is off: set [profile] enabled = true in the config\n".into(),
        );
    }
    let req = match parse_profile_query(query, &cfg) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if ctx.profiling.swap(true, Ordering::AcqRel) {
        return text(
            StatusCode::CONFLICT,
            "a profile is already running; try again when it ends\n".into(),
        );
    }
    let _busy = Busy(&ctx.profiling);
    let opts = profile::Options {
        frequency: req.hz,
        cpu: None,
        pids: req.pids.clone(),
        cgroup: None,
        include_idle: false,
        sides: Sides {
            kernel: true,
            user: true,
        },
        stack_storage: kscope_common::profile::DEFAULT_STACK_ENTRIES,
        off_cpu: false,
        dwarf: true,
        unwind_rows: kscope_common::profile::DEFAULT_UNWIND_ROWS,
    };
    let stop = ctx.stop.clone();
    let seconds = req.seconds;
    let format = req.format;
    let job = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, (StatusCode, String)> {
        let r = profile::run(&opts, Some(Duration::from_secs(seconds)), &stop, None)
            .map_err(|e| (profile_status(&e), Chain(&e).to_string()))?;
        tracing::info!("profile served: {}", report::summary(&r));
        let mut body = Vec::new();
        match format {
            ProfileFormat::Folded => report::write_folded(&mut body, &r.stacks),
            ProfileFormat::Svg => {
                report::write_svg(&mut body, &r.stacks, "kscope daemon profile", "samples")
            }
            ProfileFormat::Json => serde_json::to_writer(&mut body, &r).map_err(Into::into),
            ProfileFormat::Pprof => profile::pprof::write(&mut body, &r),
        }
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(body)
    });
    match job.await {
        Ok(Ok(body)) => {
            let ct = match format {
                ProfileFormat::Folded => TEXT,
                ProfileFormat::Svg => "image/svg+xml",
                ProfileFormat::Json => "application/json",
                ProfileFormat::Pprof => "application/octet-stream",
            };
            reply(StatusCode::OK, ct, body)
        }
        Ok(Err((status, e))) => text(status, format!("profile failed: {e}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer whose kernel counters cannot be read while `failing` is
    /// set, as when its maps went away under it.
    struct Flaky(Arc<AtomicBool>);

    impl crate::trace::runner::Counting for Flaky {
        fn metric(&self) -> crate::trace::Metric {
            <crate::trace::exec::Exec as crate::trace::EventTracer>::METRIC
        }

        fn scrape(&self) -> Result<crate::trace::runner::LabelledCounts, crate::trace::TraceError> {
            if self.0.load(Ordering::Relaxed) {
                Err(crate::trace::TraceError::Map {
                    map: "EXEC_COUNTS",
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_get_next_key",
                        io_error: std::io::Error::from_raw_os_error(libc::EBADF),
                    }),
                })
            } else {
                Ok((Vec::new(), 0))
            }
        }
    }

    /// A tracer whose counters a scrape could not read makes `/healthz`
    /// unhealthy, naming the tracer and why; the next good scrape clears
    /// it, and so does stopping the tracer.
    #[test]
    fn healthz_names_a_tracer_whose_counters_cannot_be_read() {
        let shared = Shared::new();
        let failing = Arc::new(AtomicBool::new(true));
        shared.lock().tracers.insert(
            "exec",
            Arc::new(Mutex::new(super::super::metrics::TracerSlot::new(
                Box::new(Flaky(failing.clone())),
                8,
            ))),
        );
        let ctx = Ctx::new(
            shared.clone(),
            ProfileConfig::default(),
            &MetricsConfig::default(),
        );
        assert_eq!(health(&ctx).status(), StatusCode::OK, "before any scrape");

        ctx.collector.encode(Format::Text);
        assert_eq!(health(&ctx).status(), StatusCode::SERVICE_UNAVAILABLE);
        let why = problems(&shared);
        let exec = why.get("exec tracer").map(String::as_str);
        assert_eq!(
            exec,
            Some(
                "reading its kernel counters failed: map EXEC_COUNTS of the tracer object: \
                 `bpf_map_get_next_key` failed: Bad file descriptor (os error 9)"
            ),
            "{why:?}"
        );

        failing.store(false, Ordering::Relaxed);
        ctx.collector.encode(Format::Text);
        assert_eq!(
            health(&ctx).status(),
            StatusCode::OK,
            "{:?}",
            problems(&shared)
        );

        failing.store(true, Ordering::Relaxed);
        ctx.collector.encode(Format::Text);
        assert_eq!(health(&ctx).status(), StatusCode::SERVICE_UNAVAILABLE);
        super::super::tracers::Tracers.stop(&["exec"], &shared);
        assert_eq!(
            health(&ctx).status(),
            StatusCode::OK,
            "{:?}",
            problems(&shared)
        );
    }

    #[test]
    fn profile_queries_are_checked_against_the_config() {
        let cfg = ProfileConfig {
            enabled: true,
            max_seconds: 30,
            frequency: 49,
        };
        let r = parse_profile_query("", &cfg).expect("defaults");
        assert_eq!((r.seconds, r.hz, r.format), (10, 49, ProfileFormat::Folded));
        let r = parse_profile_query("seconds=3&hz=99&pid=1&pid=42&format=svg", &cfg)
            .expect("full query");
        assert_eq!(
            r,
            ProfileRequest {
                seconds: 3,
                hz: 99,
                pids: vec![1, 42],
                format: ProfileFormat::Svg
            }
        );
        let r = parse_profile_query("format=pprof", &cfg).expect("pprof");
        assert_eq!(r.format, ProfileFormat::Pprof);
        for (q, needle) in [
            ("seconds=31", "1-30"),
            ("seconds=0", "1-30"),
            ("seconds=x", "whole number"),
            ("hz=0", "hz must be"),
            ("pid=-1", "process id"),
            ("pid=0", "process id"),
            ("pid=4294967295", "1-4194304"),
            ("pid=4194305", "1-4194304"),
            ("format=png", "folded, svg, json or pprof"),
            ("color=red", "unknown parameter"),
        ] {
            let e = parse_profile_query(q, &cfg).expect_err(q);
            assert!(e.contains(needle), "{q}: {e}");
        }
        let short = ProfileConfig {
            max_seconds: 5,
            ..cfg
        };
        assert_eq!(parse_profile_query("", &short).expect("default").seconds, 5);
    }
}
