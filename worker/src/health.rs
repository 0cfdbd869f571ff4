//! The worker's health port, and what the gateway's shares with it.
//!
//! - `/livez`: the process answers (restart it when it does not).
//! - `/readyz`: it does its job: the model is loaded (it is, once the process serves) and the
//!   consumer holds partitions. A worker beyond the partition count holds none: it is idle, and
//!   says so, rather than ready.
//! - `/healthz`: each dependency (vector store, model, broker, schema registry as advisory),
//!   the partitions assigned and their lag.
//! - `/metrics`: the process's metrics in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sluice_core::health::{Dependency, HealthReport, Status};
use sluice_core::lag::{LagReport, PartitionLag};
use sluice_core::schema_registry::SchemaCatalog;
use sluice_core::telemetry::Chain;
use sluice_core::vector::VectorStore;
use sluice_embed::Embedder;

use crate::consumer::{Assignment, Pause};

/// How long the model's check stands: it runs the model, which a health endpoint must not do
/// on every hit (a client polling it would take cores from the work).
const MODEL_CHECK_EVERY: Duration = Duration::from_secs(30);

/// When the model was last checked, and what the check said.
type LastCheck = Option<(Instant, Result<String, String>)>;

/// That the model still embeds, checked at most every [`MODEL_CHECK_EVERY`], one check at a
/// time. Cheap to clone.
#[derive(Clone)]
pub struct ModelCheck {
    embedder: Arc<Embedder>,
    last: Arc<tokio::sync::Mutex<LastCheck>>,
}

impl ModelCheck {
    pub fn new(embedder: Arc<Embedder>) -> Self {
        Self {
            embedder,
            last: Arc::default(),
        }
    }

    pub async fn check(&self) -> Result<String, String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < MODEL_CHECK_EVERY {
                return result.clone();
            }
        }
        let embedder = self.embedder.clone();
        let result = tokio::task::spawn_blocking(move || {
            embedder
                .embed(&["health"])
                .map(|v| format!("{} dimensions", v[0].len()))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| Chain(&e).to_string()));
        *last = Some((Instant::now(), result.clone()));
        result
    }
}

/// `GET /metrics`: the process's metrics, with the Prometheus text format's content type.
pub async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sluice_core::metrics::render(),
    )
}

/// What a worker's health endpoints look at.
#[derive(Clone)]
pub struct WorkerHealth {
    pub store: Arc<dyn VectorStore>,
    pub model: ModelCheck,
    pub schemas: Arc<SchemaCatalog>,
    pub assignment: Assignment,
    /// Set while the worker waits for a dependency that is down.
    pub pause: Pause,
    /// The group's lag on the documents topic (all partitions, measured by this worker).
    pub lag: LagReport,
}

/// The `/healthz` body: the dependency report, then what this worker holds.
#[derive(Serialize)]
struct WorkerReport {
    #[serde(flatten)]
    health: HealthReport,
    /// Partitions of the documents topic this worker consumes; empty when it is idle.
    assigned_partitions: Vec<i32>,
    /// Lag of each partition this worker holds.
    lag: BTreeMap<i32, PartitionLag>,
    /// Advisory: a registry outage stops only records whose schema is not cached yet.
    schema_registry: String,
}

impl WorkerHealth {
    async fn report(&self) -> WorkerReport {
        let store = sluice_core::vector::health_detail(self.store.as_ref()).await;
        let model = self.model.check().await;
        let assigned = self.assignment.partitions();
        let broker = match self.assignment.last_poll() {
            Some(age) if age < Duration::from_secs(30) => {
                Ok(format!("polled {} ms ago", age.as_millis()))
            }
            Some(age) => Err(format!("no poll for {} s", age.as_secs())),
            None => Err("not consuming yet".to_owned()),
        };
        let indexing = match self.pause.reason() {
            Some((reason, since)) => Err(format!(
                "paused for {} s, consuming nothing until it passes: {reason}",
                since.as_secs()
            )),
            None => Ok("not paused".to_owned()),
        };
        let lag = self.lag.lock().expect("lag report lock").clone();
        WorkerReport {
            health: HealthReport::new(BTreeMap::from([
                ("vector_store".to_owned(), Dependency::from_result(store)),
                ("model".to_owned(), Dependency::from_result(model)),
                ("broker".to_owned(), Dependency::from_result(broker)),
                ("indexing".to_owned(), Dependency::from_result(indexing)),
            ])),
            lag: lag
                .into_iter()
                .filter(|(partition, _)| assigned.contains(partition))
                .collect(),
            assigned_partitions: assigned,
            schema_registry: self.schemas.registry().describe(),
        }
    }

    pub fn router(self) -> Router {
        let ready = self.clone();
        let healthy = self;
        Router::new()
            .route("/livez", get(|| async { "live" }))
            .route(
                "/readyz",
                get(move || {
                    let assigned = ready.assignment.partitions();
                    async move {
                        if assigned.is_empty() {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                "idle: no partitions assigned (more workers than partitions, or \
                                 joining the group)"
                                    .to_owned(),
                            )
                        } else {
                            (StatusCode::OK, format!("ready: partitions {assigned:?}"))
                        }
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let checker = healthy.clone();
                    async move {
                        let report = checker.report().await;
                        let code = if report.health.status == Status::Up {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        (code, Json(report))
                    }
                }),
            )
            .route("/metrics", get(metrics))
    }
}
