//! Schemas per tenant, end to end: registered through gRPC, the Confluent REST API (with
//! schema_registry_converter and Confluent's Python client) and an external registry by URL;
//! documents validated against them, written in the Confluent wire format, decoded by id.

use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::Message;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use sluice_core::proto::document::Payload;
use sluice_core::proto::schema_service_client::SchemaServiceClient;
use sluice_core::proto::{
    CheckCompatibilityRequest, Document, GetSchemaRequest, IngestRequest,
    ListSchemaVersionsRequest, ListSchemasRequest, RegisterSchemaRequest, SearchRequest,
};
use sluice_core::schema_registry::wire;
use sluice_tests::{as_tenant, bad_request_fields, ended, read_topic, state, Database, Stack};
use tonic::transport::Channel;
use tonic::Code;

const TENANT: &str = "acme";
const WAIT: Duration = Duration::from_secs(120);

fn article(fields: &str) -> String {
    format!(
        r#"{{"type": "record", "name": "Article", "namespace": "com.acme", "fields": [
            {{"name": "headline", "type": "string", "sluice.role": "attribute"}},
            {{"name": "body", "type": "string", "sluice.role": "text"}}{fields}]}}"#
    )
}

fn v1() -> String {
    article("")
}

/// v1 plus a field with a default: compatible both ways.
fn v2() -> String {
    article(r#", {"name": "lang", "type": "string", "default": "en", "sluice.role": "attribute"}"#)
}

/// `headline` changes type: readers of v2 cannot read it.
fn v3_incompatible() -> String {
    r#"{"type": "record", "name": "Article", "namespace": "com.acme", "fields": [
        {"name": "headline", "type": "long"},
        {"name": "body", "type": "string", "sluice.role": "text"}]}"#
        .into()
}

fn json_article(id: &str, json: serde_json::Value, version: i32) -> Document {
    Document {
        document_id: id.into(),
        payload: Some(Payload::AvroJson(json.to_string())),
        schema: "article".into(),
        schema_version: version,
        ..Default::default()
    }
}

async fn register(
    schemas: &mut SchemaServiceClient<Channel>,
    tenant: &str,
    definition: String,
) -> Result<sluice_core::proto::Schema, tonic::Status> {
    schemas
        .register_schema(as_tenant(
            tenant,
            RegisterSchemaRequest {
                name: "article".into(),
                definition,
            },
        ))
        .await
        .map(|r| r.into_inner().schema.expect("schema"))
}

async fn ingest_and_wait(stack: &Stack, document: Document) -> sluice_core::proto::Ingestion {
    let mut ingest = stack.ingest_client().await;
    let accepted = ingest
        .ingest(as_tenant(
            TENANT,
            IngestRequest {
                document: Some(document),
                ..Default::default()
            },
        ))
        .await
        .expect("ingest")
        .into_inner()
        .ingestion
        .expect("ingestion");
    ended(&ingest, TENANT, &accepted.ingestion_id, WAIT).await
}

