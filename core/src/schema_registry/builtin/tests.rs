//! The built-in registry on SQLite and on PostgreSQL: the same scenarios on both.

use super::*;

const ARTICLE: &str = "acme.article-value";
const NOTE: &str = "acme.note-value";

/// A record named `Doc` with these fields.
fn doc(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Doc","fields":[{fields}]}}"#)
}

fn v1() -> String {
    doc(r#"{"name":"text","type":"string"}"#)
}

/// v1 plus a field with a default: compatible at every level.
fn v2() -> String {
    doc(r#"{"name":"text","type":"string"},{"name":"lang","type":"string","default":"en"}"#)
}

/// v2 plus a field without a default: data written with v2 lacks it, so not BACKWARD.
fn v3_required() -> String {
    doc(
        r#"{"name":"text","type":"string"},{"name":"lang","type":"string","default":"en"},{"name":"title","type":"string"}"#,
    )
}

fn registry(db: DatabaseConnection) -> BuiltinRegistry {
    BuiltinRegistry::new(db, CompatibilityLevel::Backward)
}

async fn registers_and_deduplicates(registry: &BuiltinRegistry) {
    let first = registry.register(ARTICLE, &v1(), &[]).await.unwrap();
    assert_eq!((first.subject.as_str(), first.version), (ARTICLE, 1));
    assert_eq!(first.schema, v1());

    // The same schema again, even spelled differently, is the same version.
    let spaced = v1().replace(',', " , ").replace(':', " : ");
    assert_eq!(
        registry.register(ARTICLE, &spaced, &[]).await.unwrap(),
        first
    );
    assert_eq!(registry.versions(ARTICLE).await.unwrap(), [1]);

    // Under another subject it is version 1 there, with the same global id.
    let note = registry.register(NOTE, &v1(), &[]).await.unwrap();
    assert_eq!((note.version, note.id), (1, first.id));
    assert_eq!(
        registry.subjects_using(first.id, false).await.unwrap(),
        [ARTICLE, NOTE]
    );
    assert_eq!(
        registry.versions_using(first.id, false).await.unwrap(),
        [(ARTICLE.to_owned(), 1), (NOTE.to_owned(), 1)]
    );

    // A compatible change is version 2, with a new id.
    let second = registry.register(ARTICLE, &v2(), &[]).await.unwrap();
    assert_eq!(second.version, 2);
    assert_ne!(second.id, first.id);
    assert_eq!(registry.versions(ARTICLE).await.unwrap(), [1, 2]);
    assert_eq!(registry.subjects().await.unwrap(), [ARTICLE, NOTE]);
    assert_eq!(
        registry
            .version(ARTICLE, VersionSelector::Latest)
            .await
            .unwrap(),
        second
    );
    assert_eq!(
        registry
            .version(ARTICLE, VersionSelector::Number(1))
            .await
            .unwrap(),
        first
    );
    assert_eq!(
        registry.schema_by_id(second.id).await.unwrap(),
        (v2(), vec![])
    );
    assert_eq!(
        registry
            .lookup(ARTICLE, &spaced, &[], false)
            .await
            .unwrap()
            .map(|found| found.version),
        Some(1)
    );
    assert_eq!(
        registry.lookup(NOTE, &v2(), &[], false).await.unwrap(),
        None
    );

    // What is not there, and what is not Avro.
    assert!(matches!(
        registry.version(ARTICLE, VersionSelector::Number(9)).await,
        Err(RegistryError::VersionNotFound { .. })
    ));
    assert!(matches!(
        registry
            .version("acme.nothing-value", VersionSelector::Latest)
            .await,
        Err(RegistryError::SubjectNotFound(_))
    ));
    assert!(matches!(
        registry.schema_by_id(9999).await,
        Err(RegistryError::SchemaNotFound(9999))
    ));
    assert!(matches!(
        registry
            .register(ARTICLE, r#"{"type":"record","name":"Doc"}"#, &[])
            .await,
        Err(RegistryError::InvalidSchema(_))
    ));
    assert!(matches!(
        registry.register(ARTICLE, "not json", &[]).await,
        Err(RegistryError::InvalidSchema(_))
    ));
}

async fn levels_decide(registry: &BuiltinRegistry) {
    // The default (BACKWARD) refuses a new field without a default, saying why.
    match registry.register(ARTICLE, &v3_required(), &[]).await {
        Err(RegistryError::Incompatible { level, messages }) => {
            assert_eq!(level, CompatibilityLevel::Backward);
            assert!(messages[0].contains("version 2"), "{messages:?}");
        }
        other => panic!("expected an incompatibility, got {other:?}"),
    }
    let report = registry
        .check_compatibility(ARTICLE, &v3_required(), &[], None)
        .await
        .unwrap();
    assert!(!report.compatible && !report.messages.is_empty());
    assert!(
        registry
            .check_compatibility(ARTICLE, &v2(), &[], Some(VersionSelector::Number(1)))
            .await
            .unwrap()
            .compatible
    );
    // Nothing to be incompatible with.
    assert!(
        registry
            .check_compatibility("acme.new-value", &v3_required(), &[], None)
            .await
            .unwrap()
            .compatible
    );
    assert!(matches!(
        registry
            .check_compatibility(ARTICLE, &v1(), &[], Some(VersionSelector::Number(7)))
            .await,
        Err(RegistryError::VersionNotFound { .. })
    ));

    // A subject's own level overrides the global one: NONE lets anything in.
    assert_eq!(registry.subject_level(NOTE).await.unwrap(), None);
    registry
        .set_subject_level(NOTE, CompatibilityLevel::None)
        .await
        .unwrap();
    assert_eq!(
        registry.subject_level(NOTE).await.unwrap(),
        Some(CompatibilityLevel::None)
    );
    let retyped = doc(r#"{"name":"text","type":"long"}"#);
    assert_eq!(
        registry
            .register(NOTE, &retyped, &[])
            .await
            .unwrap()
            .version,
        2
    );
    // ... and the other way round: a NONE global level, a BACKWARD subject.
    registry
        .set_global_level(CompatibilityLevel::None)
        .await
        .unwrap();
    assert_eq!(
        registry.global_level().await.unwrap(),
        CompatibilityLevel::None
    );
    registry
        .set_subject_level(ARTICLE, CompatibilityLevel::Backward)
        .await
        .unwrap();
    assert!(matches!(
        registry.register(ARTICLE, &v3_required(), &[]).await,
        Err(RegistryError::Incompatible { .. })
    ));
    assert_eq!(
        registry.delete_subject_level(ARTICLE).await.unwrap(),
        Some(CompatibilityLevel::Backward)
    );
    assert_eq!(
        registry.level_in_force(ARTICLE).await.unwrap(),
        CompatibilityLevel::None
    );
    assert_eq!(
        registry.delete_global_level().await.unwrap(),
        CompatibilityLevel::None
    );
    assert_eq!(
        registry.global_level().await.unwrap(),
        CompatibilityLevel::Backward
    );
}

async fn deletes_soft_then_permanently(registry: &BuiltinRegistry) {
    // ARTICLE has versions 1 and 2.
    assert!(matches!(
        registry
            .delete_version(ARTICLE, VersionSelector::Number(2), true)
            .await,
        Err(RegistryError::VersionNotSoftDeleted { version: 2, .. })
    ));
    assert_eq!(
        registry
            .delete_version(ARTICLE, VersionSelector::Latest, false)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        registry
            .delete_version(ARTICLE, VersionSelector::Number(2), false)
            .await,
        Err(RegistryError::VersionSoftDeleted { version: 2, .. })
    ));
    assert_eq!(registry.versions(ARTICLE).await.unwrap(), [1]);
    assert_eq!(registry.list_versions(ARTICLE, true).await.unwrap(), [1, 2]);
    assert_eq!(
        registry
            .version(ARTICLE, VersionSelector::Latest)
            .await
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        registry.version(ARTICLE, VersionSelector::Number(2)).await,
        Err(RegistryError::VersionNotFound { .. })
    ));
    assert_eq!(
        registry
            .get_version(ARTICLE, VersionSelector::Number(2), true)
            .await
            .unwrap()
            .version,
        2
    );
    // Registering the soft-deleted schema again makes a new version (numbers are not
    // reused) with the same id.
    let deleted_id = registry
        .get_version(ARTICLE, VersionSelector::Number(2), true)
        .await
        .unwrap()
        .id;
    let again = registry.register(ARTICLE, &v2(), &[]).await.unwrap();
    assert_eq!((again.version, again.id), (3, deleted_id));

    assert_eq!(
        registry
            .delete_version(ARTICLE, VersionSelector::Number(2), true)
            .await
            .unwrap(),
        2
    );
    assert_eq!(registry.list_versions(ARTICLE, true).await.unwrap(), [1, 3]);

    // A whole subject: soft, then permanently; never permanently first.
    assert!(matches!(
        registry.delete_subject(ARTICLE, true).await,
        Err(RegistryError::SubjectNotSoftDeleted(_))
    ));
    assert_eq!(
        registry.delete_subject(ARTICLE, false).await.unwrap(),
        [1, 3]
    );
    assert!(matches!(
        registry.delete_subject(ARTICLE, false).await,
        Err(RegistryError::SubjectSoftDeleted(_))
    ));
    assert_eq!(registry.subjects().await.unwrap(), [NOTE]);
    assert_eq!(registry.list_subjects(true).await.unwrap(), [ARTICLE, NOTE]);
    assert!(matches!(
        registry.versions(ARTICLE).await,
        Err(RegistryError::SubjectNotFound(_))
    ));
    assert_eq!(
        registry.delete_subject(ARTICLE, true).await.unwrap(),
        [1, 3]
    );
    assert!(matches!(
        registry.delete_subject(ARTICLE, false).await,
        Err(RegistryError::SubjectNotFound(_))
    ));
    // Ids outlive their versions: records written with them stay readable.
    assert_eq!(registry.schema_by_id(again.id).await.unwrap().0, v2());
    assert!(matches!(
        registry.versions_using(again.id, true).await,
        Err(RegistryError::SchemaNotFound(_))
    ));
}

async fn references_resolve_and_hold(registry: &BuiltinRegistry) {
    const ADDRESS: &str = "acme.address-value";
    const PERSON: &str = "acme.person-value";
    let address_schema = r#"{"type":"record","name":"Address","namespace":"com.example","fields":[{"name":"city","type":"string"}]}"#;
    let address = registry
        .register(ADDRESS, address_schema, &[])
        .await
        .unwrap();
    let reference = SchemaReference {
        name: "com.example.Address".into(),
        subject: ADDRESS.into(),
        version: 1,
    };
    let person_schema = r#"{"type":"record","name":"Person","namespace":"com.example","fields":[{"name":"name","type":"string"},{"name":"home","type":"com.example.Address"}]}"#;

    // Without its reference the type is unknown; a reference must name a version.
    assert!(matches!(
        registry.register(PERSON, person_schema, &[]).await,
        Err(RegistryError::InvalidSchema(_))
    ));
    let dangling = SchemaReference {
        version: 5,
        ..reference.clone()
    };
    match registry
        .register(PERSON, person_schema, std::slice::from_ref(&dangling))
        .await
    {
        Err(RegistryError::InvalidSchema(message)) => {
            assert!(message.contains("version 5"), "{message}")
        }
        other => panic!("expected an invalid reference, got {other:?}"),
    }

    let person = registry
        .register(PERSON, person_schema, std::slice::from_ref(&reference))
        .await
        .unwrap();
    assert_eq!(person.references, std::slice::from_ref(&reference));
    assert_eq!(
        registry.schema_by_id(person.id).await.unwrap(),
        (person_schema.to_owned(), vec![reference.clone()])
    );
    assert_eq!(
        registry
            .referenced_by(ADDRESS, VersionSelector::Number(1))
            .await
            .unwrap(),
        [person.id]
    );
    assert_eq!(
        registry
            .lookup(
                PERSON,
                person_schema,
                std::slice::from_ref(&reference),
                false
            )
            .await
            .unwrap(),
        Some(person.clone())
    );

    // A compatible change to a schema with references is checked with them resolved.
    let person_v2 = r#"{"type":"record","name":"Person","namespace":"com.example","fields":[{"name":"name","type":"string"},{"name":"home","type":"com.example.Address"},{"name":"age","type":"int","default":0}]}"#;
    assert_eq!(
        registry
            .register(PERSON, person_v2, std::slice::from_ref(&reference))
            .await
            .unwrap()
            .version,
        2
    );

    // A referenced version cannot be deleted, alone or with its subject.
    match registry
        .delete_version(ADDRESS, VersionSelector::Number(1), false)
        .await
    {
        Err(RegistryError::ReferenceExists {
            version,
            referenced_by,
            ..
        }) => {
            assert_eq!(version, 1);
            assert!(referenced_by.contains(&person.id));
        }
        other => panic!("expected a reference to hold, got {other:?}"),
    }
    assert!(matches!(
        registry.delete_subject(ADDRESS, false).await,
        Err(RegistryError::ReferenceExists { .. })
    ));
    // The refused delete changed nothing.
    assert_eq!(registry.versions(ADDRESS).await.unwrap(), [1]);
    assert_eq!(
        registry
            .version(ADDRESS, VersionSelector::Latest)
            .await
            .unwrap(),
        address
    );

    // Once the referencing schemas are deleted, so can the referenced one be.
    registry.delete_subject(PERSON, false).await.unwrap();
    assert!(registry
        .referenced_by(ADDRESS, VersionSelector::Number(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(registry.delete_subject(ADDRESS, false).await.unwrap(), [1]);
}

/// Gateways sharing the database register at once: every registration lands, with one id for
/// one schema and distinct version numbers.
async fn concurrent_registrations_settle(registry: &BuiltinRegistry) {
    let schema = doc(r#"{"name":"shared","type":"string"}"#);
    let same_schema = ["acme.c1-value", "acme.c2-value", "acme.c3-value"].map(|subject| {
        let registry = registry.clone();
        let schema = schema.clone();
        tokio::spawn(async move { registry.register(subject, &schema, &[]).await })
    });
    let mut ids = HashSet::new();
    for task in same_schema {
        ids.insert(task.await.unwrap().unwrap().id);
    }
    assert_eq!(ids.len(), 1, "one schema, one id");

    const BUSY: &str = "acme.busy-value";
    registry
        .set_subject_level(BUSY, CompatibilityLevel::None)
        .await
        .unwrap();
    let one_subject = ["a", "b", "c"].map(|field| {
        let registry = registry.clone();
        let schema = doc(&format!(r#"{{"name":"{field}","type":"string"}}"#));
        tokio::spawn(async move { registry.register(BUSY, &schema, &[]).await })
    });
    let mut versions = Vec::new();
    for task in one_subject {
        versions.push(task.await.unwrap().unwrap().version);
    }
    versions.sort_unstable();
    assert_eq!(versions, [1, 2, 3]);
}

/// Two tenants registering the same schema get two ids, drawn rather than counted; what a
/// tenant may register is bounded.
async fn ids_are_per_tenant_and_limits_hold(db: DatabaseConnection) {
    let limits = RegistrationLimits {
        max_subjects_per_tenant: 2,
        max_versions_per_subject: 2,
        ..RegistrationLimits::default()
    };
    let registry = registry(db.clone()).with_rules(SubjectNaming::default(), limits);
    let schema = doc(r#"{"name":"body","type":"string"}"#);
    let umbrella = registry
        .register("umbrella.a-value", &schema, &[])
        .await
        .unwrap();
    let hooli = registry
        .register("hooli.a-value", &schema, &[])
        .await
        .unwrap();
    assert_ne!(umbrella.id, hooli.id, "one id per tenant");
    assert_eq!(
        registry.subjects_using(hooli.id, false).await.unwrap(),
        ["hooli.a-value"]
    );
    // Within a tenant the same schema under a second subject shares the id.
    let again = registry
        .register("umbrella.b-value", &schema, &[])
        .await
        .unwrap();
    assert_eq!(again.id, umbrella.id);
    // Ids are not consecutive: the next schema's id says nothing about how many others exist.
    let ids: Vec<SchemaId> = [umbrella.id, hooli.id]
        .into_iter()
        .chain([registry
            .register("hooli.z-value", &v1(), &[])
            .await
            .unwrap()
            .id])
        .collect();
    assert!(
        ids.windows(2).any(|w| w[1].abs_diff(w[0]) > 1000),
        "ids look counted: {ids:?}"
    );

    // A third subject for umbrella is refused; re-registering what it holds is not.
    let third = registry.register("umbrella.c-value", &schema, &[]).await;
    assert!(
        matches!(
            &third,
            Err(RegistryError::LimitReached {
                limit: "schemas.max_subjects_per_tenant",
                ..
            })
        ),
        "{third:?}"
    );
    assert_eq!(
        registry
            .register("umbrella.b-value", &schema, &[])
            .await
            .unwrap(),
        again
    );
    // Versions per subject count soft-deleted ones.
    registry
        .set_subject_level("umbrella.a-value", CompatibilityLevel::None)
        .await
        .unwrap();
    registry
        .register("umbrella.a-value", &v1(), &[])
        .await
        .unwrap();
    registry
        .delete_version("umbrella.a-value", VersionSelector::Number(2), false)
        .await
        .unwrap();
    let over = registry.register("umbrella.a-value", &v2(), &[]).await;
    assert!(
        matches!(
            &over,
            Err(RegistryError::LimitReached {
                limit: "schemas.max_versions_per_subject",
                ..
            })
        ),
        "{over:?}"
    );
    // Other tenants are not counted against umbrella.
    registry
        .register("initrode.a-value", &v1(), &[])
        .await
        .unwrap();
    registry
        .register("initrode.b-value", &v1(), &[])
        .await
        .unwrap();
    // A schema too large or too deep is refused before it is parsed.
    let large = format!(r#"{{"type":"string","doc":"{}"}}"#, "x".repeat(70_000));
    assert!(matches!(
        registry.register("initrode.a-value", &large, &[]).await,
        Err(RegistryError::InvalidSchema(reason)) if reason.contains("max_schema_bytes")
    ));

    // A schema stored before ids were scoped (an unscoped fingerprint) is still found as the
    // version its subject holds, and not through any other subject.
    let legacy_text = doc(r#"{"name":"legacy","type":"string"}"#);
    let (written, _) = parse(&legacy_text, &[]).unwrap();
    schema::Entity::insert(schema::ActiveModel::from(schema::Model {
        id: 7,
        fingerprint: fingerprint("", &written, &[]),
        schema: legacy_text.clone(),
        references: "[]".into(),
        created_at_ms: 0,
    }))
    .exec_without_returning(&db)
    .await
    .unwrap();
    version::Entity::insert(version::ActiveModel::from(version::Model {
        subject: "legacy.old-value".into(),
        version: 1,
        schema_id: 7,
        deleted: false,
        created_at_ms: 0,
    }))
    .exec_without_returning(&db)
    .await
    .unwrap();
    let found = registry
        .register("legacy.old-value", &legacy_text, &[])
        .await
        .unwrap();
    assert_eq!((found.version, found.id), (1, 7));
    let other = registry
        .register("umbrella.a-value", &legacy_text, &[])
        .await;
    assert!(other.is_err() || other.unwrap().id != 7);
    let fresh = registry
        .register("legacy.new-value", &legacy_text, &[])
        .await
        .unwrap();
    assert_ne!(
        fresh.id, 7,
        "the legacy row is not shared with a new subject"
    );
}

async fn exercise(db: DatabaseConnection) {
    let registry = registry(db.clone());
    assert_eq!(registry.describe(), "built-in");
    assert_eq!(registry.subjects().await.unwrap(), Vec::<String>::new());
    registers_and_deduplicates(&registry).await;
    levels_decide(&registry).await;
    deletes_soft_then_permanently(&registry).await;
    references_resolve_and_hold(&registry).await;
    concurrent_registrations_settle(&registry).await;
    ids_are_per_tenant_and_limits_hold(db).await;
}

#[tokio::test]
async fn builtin_registry_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    exercise(crate::db::connect(&url).await.unwrap()).await;
}

#[tokio::test]
async fn builtin_registry_on_postgres() {
    let url = crate::db::testing::fresh_postgres_database().await;
    exercise(crate::db::connect(&url).await.unwrap()).await;
}
