//! One configuration for every Sluice binary.
//!
//! Sources, later ones winning: built-in defaults (documented on each field), a TOML file
//! (`--config`, or `sluice.toml` when present), environment variables `SLUICE_<SECTION>__<KEY>`
//! (e.g. `SLUICE_KAFKA__BOOTSTRAP_SERVERS`; `SLUICE_MODEL_DIR` for `model.dir`), then
//! command-line flags. `deploy/sluice.example.toml`
//! shows every key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where embedded state lives: the SQLite database and the qdrant-edge store. Default `.sluice`.
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    pub gateway: GatewayConfig,
    pub worker: WorkerConfig,
    pub database: DatabaseConfig,
    pub vector_store: VectorStoreConfig,
    pub model: ModelConfig,
    pub chunking: ChunkingConfig,
    pub tls: TlsConfig,
    pub tenants: TenantsConfig,
    pub schemas: SchemasConfig,
    pub log: LogConfig,
    pub metrics: crate::metrics::MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".sluice"),
            kafka: KafkaConfig::default(),
            gateway: GatewayConfig::default(),
            worker: WorkerConfig::default(),
            database: DatabaseConfig::default(),
            vector_store: VectorStoreConfig::default(),
            model: ModelConfig::default(),
            chunking: ChunkingConfig::default(),
            tls: TlsConfig::default(),
            tenants: TenantsConfig::default(),
            schemas: SchemasConfig::default(),
            log: LogConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Document records, keyed by tenant and document id. Default `sluice.documents`.
    pub documents_topic: String,
    /// Default 12, room for up to 12 workers (each partition is one worker's at a time): one
    /// document's records stay in one partition, documents spread over all. Partitions can be
    /// added later, never removed (docs/operations.md, "Adding partitions").
    pub documents_partitions: i32,
    /// Completion events from workers. Default `sluice.completions`, 3 partitions.
    pub completions_topic: String,
    pub completions_partitions: i32,
    /// Records that could not be processed. Default `sluice.dead-letters`, 1 partition.
    pub dead_letter_topic: String,
    pub dead_letter_partitions: i32,
    /// Default 1 (a single local broker).
    pub replication_factor: i32,
    /// Create missing topics at start. Default true.
    pub create_topics: bool,
    /// librdkafka properties passed through untouched to every client (e.g. security.protocol).
    pub properties: BTreeMap<String, String>,
    /// Largest record Sluice writes: derived from `gateway.max_payload_bytes` (plus
    /// [`RECORD_ENVELOPE_BYTES`]) when the configuration is loaded, so that every document the
    /// gateway accepts fits in one record. The producers' `message.max.bytes` and the topics'
    /// `max.message.bytes` follow it. Not set directly.
    #[serde(skip)]
    pub max_record_bytes: usize,
}