/// A registry client of the gateway's built-in registry, acting for `tenant` (development
/// mode: the basic-auth user names the tenant).
fn sr_settings(stack: &Stack, tenant: &str) -> SrSettings {
    // reqwest is built without a crypto provider of its own; the process's is ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    SrSettings::new_builder(stack.grpc_url())
        .set_basic_authorization(tenant, None)
        .build()
        .expect("registry client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_evolve_and_every_version_stays_readable() {
    let stack = Stack::start(Database::Sqlite).await;
    let mut schemas = SchemaServiceClient::new(stack.channel().await);

    // v1, and a document written with it.
    let first = register(&mut schemas, TENANT, v1())
        .await
        .expect("register v1");
    assert_eq!(
        (first.version, first.subject.as_str()),
        (1, "acme.article-value")
    );
    assert_eq!(first.text_field, "body");
    assert_eq!(first.attribute_fields, ["headline"]);
    let a1 = ingest_and_wait(
        &stack,
        json_article(
            "a1",
            serde_json::json!({"headline": "Tides", "body": "The moon pulls the sea twice a day."}),
            0,
        ),
    )
    .await;
    assert_eq!(
        state(&a1),
        sluice_core::proto::IngestionState::Indexed,
        "{a1:?}"
    );

    // v2 adds a field with a default; the latest is now v2.
    let second = register(&mut schemas, TENANT, v2())
        .await
        .expect("register v2");
    assert_eq!(second.version, 2);
    assert_ne!(second.id, first.id);
    let again = register(&mut schemas, TENANT, v2())
        .await
        .expect("same again");
    assert_eq!(
        (again.version, again.id),
        (2, second.id),
        "re-registering is a no-op"
    );
    let a2 = ingest_and_wait(
        &stack,
        json_article("a2", serde_json::json!({"headline": "Gezeiten", "body": "Der Mond zieht das Meer zweimal am Tag an.", "lang": "de"}), 0),
    )
    .await;
    assert_eq!(
        state(&a2),
        sluice_core::proto::IngestionState::Indexed,
        "{a2:?}"
    );
    // Still writable with v1 by number, and as Avro binary with v1's id.
    let a3 = ingest_and_wait(
        &stack,
        json_article("a3", serde_json::json!({"headline": "Currents", "body": "Warm water flows north along the coast."}), 1),
    )
    .await;
    assert_eq!(
        state(&a3),
        sluice_core::proto::IngestionState::Indexed,
        "{a3:?}"
    );
    let v1_schema = apache_avro::Schema::parse_str(&v1()).unwrap();
    let binary = apache_avro::writer::datum::GenericDatumWriter::builder(&v1_schema)
        .build()
        .unwrap()
        .write_value_to_vec(Value::Record(vec![
            ("headline".into(), Value::String("Reefs".into())),
            (
                "body".into(),
                Value::String("Coral grows slowly in clear shallow water.".into()),
            ),
        ]))
        .unwrap();
    let a4 = ingest_and_wait(
        &stack,
        Document {
            document_id: "a4".into(),
            payload: Some(Payload::AvroBinary(binary.clone())),
            schema: "article".into(),
            schema_id: first.id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        state(&a4),
        sluice_core::proto::IngestionState::Indexed,
        "{a4:?}"
    );

    // Search finds documents of both versions; v2's new attribute filters.
    let mut search = stack.search_client().await;
    let hits = search
        .search(as_tenant(
            TENANT,
            SearchRequest {
                query: "moon and sea tides".into(),
                top_k: 10,
                ..Default::default()
            },
        ))
        .await
        .expect("search")
        .into_inner()
        .hits;
    let found: Vec<&str> = hits.iter().map(|h| h.document_id.as_str()).collect();
    for id in ["a1", "a2", "a3", "a4"] {
        assert!(found.contains(&id), "{id} not found: {found:?}");
    }
    assert_eq!(
        hits.iter()
            .find(|h| h.document_id == "a1")
            .unwrap()
            .attributes["headline"],
        "Tides"
    );
    let german = search
        .search(as_tenant(
            TENANT,
            SearchRequest {
                query: "moon".into(),
                top_k: 10,
                attribute_filter: [("lang".to_owned(), "de".to_owned())].into(),
            },
        ))
        .await
        .expect("search")
        .into_inner()
        .hits;
    assert_eq!(
        german
            .iter()
            .map(|h| h.document_id.as_str())
            .collect::<Vec<_>>(),
        ["a2"]
    );

    // v3 is refused with the reason, and nothing changes.
    let refused = register(&mut schemas, TENANT, v3_incompatible())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("headline"),
        "{}",
        refused.message()
    );
    let check = schemas
        .check_compatibility(as_tenant(
            TENANT,
            CheckCompatibilityRequest {
                name: "article".into(),
                definition: v3_incompatible(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!check.compatible && !check.reasons.is_empty(), "{check:?}");
    let versions = schemas
        .list_schema_versions(as_tenant(
            TENANT,
            ListSchemaVersionsRequest {
                name: "article".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions, [1, 2]);

    // Kafka holds the Confluent wire format; Confluent's decoder (schema_registry_converter,
    // through the built-in registry's REST API) reads every version.
    let records = read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await;
    let decoder = AvroDecoder::new(sr_settings(&stack, TENANT));
    let mut ids = std::collections::BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| r.key() != Some(b"acme/document".as_slice()))
    {
        let value = record.payload().expect("value");
        let (id, _) = wire::unframe(value).expect("wire format");
        let key = String::from_utf8_lossy(record.key().unwrap()).into_owned();
        let decoded = decoder.decode(Some(value)).await.expect("decodes");
        let Value::Record(fields) = decoded.value else {
            panic!("{decoded:?}")
        };
        assert_eq!(fields[1].0, "body");
        ids.insert(key, id);
    }
    assert_eq!(ids["acme/a1"], first.id);
    assert_eq!(ids["acme/a2"], second.id);
    assert_eq!(ids["acme/a3"], first.id);
    assert_eq!(ids["acme/a4"], first.id);

    // Mistakes are named by field path.
    let mut ingest = stack.ingest_client().await;
    let cases = [
        (
            json_article("x", serde_json::json!({"headline": 5, "body": "x"}), 0),
            "document.avro_json.headline",
        ),
        (
            json_article(
                "x",
                serde_json::json!({"headline": "h", "body": "x", "lang": ["de"]}),
                0,
            ),
            "document.avro_json.lang",
        ),
        (
            json_article("x", serde_json::json!({"headline": "h", "body": "x"}), 9),
            "document.schema_version",
        ),
        (
            Document {
                schema: "recipe".into(),
                ..json_article("x", serde_json::json!({}), 0)
            },
            "document.schema",
        ),
        (
            Document {
                schema_id: second.id + 100,
                payload: Some(Payload::AvroBinary(binary.clone())),
                ..json_article("x", serde_json::json!({}), 0)
            },
            "document.schema_id",
        ),
        // v2's id with v1's bytes: the record is cut short.
        (
            Document {
                schema_id: second.id,
                payload: Some(Payload::AvroBinary(binary[..binary.len() - 3].to_vec())),
                ..json_article("x", serde_json::json!({}), 0)
            },
            "document.avro_binary",
        ),
    ];
    for (document, field) in cases {
        let status = ingest
            .ingest(as_tenant(
                TENANT,
                IngestRequest {
                    document: Some(document),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(bad_request_fields(&status), [field], "{status:?}");
    }

    // Another tenant sees none of it: not the name, not the id, not through REST.
    let listed = schemas
        .list_schemas(as_tenant("globex", ListSchemasRequest {}))
        .await
        .unwrap()
        .into_inner()
        .names;
    assert!(!listed.contains(&"article".to_owned()), "{listed:?}");
    let by_id = schemas
        .get_schema(as_tenant(
            "globex",
            GetSchemaRequest {
                id: first.id,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(by_id.code(), Code::NotFound);
    let own = schemas
        .get_schema(as_tenant(
            TENANT,
            GetSchemaRequest {
                id: first.id,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((own.name.as_str(), own.version), ("article", 1));
    let foreign =
        schema_registry_converter::async_impl::schema_registry::get_schema_by_subject_and_version(
            &sr_settings(&stack, "globex"),
            "acme.article-value",
            None,
        )
        .await;
    assert!(foreign.is_err(), "globex read acme's subject: {foreign:?}");
    let globex_ingest = ingest
        .ingest(as_tenant(
            "globex",
            IngestRequest {
                document: Some(Document {
                    schema_id: first.id,
                    payload: Some(Payload::AvroBinary(binary)),
                    ..json_article("g", serde_json::json!({}), 0)
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        bad_request_fields(&globex_ingest),
        ["document.schema_id"],
        "{globex_ingest:?}"
    );
    stack.shutdown().await;
}

/// Sluice against a Confluent-compatible registry by URL (here: another Sluice's built-in one,
/// through schema_registry_converter). When it goes away, schemas already seen keep working;
/// anything unknown is UNAVAILABLE, never written unvalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_registry_and_what_happens_when_it_is_down() {
    let registry = Stack::start(Database::Sqlite).await;
    let registry_url = registry.grpc_url();
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        config.schemas.url = Some(registry_url);
        // The registry stack is in development mode: the basic-auth user is the tenant.
        config.schemas.username = Some(TENANT.into());
        config.schemas.latest_ttl_ms = 0;
    })
    .await;
    let mut schemas = SchemaServiceClient::new(stack.channel().await);
    let first = register(&mut schemas, TENANT, v1())
        .await
        .expect("register v1 remotely");
    assert_eq!(first.subject, "acme.article-value");
    // It landed in the other registry.
    let there = SchemaServiceClient::new(registry.channel().await)
        .get_schema(as_tenant(
            TENANT,
            GetSchemaRequest {
                name: "article".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("in the registry")
        .into_inner();
    assert_eq!(there.id, first.id);
    let b1 = ingest_and_wait(
        &stack,
        json_article("b1", serde_json::json!({"headline": "Dunes", "body": "Wind piles sand into slow moving hills."}), 0),
    )
    .await;
    assert_eq!(
        state(&b1),
        sluice_core::proto::IngestionState::Indexed,
        "{b1:?}"
    );
    let refused = register(&mut schemas, TENANT, v3_incompatible())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // The registry goes down.
    registry.shutdown().await;
    let b2 = ingest_and_wait(
        &stack,
        json_article("b2", serde_json::json!({"headline": "Oases", "body": "Springs surface where rock meets the sand."}), 0),
    )
    .await;
    assert_eq!(
        state(&b2),
        sluice_core::proto::IngestionState::Indexed,
        "known schema, registry down: {b2:?}"
    );
    let mut ingest = stack.ingest_client().await;
    let unknown = ingest
        .ingest(as_tenant(
            TENANT,
            IngestRequest {
                document: Some(Document {
                    schema: "recipe".into(),
                    ..json_article("b3", serde_json::json!({"body": "x"}), 0)
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unavailable, "{unknown:?}");
    let listing = schemas
        .list_schema_versions(as_tenant(
            TENANT,
            ListSchemaVersionsRequest {
                name: "article".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(listing.code(), Code::Unavailable, "{listing:?}");
    // Nothing unvalidated reached Kafka: b1 and b2 only.
    let records = read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await;
    let keys: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(r.key().unwrap()).into_owned())
        .collect();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("acme/b")).count(),
        2,
        "{keys:?}"
    );
    assert!(!keys.contains(&"acme/b3".to_owned()), "{keys:?}");
    stack.shutdown().await;
}

/// Confluent's Python client (from PyPI) against the built-in registry over mTLS: registering,
/// evolving, refusing, deleting, and serializing a record that Sluice then ingests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_works_with_the_built_in_registry() {
    let stack = Stack::start_tls(Database::Postgres, &[TENANT, "globex"]).await;
    let dir = stack.data_dir.path().join("python");
    std::fs::create_dir_all(&dir).unwrap();
    let issued = stack.pki().client(TENANT);
    std::fs::write(dir.join("ca.pem"), stack.pki().ca.cert_pem()).unwrap();
    std::fs::write(dir.join("client.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("client-key.pem"), &issued.key_pem).unwrap();
    // globex owns a subject acme must not reach.
    let globex = stack.client_channel("globex").await;
    SchemaServiceClient::new(globex)
        .register_schema(RegisterSchemaRequest {
            name: "recipe".into(),
            definition: v1(),
        })
        .await
        .expect("globex registers");

    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
        sluice_tests::cache_dir()
            .join("venv/bin/python")
            .display()
            .to_string()
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/confluent_client.py");
    let port = stack.standalone().gateway.grpc_addr.port();
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("SR_URL", format!("https://localhost:{port}"))
        .env("SR_CA", dir.join("ca.pem"))
        .env("SR_CERT", dir.join("client.pem"))
        .env("SR_KEY", dir.join("client-key.pem"))
        .env("TENANT", TENANT)
        .env("OTHER_SUBJECT", "globex.recipe-value")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{python} (run deploy/dev/install): {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert!(
        result["incompatible"].as_str().unwrap().contains("409")
            || result["incompatible"].as_str().unwrap().contains("dish"),
        "{result}"
    );

    // The serializer's bytes are ingested as they are framed: schema id and Avro binary.
    let framed = hex::decode(result["framed_hex"].as_str().unwrap()).unwrap();
    let (id, datum) = wire::unframe(&framed).expect("Confluent wire format");
    assert_eq!(u64::from(id), result["v1_id"].as_u64().unwrap());
    let channel = stack.client_channel(TENANT).await;
    let mut ingest = sluice_core::proto::ingest_service_client::IngestServiceClient::new(channel);
    let ingestion = ingest
        .ingest(IngestRequest {
            document: Some(Document {
                document_id: "pancakes".into(),
                payload: Some(Payload::AvroBinary(datum.to_vec())),
                schema: "recipe".into(),
                schema_id: id,
                ..Default::default()
            }),
            wait: true,
            ..Default::default()
        })
        .await
        .expect("ingest the serializer's record")
        .into_inner()
        .ingestion
        .unwrap();
    assert_eq!(
        state(&ingestion),
        sluice_core::proto::IngestionState::Indexed,
        "{ingestion:?}"
    );
    stack.shutdown().await;
}
