//! Assembles the gateway and runs it until shutdown.
//!
//! Start order: tenant registry and TLS files → Kafka topics → transactional producer → appender → completion consumer →
//! gRPC and HTTP listeners. Shutdown runs the other way: listeners stop taking calls and
//! finish the ones in flight (including their transactions), then the completion consumer and
//! the appender stop.

use sluice_core::telemetry::Chain;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_core::config::Config;
use sluice_core::kafka::{ensure_topics, TransactionalProducer};
use sluice_core::proto::ingest_service_server::IngestServiceServer;
use sluice_core::proto::schema_service_server::SchemaServiceServer;
use sluice_core::proto::search_service_server::SearchServiceServer;
use sluice_core::tenants::Tenants;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ingest::appender::{self, Appender};
use crate::ingest::completions;
use crate::ingest::hub::Hub;
use crate::ingest::idempotency::Idempotency;
use crate::ingest::recorder::Recorder;
use crate::ingest::service::IngestApi;
use crate::ingest::validate::Validator;
use crate::services::health::HealthChecker;
use crate::services::schemas::SchemaApi;
use crate::services::search::SearchApi;
use crate::tenancy::admission::Admission;
use crate::tenancy::auth::{Authenticator, TENANT_HEADER};
use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::quota::QuotaGate;
use crate::tenancy::tls::{ReloadingTls, TlsFiles};
use crate::transport::connections::{ConnectionLimit, Counted};
use crate::transport::messages::{MessageLimits, ENVELOPE_BYTES};
use crate::transport::observe::RpcMetrics;

pub use sluice_worker::Shared;

/// Largest request message of methods without a limit of their own (searches, schemas,
/// lookups, watch requests).
const MAX_SMALL_REQUEST_BYTES: usize = 1 << 20;

pub struct Gateway;

/// A started gateway.
pub struct RunningGateway {
    pub grpc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    appender: Option<Appender>,
}