/// What a document record holds besides the document's payload: ids, attributes, headers.
/// Requests are refused before they reach Kafka when their record would not fit.
pub const RECORD_ENVELOPE_BYTES: usize = 128 << 10;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            documents_topic: "sluice.documents".into(),
            documents_partitions: 12,
            completions_topic: "sluice.completions".into(),
            completions_partitions: 3,
            dead_letter_topic: "sluice.dead-letters".into(),
            dead_letter_partitions: 1,
            replication_factor: 1,
            create_topics: true,
            properties: BTreeMap::new(),
            max_record_bytes: GatewayConfig::default().max_payload_bytes + RECORD_ENVELOPE_BYTES,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// HTTP `/healthz` listen address. Default `127.0.0.1:8080`.
    pub health_listen: SocketAddr,
    /// Names this instance: its transactional.id is `sluice-gateway-<instance_id>`, so it must
    /// be unique per running gateway and stable across its restarts. Default: the host name.
    pub instance_id: String,
    /// DEV ONLY: serve plaintext and take the tenant from the `x-sluice-tenant` request header,
    /// with no authentication. Default false: TLS with client certificates ([`TlsConfig`]).
    pub dev_tenant_header: bool,
    /// Largest text accepted in one document, in bytes. Default 1 MiB.
    pub max_text_bytes: usize,
    /// Largest payload accepted in one document, in bytes. Default 4 MiB.
    pub max_payload_bytes: usize,
    /// Most documents in one IngestBatch. Default 1000.
    pub max_batch_documents: usize,
    /// Largest IngestBatch request, in bytes; also the ceiling for every other request. An
    /// Ingest request may be `max_payload_bytes` plus 64 KiB, any other 1 MiB. Checked on the
    /// message's length prefix, before the message is read. Default 16 MiB.
    pub max_request_bytes: usize,
    /// Most connections open at once; more are closed as they arrive. Default 1024.
    pub max_connections: usize,
    /// Most concurrent calls (HTTP/2 streams) on one connection. Default 128.
    pub max_streams_per_connection: u32,
    /// The gateway pings idle HTTP/2 connections this often, in seconds, and closes those
    /// that do not answer within `keepalive_timeout_secs`. Default 30 and 10.
    pub keepalive_interval_secs: u64,
    pub keepalive_timeout_secs: u64,
    /// Largest top_k a search may ask for. Default 100.
    pub max_top_k: u32,
    /// Requests arriving together share one Kafka transaction; at most this many records.
    /// Default 500.
    pub max_records_per_transaction: usize,
    /// How long a repeated request is recognised, in seconds: one with the same idempotency
    /// key, or without a key the same document with the same content, returns the first
    /// ingestion instead of writing again. Default 86400 (a day).
    pub idempotency_window_secs: u64,
    /// How long ingestion events are kept for resuming watch streams, in seconds; a cursor
    /// older than that can no longer resume. Default 604800 (a week).
    pub event_retention_secs: u64,
    /// Enforce tenants' rates in total across every gateway sharing the database (token
    /// buckets in the database, leased in slices), rather than per gateway. Default: on when
    /// the database is PostgreSQL (several gateways), off on SQLite (one process).
    pub shared_quotas: Option<bool>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".parse().expect("valid"),
            health_listen: "127.0.0.1:8080".parse().expect("valid"),
            instance_id: default_instance_id(),
            dev_tenant_header: false,
            max_text_bytes: 1 << 20,
            max_payload_bytes: 4 << 20,
            max_batch_documents: 1000,
            max_request_bytes: 16 << 20,
            max_connections: 1024,
            max_streams_per_connection: 128,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            max_top_k: 100,
            max_records_per_transaction: 500,
            idempotency_window_secs: 86_400,
            event_retention_secs: 604_800,
            shared_quotas: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Consumer group of all workers. Default `sluice-workers`.
    pub group_id: String,
    /// Names this worker: its transactional.id is `sluice-worker-<instance_id>`. Default: host name.
    pub instance_id: String,
    /// Attempts at indexing one record before it is FAILED. Default 3.
    pub max_attempts: u32,
    /// First retry delay in milliseconds, doubling each time. Default 200.
    pub retry_initial_ms: u64,
    /// `sluice-worker`'s health port: `/livez`, `/readyz`, `/healthz`, `/metrics`. Default
    /// `127.0.0.1:8081` (a standalone gateway's worker reports on the gateway's port).
    pub health_listen: SocketAddr,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            group_id: "sluice-workers".into(),
            instance_id: default_instance_id(),
            max_attempts: 3,
            retry_initial_ms: 200,
            health_listen: "127.0.0.1:8081".parse().expect("valid"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// sea-orm URL, e.g. `postgres://user@127.0.0.1/sluice`. Default: SQLite at
    /// `<data_dir>/sluice.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VectorStoreKind {
    /// qdrant-edge, in-process, under `<data_dir>/vectors`. Gateway and worker must share the
    /// process (`standalone`).
    Edge,
    /// A Qdrant server through qdrant-client.
    Qdrant,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VectorStoreConfig {
    /// `edge` (default) or `qdrant`.
    pub kind: VectorStoreKind,
    /// Qdrant gRPC URL, e.g. `http://127.0.0.1:6334` (kind = qdrant).
    pub url: String,
    pub api_key: Option<String>,
    /// Default `sluice_chunks`.
    pub collection: String,
}

impl Default for VectorStoreConfig {
    fn default() -> Self {
        Self {
            kind: VectorStoreKind::Edge,
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            collection: "sluice_chunks".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory with model.safetensors, tokenizer.json and config.json of all-MiniLM-L6-v2.
    /// Default `$HOME/.cache/sluice/model` (where `deploy/dev/install` puts it).
    pub dir: PathBuf,
    /// Chunks tokenised at once (the model runs shards of about 256 tokens, whatever this
    /// is). Default 16.
    pub max_batch: usize,
    /// Arithmetic of the model's linear layers: `fp32` (default) or `int8` (faster, needs a
    /// CPU with AVX-512 VNNI; vectors within cosine 0.99 of fp32). Every process that embeds
    /// into one store should use the same one, so that queries and chunks agree.
    pub precision: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        Self {
            dir: home.join(".cache/sluice/model"),
            max_batch: 16,
            precision: "fp32".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Chunk size in model tokens. Default 250 (the model reads 256 with [CLS] and [SEP]).
    pub max_tokens: usize,
    /// Tokens shared by consecutive chunks. Default 32.
    pub overlap_tokens: usize,
    /// Most tokens a worker indexes in one document; a longer text ends FAILED, saying so.
    /// Bounds the work (and the time a partition waits) per record. Default 262144 (about
    /// 1 MiB of English, the gateway's default `max_text_bytes`; ≈ 90 s on 2 cores).
    pub max_document_tokens: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            max_tokens: 250,
            overlap_tokens: 32,
            max_document_tokens: 262_144,
        }
    }
}

/// The gRPC port's TLS. Client certificates are required; each maps to a tenant (see
/// `gateway/src/tenancy/auth.rs`). The three files are re-read when they change, without a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM bundle) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// A client certificate with the URI SAN `spiffe://<trust_domain>/tenant/<id>` belongs to
    /// tenant `<id>`. Default `sluice.local`.
    pub trust_domain: String,
    /// How often the files are checked for changes, in milliseconds. Default 2000.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            trust_domain: "sluice.local".into(),
            reload_interval_ms: 2000,
        }
    }
}

