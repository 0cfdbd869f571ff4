//! Health: the standard gRPC health service and an HTTP `/healthz` reporting each dependency
//! (broker, database, vector store, model).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use sluice_core::health::{Dependency, HealthReport, Status};
use sluice_core::kafka::TransactionalProducer;
use sluice_core::proto::ingest_service_server::IngestServiceServer;
use sluice_core::proto::schema_service_server::SchemaServiceServer;
use sluice_core::proto::search_service_server::SearchServiceServer;
use sluice_core::vector::VectorStore;
use sluice_embed::Embedder;
use sluice_worker::health::ModelCheck;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::ingest::service::IngestApi;
use crate::services::schemas::SchemaApi;
use crate::services::search::SearchApi;
use crate::tenancy::directory::TenantDirectory;

/// How often the gRPC health status is refreshed.
const REFRESH: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct HealthChecker {
    producer: TransactionalProducer,
    db: DatabaseConnection,
    store: Arc<dyn VectorStore>,
    directory: TenantDirectory,
    /// The model runs at most every 30 s for health, whoever polls.
    model: ModelCheck,
}

impl HealthChecker {
    pub fn new(
        producer: TransactionalProducer,
        db: DatabaseConnection,
        store: Arc<dyn VectorStore>,
        embedder: Arc<Embedder>,
        directory: TenantDirectory,
    ) -> Self {
        Self {
            producer,
            db,
            store,
            directory,
            model: ModelCheck::new(embedder),
        }
    }

    pub async fn report(&self) -> HealthReport {
        let broker = self.producer.probe().await;
        let database = sluice_core::db::probe(&self.db).await;
        let store = sluice_core::vector::health_detail(self.store.as_ref()).await;
        let model = self.model.check().await;
        let tenants = self
            .directory
            .current()
            .map(|_| format!("read {} ms ago", self.directory.age().as_millis()))
            .map_err(|stale| stale.to_string());
        HealthReport::new(BTreeMap::from([
            ("broker".to_owned(), Dependency::from_result(broker)),
            ("database".to_owned(), Dependency::from_result(database)),
            ("vector_store".to_owned(), Dependency::from_result(store)),
            ("model".to_owned(), Dependency::from_result(model)),
            (
                "tenant_registry".to_owned(),
                Dependency::from_result(tenants),
            ),
        ]))
    }

    /// Keeps the gRPC health service in step with the dependencies until shutdown, when every
    /// service turns NOT_SERVING so load balancers drain this instance.
    pub async fn drive_grpc(self, reporter: HealthReporter, shutdown: CancellationToken) {
        loop {
            let serving = self.report().await.status == Status::Up;
            set_all(&reporter, serving).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REFRESH) => {}
            }
        }
        set_all(&reporter, false).await;
    }

    /// `GET /healthz`: 200 with the report when all is up, 503 with it otherwise; `/readyz`
    /// the same without the report, `/livez` 200 while the process answers; `GET /metrics`:
    /// the process's metrics in the Prometheus text format.
    pub fn router(self) -> Router {
        let ready = self.clone();
        Router::new()
            .route("/metrics", get(sluice_worker::health::metrics))
            .route("/livez", get(|| async { "live" }))
            // Ready to take traffic: every dependency answers (what gRPC health reports).
            .route(
                "/readyz",
                get(move || {
                    let checker = ready.clone();
                    async move {
                        match checker.report().await.status {
                            Status::Up => (StatusCode::OK, "ready"),
                            Status::Down => {
                                (StatusCode::SERVICE_UNAVAILABLE, "not ready: see /healthz")
                            }
                        }
                    }
                }),
            )
            .route(
                "/healthz",
                get(move || {
                    let checker = self.clone();
                    async move {
                        let report = checker.report().await;
                        let code = if report.status == Status::Up {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        (code, Json(report))
                    }
                }),
            )
    }
}

async fn set_all(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <IngestServiceServer<IngestApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    reporter
        .set_service_status(
            <SearchServiceServer<SearchApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    reporter
        .set_service_status(
            <SchemaServiceServer<SchemaApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
