//! Hostile and careless inputs against a running gateway: each is answered quickly with a
//! status a client can read, the gateway stays healthy, and another tenant's calls go on
//! succeeding meanwhile. `SECURITY.md` lists the limits these exercise.

use std::time::{Duration, Instant};

use sluice_core::proto::ingest_service_client::IngestServiceClient;
use sluice_core::proto::search_service_client::SearchServiceClient;
use sluice_core::proto::{
    document::Payload, Document, GetIngestionRequest, IngestBatchRequest, IngestRequest,
    IngestionState, SearchRequest,
};
use sluice_tests::{as_tenant, document, ended, read_topic, state, Database, Stack};
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

const NEIGHBOUR: &str = "neighbour";

/// Bytes a status takes in trailers, as a client receives it: grpc-message and the
/// base64-encoded grpc-status-details-bin.
fn trailer_bytes(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len().div_ceil(3) * 4
}

/// A client that sends requests of any size (tonic's default refuses to encode over 4 MiB).
fn unlimited(channel: Channel) -> IngestServiceClient<Channel> {
    IngestServiceClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX)
}

/// The neighbour ingests `count` short documents, waiting for each to be indexed: what a
/// well-behaved tenant sees while another misbehaves.
async fn neighbour_ingests(mut ingest: IngestServiceClient<Channel>, count: usize, tag: &str) {
    for i in 0..count {
        let id = format!("{tag}-{i}");
        let response = ingest
            .ingest(as_tenant(
                NEIGHBOUR,
                IngestRequest {
                    document: Some(document(&id, &id, "A short, ordinary note.")),
                    wait: true,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("the neighbour's {id} failed: {e:?}"))
            .into_inner();
        let ingestion = response.ingestion.unwrap();
        assert_eq!(state(&ingestion), IngestionState::Indexed, "{ingestion:?}");
    }
}

/// Before: a document of just over 1 MB (under the 1 MiB text limit) was answered ABORTED
/// "retry", forever (librdkafka's 1 MB default refused the record). Now it is written; the
/// worker bounds its work per document and says why it did not index it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_at_the_size_limits_is_written_and_bounded_in_the_worker() {
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        // Small here so the test does not embed for a minute; the default is 262,144.
        config.chunking.max_document_tokens = 5_000;
    })
    .await;
    let channel = stack.channel().await;
    let mut ingest = unlimited(channel.clone());

    // 1,040,000 bytes of text: over 1 MB, under max_text_bytes (1 MiB).
    let text = "Kafka keeps records in order. ".repeat(34_667);
    let text = &text[..1_040_000];
    let neighbour = tokio::spawn(neighbour_ingests(
        IngestServiceClient::new(channel.clone()),
        10,
        "during-large",
    ));
    let started = Instant::now();
    let accepted = ingest
        .ingest(as_tenant(
            "bulky",
            IngestRequest {
                document: Some(document("large", "large", text)),
                ..Default::default()
            },
        ))
        .await
        .expect("a document within the limits is accepted")
        .into_inner()
        .ingestion
        .unwrap();
    println!(
        "1,040,000-byte document accepted in {:?}",
        started.elapsed()
    );
    neighbour.await.unwrap();

    let failed = ended(
        &ingest,
        "bulky",
        &accepted.ingestion_id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(state(&failed), IngestionState::Failed, "{failed:?}");
    assert!(
        failed.failure_reason.contains("max_document_tokens"),
        "{failed:?}"
    );

    // It is durably in Kafka, whole.
    let records = read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await;
    let largest = records
        .iter()
        .map(|m| rdkafka::Message::payload(m).map_or(0, <[u8]>::len))
        .max()
        .unwrap();
    assert!(largest > 1_040_000, "largest record {largest} bytes");
    stack.shutdown().await;
}