impl Gateway {
    pub async fn start(config: &Config, shared: Shared) -> anyhow::Result<RunningGateway> {
        let shutdown = CancellationToken::new();
        let directory = TenantDirectory::load(Tenants::new(shared.db.clone()))
            .await
            .context("reading the tenant registry")?
            .with_grace(Duration::from_millis(config.tenants.grace_period_ms));
        let directory_task = directory.spawn_refresher(
            Duration::from_millis(config.tenants.refresh_interval_ms.max(100)),
            shutdown.clone(),
        );
        let (authenticator, tls) = if config.gateway.dev_tenant_header {
            tracing::warn!(
                "DEVELOPMENT MODE: plaintext, no authentication; the tenant is taken from the {TENANT_HEADER} header. Never expose this gateway."
            );
            (Authenticator::dev_header(directory), None)
        } else {
            let tls = ReloadingTls::load(TlsFiles::from_config(&config.tls)?)?;
            (
                Authenticator::client_certificate(directory, &config.tls.trust_domain),
                Some(tls),
            )
        };
        let mut background = vec![directory_task];
        if let Some(tls) = &tls {
            background.push(tls.clone().spawn_reloader(
                Duration::from_millis(config.tls.reload_interval_ms.max(100)),
                shutdown.clone(),
            ));
        }
        let quotas = Arc::new(if config.shared_quotas() {
            QuotaGate::shared(shared.db.clone())
        } else {
            QuotaGate::new()
        });

        ensure_topics(&config.kafka)
            .await
            .context("creating Kafka topics")?;
        let instance = &config.gateway.instance_id;
        let transactional_id = format!("sluice-gateway-{instance}");
        let producer =
            TransactionalProducer::new(&config.kafka, &transactional_id, appender::STEP_TIMEOUT)
                .await
                .context("initialising the transactional producer")?;
        let (appender, appender_task) = Appender::spawn(
            config.kafka.clone(),
            transactional_id,
            producer.clone(),
            config.gateway.max_records_per_transaction,
        );

        let hub = Hub::new(4096);
        let completions_group = format!("sluice-gateway-{instance}");
        // Lag of the workers' group (the always-on gateway reports it even while no worker
        // runs) and of this gateway's own completions consumer.
        let mut lag_monitors = Vec::new();
        for (group, topic) in [
            (&config.worker.group_id, &config.kafka.documents_topic),
            (&completions_group, &config.kafka.completions_topic),
        ] {
            let (_, task) =
                sluice_core::lag::spawn(&config.kafka, group, topic, LAG_EVERY, shutdown.clone())?;
            lag_monitors.push(task);
        }
        let completions = completions::spawn(
            config.kafka.clone(),
            completions_group,
            shared.db.clone(),
            hub.clone(),
            shutdown.clone(),
        )?;

        let pruner = crate::ingest::retention::spawn(
            shared.db.clone(),
            Duration::from_secs(config.gateway.event_retention_secs),
            Duration::from_secs(config.gateway.idempotency_window_secs),
            shutdown.clone(),
        );

        let (recorder, recorder_task) = Recorder::spawn(shared.db.clone());
        let (idempotency, claims_task) = Idempotency::spawn(
            shared.db.clone(),
            Duration::from_secs(config.gateway.idempotency_window_secs),
        );

        let ingest = IngestApi {
            auth: authenticator.clone(),
            quotas: quotas.clone(),
            validator: Validator::new(shared.schemas.clone(), &config.gateway),
            appender: appender.clone(),
            db: shared.db.clone(),
            hub,
            idempotency,
            recorder,
            max_batch_documents: config.gateway.max_batch_documents,
            shutdown: shutdown.clone(),
        };
        let schema_api = SchemaApi {
            auth: authenticator.clone(),
            schemas: shared.schemas.clone(),
        };
        // The built-in registry's Confluent REST API shares the port (and the client
        // certificate's tenant) with gRPC; Confluent clients speak HTTP/1.1 to it.
        let registry_routes = shared.builtin_registry.clone().map(|registry| {
            let catalog = shared.schemas.clone();
            let api = crate::schema_registry_api::router(
                registry,
                shared.schemas.naming().clone(),
                authenticator.clone(),
                quotas.clone(),
            )
            // A change through REST is seen by the next document at once, as through gRPC.
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let catalog = catalog.clone();
                    async move {
                        let changes = request.method() != axum::http::Method::GET;
                        let response = next.run(request).await;
                        if changes {
                            catalog.forget_latest(None);
                        }
                        response
                    }
                },
            ));
            tonic::service::Routes::from(api)
        });
        let search = SearchApi {
            auth: authenticator.clone(),
            quotas: quotas.clone(),
            embedder: shared.embedder.clone(),
            store: shared.store.clone(),
            max_top_k: config.gateway.max_top_k,
        };

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let checker = HealthChecker::new(
            producer,
            shared.db.clone(),
            shared.store.clone(),
            shared.embedder.clone(),
            authenticator.directory().clone(),
        );
        let health_driver = tokio::spawn(
            checker
                .clone()
                .drive_grpc(health_reporter, shutdown.clone()),
        );

        // Reflection in both versions: grpcurl 1.8 speaks v1alpha, newer clients v1.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_core::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sluice_core::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let grpc_listener = TcpListener::bind(config.gateway.listen)
            .await
            .with_context(|| format!("binding {}", config.gateway.listen))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let health_listener = TcpListener::bind(config.gateway.health_listen)
            .await
            .with_context(|| format!("binding {}", config.gateway.health_listen))?;
        let health_addr = health_listener.local_addr()?;

        let gateway = &config.gateway;
        // Who is calling, and whether they may call now, is decided on the headers, before
        // the body is read. (The services ask again for the quotas in force; that is a
        // lookup in the same snapshot.)
        let admission = Admission::new(authenticator.clone(), quotas.clone());
        let limits = message_limits(gateway);
        let largest = limits.largest();
        let mut server = tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(gateway.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(gateway.keepalive_interval_secs)))
            .http2_keepalive_timeout(Some(Duration::from_secs(gateway.keepalive_timeout_secs)))
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .layer(RpcMetrics::new(&[
                sluice_core::proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ]))
            .layer(admission)
            .layer(limits);
        let router = server
            .add_routes(registry_routes.unwrap_or_default())
            .add_service(IngestServiceServer::new(ingest).max_decoding_message_size(largest))
            .add_service(SearchServiceServer::new(search).max_decoding_message_size(largest))
            .add_service(SchemaServiceServer::new(schema_api).max_decoding_message_size(largest))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let connections = ConnectionLimit::new(gateway.max_connections);
        let stop = shutdown.clone();
        let grpc = tokio::spawn(async move {
            let served = match tls {
                Some(tls) => {
                    let incoming = crate::tenancy::tls::incoming(
                        grpc_listener,
                        tls,
                        connections,
                        stop.clone(),
                    );
                    router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                }
                None => {
                    let incoming =
                        TcpListenerStream::new(grpc_listener).filter_map(move |accepted| {
                            match accepted {
                                Ok(tcp) => {
                                    connections.admit(&tcp).map(|p| Ok(Counted::new(tcp, p)))
                                }
                                Err(error) => Some(Err(error)),
                            }
                        });
                    router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                }
            };
            if let Err(error) = served {
                tracing::error!(error = %Chain(&error), "gRPC server failed");
            }
        });
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            let server = axum::serve(health_listener, checker.router())
                .with_graceful_shutdown(http_shutdown.cancelled_owned());
            if let Err(error) = server.await {
                tracing::error!(error = %Chain(&error), "health server failed");
            }
        });
        tracing::info!(%grpc_addr, %health_addr, "gateway serving");
        Ok(RunningGateway {
            grpc_addr,
            health_addr,
            shutdown,
            servers: vec![grpc, http],
            background: {
                background.extend([
                    completions,
                    pruner,
                    health_driver,
                    appender_task,
                    recorder_task,
                    claims_task,
                ]);
                background.extend(lag_monitors);
                background
            },
            appender: Some(appender),
        })
    }
}

impl RunningGateway {
    /// Stops taking calls, finishes those in flight, then stops the background tasks.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
        // The services (and their appender handles) are gone with the servers; dropping the
        // last handle lets the appender finish and stop.
        self.appender.take();
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        tracing::info!("gateway stopped");
    }

    /// A token that, when cancelled, starts the same shutdown (e.g. from a signal handler).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// How often consumer lag is measured.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Each method's largest request message, from the configured document and request limits.
fn message_limits(gateway: &sluice_core::config::GatewayConfig) -> MessageLimits {
    let ceiling = gateway.max_request_bytes;
    let document = gateway.max_payload_bytes.saturating_add(ENVELOPE_BYTES);
    MessageLimits::new(MAX_SMALL_REQUEST_BYTES.min(ceiling))
        .with("/sluice.v1.IngestService/Ingest", document.min(ceiling))
        .with("/sluice.v1.IngestService/IngestBatch", ceiling)
}
