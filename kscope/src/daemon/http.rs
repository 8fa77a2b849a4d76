//! The daemon's HTTP endpoints: `/metrics`, `/healthz` and `/profile`.

use std::{
    convert::Infallible,
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
    header::CONTENT_TYPE,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::{
    config::{MAX_FREQUENCY, ProfileConfig},
    metrics::{self, Shared},
};
use crate::profile::{self, report, symbolize::Sides};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// What the handlers share.
pub struct Ctx {
    pub registry: Registry,
    pub shared: Arc<Shared>,
    /// Swapped on reload.
    pub profile: Mutex<ProfileConfig>,
    /// Set while a profile runs: one at a time.
    profiling: AtomicBool,
    /// Set on shutdown, to end a running profile early.
    pub stop: Arc<AtomicBool>,
}

impl Ctx {
    pub fn new(shared: Arc<Shared>, profile: ProfileConfig) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics::KscopeCollector(shared.clone())));
        Self {
            registry,
            shared,
            profile: Mutex::new(profile),
            profiling: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>) {
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
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, &req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
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
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => match metrics::render(&ctx.registry) {
            Ok(body) => reply(StatusCode::OK, OPENMETRICS, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n".into(),
            ),
        },
        "/healthz" => health(ctx),
        "/profile" => profile(ctx, req.uri().query().unwrap_or("")).await,
        "/" => text(
            StatusCode::OK,
            "kscope daemon: /metrics, /healthz, /profile?seconds=N[&hz=F][&pid=P...][&format=folded|svg|json]\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Healthy when every tracer runs and every managed interface still has
/// the firewall attached (someone may have run `kscope fw detach`, or the
/// interface may have gone away).
fn health(ctx: &Ctx) -> Response<Full<Bytes>> {
    let (ifaces, mut problems) = {
        let s = ctx.shared.lock();
        (s.fw_ifaces.clone(), s.problems.clone())
    };
    for iface in ifaces {
        let why = match crate::firewall::status_of(&iface) {
            Ok(st) if st.attached => continue,
            Ok(_) => "the interface is gone".to_owned(),
            Err(e) => format!("not attached ({e})"),
        };
        problems.insert(format!("firewall on {iface}"), why);
    }
    if problems.is_empty() {
        return text(StatusCode::OK, "ok\n".into());
    }
    let why: Vec<String> = problems.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("unhealthy: {}\n", why.join("; ")),
    )
}

/// Output of a `/profile` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileFormat {
    Folded,
    Svg,
    Json,
}

/// A `/profile` request, checked against the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileRequest {
    pub seconds: u64,
    pub hz: u64,
    pub pids: Vec<u32>,
    pub format: ProfileFormat,
}

/// Parses a `/profile` query string (`seconds=N&hz=F&pid=P&format=F`).
///
/// # Errors
/// A one-line reason for a 400 reply.
pub fn parse_profile_query(query: &str, cfg: &ProfileConfig) -> Result<ProfileRequest, String> {
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
                    .map_err(|_| format!("pid must be a process id, not {v:?}"))?,
            ),
            "format" => {
                req.format = match v {
                    "folded" => ProfileFormat::Folded,
                    "svg" => ProfileFormat::Svg,
                    "json" => ProfileFormat::Json,
                    _ => return Err(format!("format must be folded, svg or json, not {v:?}")),
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
        include_idle: false,
        sides: Sides {
            kernel: true,
            user: true,
        },
        stack_storage: kscope_common::profile::DEFAULT_STACK_ENTRIES,
    };
    let stop = ctx.stop.clone();
    let seconds = req.seconds;
    let format = req.format;
    let job = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let r = profile::run(&opts, Some(Duration::from_secs(seconds)), &stop, None)
            .map_err(|e| e.to_string())?;
        tracing::info!("profile served: {}", report::summary(&r));
        let mut body = Vec::new();
        match format {
            ProfileFormat::Folded => report::write_folded(&mut body, &r.stacks),
            ProfileFormat::Svg => report::write_svg(&mut body, &r.stacks, "kscope daemon profile"),
            ProfileFormat::Json => serde_json::to_writer(&mut body, &r).map_err(Into::into),
        }
        .map_err(|e| e.to_string())?;
        Ok(body)
    });
    match job.await {
        Ok(Ok(body)) => {
            let ct = match format {
                ProfileFormat::Folded => TEXT,
                ProfileFormat::Svg => "image/svg+xml",
                ProfileFormat::Json => "application/json",
            };
            reply(StatusCode::OK, ct, body)
        }
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}\n"),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile failed: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (q, needle) in [
            ("seconds=31", "1-30"),
            ("seconds=0", "1-30"),
            ("seconds=x", "whole number"),
            ("hz=0", "hz must be"),
            ("pid=-1", "process id"),
            ("format=png", "folded, svg or json"),
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