/// Before: 1,000 wrongly typed array items gave 52 KB of trailers, 50,000 gave 2.6 MB, which
/// clients with the usual metadata limits cannot read at all. Now every error fits in 8 KB,
/// is answered quickly, and the neighbour does not notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_are_bounded_and_cheap() {
    let stack = Stack::start(Database::Sqlite).await;
    let channel = stack.channel().await;
    let mut ingest = unlimited(channel.clone());
    let neighbour = tokio::spawn(neighbour_ingests(
        IngestServiceClient::new(channel.clone()),
        10,
        "during-invalid",
    ));

    for count in [1_000usize, 50_000, 400_000] {
        let json = serde_json::json!({ "text": "x", "tags": vec![1; count] }).to_string();
        let started = Instant::now();
        let status = ingest
            .ingest(as_tenant(
                "careless",
                IngestRequest {
                    document: Some(Document {
                        document_id: format!("bad-{count}"),
                        payload: Some(Payload::AvroJson(json)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        let bytes = trailer_bytes(&status);
        println!(
            "{count} bad items: {:?} in {elapsed:?}, {bytes} bytes of trailers",
            status.code()
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(bytes <= 8192, "{bytes} bytes of trailers");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations[0].field, "document.avro_json.tags[0]");
        assert!(
            violations
                .last()
                .unwrap()
                .description
                .contains("more violations"),
            "{violations:?}"
        );
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }
    neighbour.await.unwrap();
    stack.shutdown().await;
}

/// Before: a 100 MB request was buffered (up to 64 MiB) and then refused OUT_OF_RANGE. Now
/// each method's limit is checked on the message's length prefix: RESOURCE_EXHAUSTED at once,
/// before the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_they_are_read() {
    let stack = Stack::start(Database::Sqlite).await;
    let channel = stack.channel().await;
    let mut ingest = unlimited(channel.clone());

    let huge = "x".repeat(100 << 20);
    let started = Instant::now();
    let status = ingest
        .ingest(as_tenant(
            "greedy",
            IngestRequest {
                document: Some(document("huge", "huge", &huge)),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    println!(
        "100 MB Ingest: {:?} in {:?}",
        status.code(),
        started.elapsed()
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("IngestService/Ingest"),
        "{status:?}"
    );
    drop(huge);

    // IngestBatch: 17 documents of 1 MiB are over the 16 MiB request limit, though each is
    // within the document limits.
    let text = "y".repeat(1 << 20);
    let documents = (0..17)
        .map(|i| document(&format!("b{i}"), "b", &text))
        .collect();
    let status = ingest
        .ingest_batch(as_tenant(
            "greedy",
            IngestBatchRequest {
                documents,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Search: a 2 MiB query is over the 1 MiB of any other method.
    let mut search =
        SearchServiceClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
    let status = search
        .search(as_tenant(
            "greedy",
            SearchRequest {
                query: "z".repeat(2 << 20),
                top_k: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The connection and the gateway are fine.
    neighbour_ingests(IngestServiceClient::new(channel), 3, "after-oversized").await;
    stack.shutdown().await;
}

/// Any `grpc-timeout` a client sends is a deadline or none; none makes the gateway panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_grpc_timeout_is_answered() {
    let stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    for (i, timeout) in [
        "99999999H",
        "99999999999999999999H",
        "18446744073709551615n",
        "0n",
        "1n",
        "-5S",
        "banana",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = as_tenant(
            "clock",
            IngestRequest {
                document: Some(document(&format!("t{i}"), "t", "A note on deadlines.")),
                wait: true,
                ..Default::default()
            },
        );
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
        let answer = tokio::time::timeout(Duration::from_secs(60), ingest.ingest(request))
            .await
            .unwrap_or_else(|_| panic!("grpc-timeout {timeout:?}: no answer in 60 s"));
        println!(
            "grpc-timeout {timeout:?}: {:?}",
            answer.as_ref().map(|_| "OK").map_err(|s| s.code())
        );
        if let Err(status) = &answer {
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "grpc-timeout {timeout:?}: {status:?}"
            );
        }
        let lookup = ingest
            .get_ingestion(as_tenant(
                "clock",
                GetIngestionRequest {
                    ingestion_id: "nothing".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_ne!(
            lookup.code(),
            Code::Unknown,
            "the gateway answers after {timeout:?}"
        );
    }
    stack.shutdown().await;
}

/// A record Kafka refuses (here: an operator's `message.max.bytes` below the gateway's
/// document limit) fails its own request, FAILED_PRECONDITION without "retry"; the requests
/// that shared its transaction (group commit) are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_fails_only_its_own_request() {
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        config
            .kafka
            .properties
            .insert("message.max.bytes".into(), "300000".into());
    })
    .await;
    let channel = stack.channel().await;
    let text = "An oversized record. ".repeat(20_000);
    for round in 0..3 {
        let mut calls = Vec::new();
        for i in 0..30 {
            let mut ingest = IngestServiceClient::new(channel.clone());
            calls.push(tokio::spawn(async move {
                let id = format!("small-{round}-{i}");
                ingest
                    .ingest(as_tenant(
                        NEIGHBOUR,
                        IngestRequest {
                            document: Some(document(&id, &id, "A small note.")),
                            ..Default::default()
                        },
                    ))
                    .await
            }));
        }
        let mut ingest = IngestServiceClient::new(channel.clone());
        let big = ingest
            .ingest(as_tenant(
                "bulky",
                IngestRequest {
                    document: Some(document(&format!("big-{round}"), "big", &text)),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(big.code(), Code::FailedPrecondition, "{big:?}");
        assert!(!big.message().contains("retry"), "{big:?}");
        for call in calls {
            call.await
                .unwrap()
                .unwrap_or_else(|e| panic!("a neighbour's request failed with the big one: {e:?}"));
        }
    }
    let records = read_topic(&stack.config.kafka, &stack.config.kafka.documents_topic).await;
    assert_eq!(
        records.len(),
        90,
        "the 90 small documents and none of the big ones"
    );
    stack.shutdown().await;
}

/// Over mTLS, who is calling is decided on the headers: an unregistered tenant's large
/// request is refused PERMISSION_DENIED without its body being read, and a registered
/// tenant's request over the Ingest limit is RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_checked_before_their_bodies_are_read() {
    let stack = Stack::start_tls(Database::Sqlite, &["acme"]).await;
    let text = "w".repeat(3 << 20);

    let mut stranger = unlimited(stack.client_channel("stranger").await);
    let refused = stranger
        .ingest(IngestRequest {
            document: Some(document("s", "s", &text)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let mut acme = unlimited(stack.client_channel("acme").await);
    let too_large = "v".repeat(5 << 20);
    let status = acme
        .ingest(IngestRequest {
            document: Some(document("a", "a", &too_large)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    acme.ingest(IngestRequest {
        document: Some(document("ok", "ok", "Within every limit.")),
        ..Default::default()
    })
    .await
    .expect("a request within the limits");
    stack.shutdown().await;
}

/// Connections over `gateway.max_connections` are closed as they arrive; one closing makes
/// room for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited() {
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        config.gateway.max_connections = 3;
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(stack.channel().await);
    }
    let over = Channel::from_shared(stack.grpc_url())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    let refused = match over {
        Err(_) => true,
        // The TCP connection may be taken before it is closed: then the first call fails.
        Ok(channel) => IngestServiceClient::new(channel)
            .get_ingestion(as_tenant(
                "t",
                GetIngestionRequest {
                    ingestion_id: "x".into(),
                },
            ))
            .await
            // "connection closed": Cancelled or Unavailable, as the client saw it go.
            .is_err_and(|s| {
                matches!(
                    s.code(),
                    Code::Unavailable | Code::Cancelled | Code::Unknown
                )
            }),
    };
    assert!(refused, "a fourth connection was served");
    drop(open.pop());
    // The server gives the permit back once it has seen the connection close.
    sluice_tests::eventually("room for a connection", Duration::from_secs(10), || {
        let url = stack.grpc_url();
        async move {
            let channel = Channel::from_shared(url).unwrap().connect().await.ok()?;
            IngestServiceClient::new(channel)
                .ingest(as_tenant(
                    "t",
                    IngestRequest {
                        document: Some(document("fits", "fits", "Room again.")),
                        ..Default::default()
                    },
                ))
                .await
                .ok()
        }
    })
    .await;
    stack.shutdown().await;
}

/// A document schema with a text field and `extra` optional fields, named `n0`…, and some
/// padding in a doc string (to make the schema `pad` bytes larger).
fn wide_schema(extra: usize, pad: usize) -> String {
    let mut fields = vec![r#"{"name":"text","type":"string","sluice.role":"text"}"#.to_owned()];
    fields.extend(
        (0..extra).map(|i| format!(r#"{{"name":"n{i}","type":["null","string"],"default":null}}"#)),
    );
    format!(
        r#"{{"type":"record","name":"Wide","doc":"{}","fields":[{}]}}"#,
        "x".repeat(pad),
        fields.join(",")
    )
}

/// Schema registration is bounded (size, depth, fields, subjects and versions per tenant), its
/// ids say nothing about other tenants, and registering never stalls another tenant's
/// ingestion: the parse and the compatibility check run outside the database's write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registration_is_bounded_and_never_stalls_ingestion() {
    use sluice_core::proto::schema_service_client::SchemaServiceClient;
    use sluice_core::proto::RegisterSchemaRequest;
    const VERSIONS: usize = 25;
    let stack = Stack::start_configured(Database::Sqlite, |config| {
        config.schemas.max_versions_per_subject = VERSIONS;
        config.schemas.max_subjects_per_tenant = 3;
    })
    .await;
    let channel = stack.channel().await;
    let mut schemas = SchemaServiceClient::new(channel.clone());
    let register = |tenant: &str, name: &str, definition: String| {
        as_tenant(
            tenant,
            RegisterSchemaRequest {
                name: name.into(),
                definition,
            },
        )
    };

    // Too large, too deep, too wide: refused before parsing, saying which limit.
    let refusals = [
        (wide_schema(1, 70_000), "max_schema_bytes"),
        (wide_schema(1_001, 0), "max_schema_fields"),
        (
            {
                let mut nested = r#""string""#.to_owned();
                for level in 0..40 {
                    nested = format!(
                        r#"{{"type":"record","name":"R{level}","fields":[{{"name":"f","type":{nested}}}]}}"#
                    );
                }
                nested
            },
            "max_schema_depth",
        ),
    ];
    for (definition, limit) in refusals {
        let started = Instant::now();
        let status = schemas
            .register_schema(register("schemer", "big", definition))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(limit), "{status:?}");
        println!("refused ({limit}) in {:?}", started.elapsed());
    }

    // The same schema in two tenants: two ids, neither a count.
    let same = wide_schema(2, 0);
    let mine = schemas
        .register_schema(register("schemer", "note", same.clone()))
        .await
        .unwrap()
        .into_inner()
        .schema
        .unwrap();
    let theirs = schemas
        .register_schema(register(NEIGHBOUR, "note", same))
        .await
        .unwrap()
        .into_inner()
        .schema
        .unwrap();
    assert_ne!(mine.id, theirs.id);

    // The neighbour's Ingest latency, alone and while the schemer registers large schemas.
    async fn ingest_latencies(
        mut ingest: IngestServiceClient<Channel>,
        tag: &'static str,
        count: usize,
    ) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(count);
        for i in 0..count {
            let id = format!("{tag}-{i}");
            let started = Instant::now();
            ingest
                .ingest(as_tenant(
                    NEIGHBOUR,
                    IngestRequest {
                        document: Some(document(&id, &id, "A short, ordinary note.")),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap_or_else(|e| panic!("the neighbour's {id} failed: {e:?}"));
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.sort();
        latencies
    }
    let baseline = ingest_latencies(IngestServiceClient::new(channel.clone()), "alone", 30).await;
    let during = tokio::spawn(ingest_latencies(
        IngestServiceClient::new(channel.clone()),
        "during",
        60,
    ));
    // Versions of 900-odd fields and ~50 KB each, every one checked against the last.
    let mut registration = Vec::new();
    for version in 0..VERSIONS {
        let started = Instant::now();
        schemas
            .register_schema(register(
                "schemer",
                "wide",
                wide_schema(900 + version, 10_000),
            ))
            .await
            .unwrap_or_else(|e| panic!("version {version}: {e:?}"));
        registration.push(started.elapsed());
    }
    let during = during.await.unwrap();
    registration.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "{VERSIONS} registrations of ~50 KB schemas: median {:?}, max {:?}; neighbour Ingest \
         alone: median {:?}, p90 {:?}, max {:?}; during: median {:?}, p90 {:?}, max {:?}",
        p(&registration, 0.5),
        p(&registration, 1.0),
        p(&baseline, 0.5),
        p(&baseline, 0.9),
        p(&baseline, 1.0),
        p(&during, 0.5),
        p(&during, 0.9),
        p(&during, 1.0),
    );

    // One version more, one subject more: refused with a QuotaFailure naming the limit.
    let status = schemas
        .register_schema(register("schemer", "wide", wide_schema(900 + VERSIONS, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let quota = status.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(
        quota.violations[0].subject,
        "schemas.max_versions_per_subject"
    );
    schemas
        .register_schema(register("schemer", "third", wide_schema(3, 0)))
        .await
        .unwrap();
    let status = schemas
        .register_schema(register("schemer", "fourth", wide_schema(3, 0)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("3 subjects"), "{status:?}");
    // Re-registering a version it holds is not one more.
    schemas
        .register_schema(register("schemer", "third", wide_schema(3, 0)))
        .await
        .unwrap();
    stack.shutdown().await;
}

/// A malformed or oversized trace context is ignored, never an error: the call succeeds as if
/// it had none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_trace_context_is_answered() {
    let stack = Stack::start(Database::Sqlite).await;
    let mut ingest = stack.ingest_client().await;
    let long = "k=".to_owned() + &"v".repeat(7_000);
    let contexts = [
        ("traceparent", "banana"),
        (
            "traceparent",
            "00-00000000000000000000000000000000-0000000000000000-01",
        ),
        (
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", long.as_str()),
    ];
    for (i, (key, value)) in contexts.into_iter().enumerate() {
        let id = format!("traced-{i}");
        let mut request = as_tenant(
            NEIGHBOUR,
            IngestRequest {
                document: Some(document(&id, &id, "Any trace context.")),
                ..Default::default()
            },
        );
        request.metadata_mut().insert(key, value.parse().unwrap());
        let started = Instant::now();
        let answer = ingest.ingest(request).await;
        assert!(answer.is_ok(), "{key}: {answer:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    stack.shutdown().await;
}