/// The tenant registry (tenants, certificate bindings, revocations) lives in the database; each
/// gateway keeps a copy and refreshes it, so changes reach every instance within seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantsConfig {
    /// How often the copy is refreshed, in milliseconds. Default 1000.
    pub refresh_interval_ms: u64,
    /// How long the copy is trusted when the database cannot be read, in milliseconds; after
    /// that every call is refused UNAVAILABLE (a revocation made meanwhile would go unseen)
    /// and `/healthz` says why. Default 30000.
    pub grace_period_ms: u64,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 1000,
            grace_period_ms: 30_000,
        }
    }
}

/// Tenants' document schemas: which registry holds them, and how tenants' schema names map to
/// its subjects.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemasConfig {
    /// A Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Karapace,
    /// Redpanda), e.g. `https://registry:8081`. Unset (default): the built-in registry, stored in
    /// the database and served by the gateway on its own address.
    pub url: Option<String>,
    /// Basic auth to the registry.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA bundle the registry's certificate must chain to (default: the system's roots).
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for a registry that wants mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Per-request timeout to the registry, in milliseconds. Default 5000.
    pub timeout_ms: u64,
    /// Subject of a tenant's schema: `{tenant}` then `{name}`. Default `{tenant}.{name}-value`.
    pub subject_template: String,
    /// The schema a document uses when it names none. Default `document`.
    pub default_name: String,
    /// Register `schemas/document.avsc` as a tenant's default schema the first time the tenant
    /// ingests without one. Default true.
    pub auto_register_default: bool,
    /// The built-in registry's global compatibility level. Default `BACKWARD`.
    pub default_compatibility: String,
    /// How long a subject's latest version is trusted before asking the registry again, in
    /// milliseconds. Default 5000. Schemas by id are cached for good (ids never change).
    pub latest_ttl_ms: u64,
    /// The largest schema text a tenant may register, in bytes. Default 65536.
    pub max_schema_bytes: usize,
    /// How deeply a registered schema's types may nest (fields, items, values, union
    /// branches). Default 32.
    pub max_schema_depth: usize,
    /// Record fields and enum symbols in one registered schema. Default 1000.
    pub max_schema_fields: usize,
    /// Subjects one tenant may hold in the built-in registry. Default 100.
    pub max_subjects_per_tenant: usize,
    /// Versions one subject may hold in the built-in registry. Default 100.
    pub max_versions_per_subject: usize,
}

impl SchemasConfig {
    pub fn limits(&self) -> crate::schema_registry::RegistrationLimits {
        crate::schema_registry::RegistrationLimits {
            max_schema_bytes: self.max_schema_bytes,
            max_schema_depth: self.max_schema_depth,
            max_schema_fields: self.max_schema_fields,
            max_subjects_per_tenant: self.max_subjects_per_tenant,
            max_versions_per_subject: self.max_versions_per_subject,
        }
    }
}

impl Default for SchemasConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            ca: None,
            client_cert: None,
            client_key: None,
            timeout_ms: 5000,
            subject_template: "{tenant}.{name}-value".into(),
            default_name: "document".into(),
            auto_register_default: true,
            default_compatibility: "BACKWARD".into(),
            latest_ttl_ms: 5000,
            max_schema_bytes: 64 * 1024,
            max_schema_depth: 32,
            max_schema_fields: 1000,
            max_subjects_per_tenant: 100,
            max_versions_per_subject: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set. Default `info`, without qdrant-edge's
    /// "Feature flags not initialized!" warning, which it logs several times per optimisation
    /// of the embedded store and which nothing outside the engine can set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info,qdrant_edge::common::flags=error".into(),
        }
    }
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Defaults, then the file (if given, it must exist; else `sluice.toml` if present), then
    /// `SLUICE_*` variables, then `overrides` (command-line flags, already serialised).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = match file {
            Some(path) => figment.merge(Toml::file_exact(path)),
            None => figment.merge(Toml::file("sluice.toml")),
        };
        figment
            // Only sectioned names (and data_dir): other SLUICE_* variables belong to the
            // scripts (SLUICE_CACHE, SLUICE_DEV_*), not to the configuration.
            .merge(
                Env::prefixed("SLUICE_")
                    .filter(|key| key.as_str().contains("__") || key == "data_dir")
                    .split("__"),
            )
            // Where deploy/dev/install put the model, shared with the scripts and tests.
            .merge(
                Env::raw()
                    .only(&["SLUICE_MODEL_DIR"])
                    .map(|_| "model.dir".into()),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map(Config::with_derived_limits)
            .map_err(|e| ConfigError(Box::new(e)))
    }

    /// Sets the limits that follow from others, so that they cannot disagree: the largest
    /// Kafka record from the largest document payload.
    pub fn with_derived_limits(mut self) -> Config {
        self.kafka.max_record_bytes = self
            .gateway
            .max_payload_bytes
            .saturating_add(RECORD_ENVELOPE_BYTES);
        self
    }

    /// The database URL, defaulting to SQLite in the data dir (created when missing).
    /// Whether gateways share tenants' rates through the database (`gateway.shared_quotas`).
    pub fn shared_quotas(&self) -> bool {
        self.gateway
            .shared_quotas
            .unwrap_or_else(|| self.database_url().starts_with("postgres"))
    }

    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("sluice.db").display()
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's own signature
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "data_dir = \"/d\"\n[kafka]\nbootstrap_servers = \"file:1\"\n[kafka.properties]\n\"linger.ms\" = \"7\"\n[gateway]\nmax_top_k = 5\n",
            )?;
            jail.set_env("SLUICE_KAFKA__BOOTSTRAP_SERVERS", "env:2");
            jail.set_env("SLUICE_GATEWAY__MAX_TOP_K", "6");
            jail.set_env("SLUICE_MODEL_DIR", "/models/minilm");
            jail.set_env("SLUICE_CACHE", "/not/configuration");
            let flags = serde_json::json!({ "gateway": { "max_top_k": 9 } });
            let config = Config::load(Some(Path::new("s.toml")), flags).expect("loads");
            assert_eq!(config.data_dir, PathBuf::from("/d"));
            assert_eq!(config.kafka.bootstrap_servers, "env:2");
            assert_eq!(config.kafka.properties["linger.ms"], "7");
            assert_eq!(config.gateway.max_top_k, 9);
            assert_eq!(config.kafka.documents_partitions, 12);
            assert_eq!(config.model.dir, PathBuf::from("/models/minilm"));
            Ok(())
        });
    }

    #[test]
    fn the_example_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sluice.example.toml");
        // In a jail with no environment: the other tests set SLUICE_* variables, and the
        // machine may have its own (SLUICE_MODEL_DIR).
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let config = Config::load(Some(&path), serde_json::json!({})).expect("example parses");
            assert_eq!(config, Config::default());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("s.toml", "[kafka]\nbootstrap = \"typo\"\n")?;
            assert!(Config::load(Some(Path::new("s.toml")), serde_json::json!({})).is_err());
            Ok(())
        });
    }
}
