//! The built-in schema registry, stored through sea-orm (SQLite or PostgreSQL), with the
//! Confluent Schema Registry's model so that the gateway can serve Confluent's REST API over it:
//!
//! - One row per distinct schema of a tenant (its text, parsed and written back as JSON, plus
//!   its references), so the same schema under two of a tenant's subjects gets one id. Two
//!   tenants registering the same schema get two ids, and ids are drawn at random rather than
//!   counted: neither the id a tenant gets nor whether it is new says anything about other
//!   tenants' schemas.
//! - A subject is a list of numbered versions, each pointing at a schema id. Registering a
//!   schema that is already a live version returns that version; otherwise the new version is
//!   the highest number used so far (soft-deleted included) plus one.
//! - Deletes are soft first (the version is hidden but kept), then permanent; a version that a
//!   live schema references cannot be deleted. Schema rows are never deleted: an id keeps
//!   decoding the records written with it.
//! - Compatibility levels are per subject, else global (set through the API), else the
//!   operator's default.
//!
//! - Registration has limits ([`RegistrationLimits`]): each schema's size and shape, subjects
//!   per tenant, versions per subject.
//!
//! Several gateways may share one database. Registrations and deletes run in transactions;
//! unique keys (the fingerprint, the id, and (subject, version)) settle races, and a
//! registration that loses one starts again (see [`BuiltinRegistry::register`]). A
//! registration parses and checks compatibility before its write transaction, and only checks
//! in it that what it read is unchanged: on SQLite the write lock is the whole database's, and
//! every tenant's ingestion records wait for it.

mod entity;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use apache_avro::Schema;
use async_trait::async_trait;
use sea_orm::sea_query::{Expr, LikeExpr, OnConflict};
use sea_orm::ActiveValue::Set;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use sha2::{Digest, Sha256};

use crate::db::is_unique_violation;
use crate::record::now_ms;

use super::{
    CompatibilityLevel, CompatibilityReport, RegistrationLimits, RegistryError, SchemaId,
    SchemaReference, SchemaRegistry, SubjectNaming, SubjectVersion, VersionSelector,
};
use entity::{config, schema, version};

/// The `schema_registry_config` subject that holds the global level (subjects are never empty).
const GLOBAL: &str = "";

/// How many times a registration runs when concurrent ones keep changing what it checked.
const REGISTER_ATTEMPTS: usize = 6;

/// The built-in registry. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct BuiltinRegistry {
    db: DatabaseConnection,
    default_level: CompatibilityLevel,
    /// Which tenant a subject belongs to: ids are scoped by it, and limits counted per tenant.
    naming: SubjectNaming,
    limits: RegistrationLimits,
}

impl From<DbErr> for RegistryError {
    fn from(e: DbErr) -> Self {
        RegistryError::Unavailable(format!("schema registry database: {e}"))
    }
}

/// The error for a reference that names no usable version. The gateway answers with the same
/// words for a reference to another tenant's subject, so that it reveals nothing.
pub fn missing_reference(reference: &SchemaReference) -> RegistryError {
    RegistryError::InvalidSchema(format!(
        "reference {}: version {} of subject {} does not exist",
        reference.name, reference.version, reference.subject
    ))
}

impl BuiltinRegistry {
    /// The database must be migrated already ([`crate::db::connect`] does that).
    /// `default_level` is the global level until one is set through the API.
    pub fn new(db: DatabaseConnection, default_level: CompatibilityLevel) -> Self {
        Self {
            db,
            default_level,
            naming: SubjectNaming::default(),
            limits: RegistrationLimits::default(),
        }
    }

    /// How subjects name tenants, and what a tenant may register (defaults: the default
    /// template and limits).
    pub fn with_rules(mut self, naming: SubjectNaming, limits: RegistrationLimits) -> Self {
        self.naming = naming;
        self.limits = limits;
        self
    }

    /// The tenant whose schemas `subject`'s share ids (`""` for subjects of no tenant).
    fn scope<'a>(&self, subject: &'a str) -> &'a str {
        self.naming.tenant_of(subject).unwrap_or("")
    }

    /// The subjects of `tenant`, soft-deleted ones included.
    async fn tenant_subjects(
        &self,
        conn: &impl ConnectionTrait,
        tenant: &str,
    ) -> Result<Vec<String>, DbErr> {
        let prefix = self.naming.tenant_prefix(tenant);
        let escaped: String = prefix
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let subjects: Vec<String> = version::Entity::find()
            .select_only()
            .column(version::Column::Subject)
            .distinct()
            .filter(
                version::Column::Subject.like(LikeExpr::new(format!("{escaped}%")).escape('\\')),
            )
            .into_tuple()
            .all(conn)
            .await?;
        Ok(subjects
            .into_iter()
            .filter(|subject| self.naming.tenant_of(subject) == Some(tenant))
            .collect())
    }

    /// Subjects with a live version (or any version, when `include_deleted`), sorted.
    pub async fn list_subjects(&self, include_deleted: bool) -> Result<Vec<String>, RegistryError> {
        let mut query = version::Entity::find()
            .select_only()
            .column(version::Column::Subject)
            .distinct()
            .order_by_asc(version::Column::Subject);
        if !include_deleted {
            query = query.filter(version::Column::Deleted.eq(false));
        }
        Ok(query.into_tuple::<String>().all(&self.db).await?)
    }

    /// The version numbers of a subject, ascending; `SubjectNotFound` when it has none.
    pub async fn list_versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let versions: Vec<i32> = version_rows(&self.db, subject, include_deleted)
            .await?
            .iter()
            .map(|row| row.version)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(versions)
    }

    /// One version; `Latest` is the highest among those considered.
    pub async fn get_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        include_deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let row = find_version(&self.db, subject, selector, include_deleted).await?;
        let stored = load_schema(&self.db, row.schema_id).await?;
        subject_version(&row, &stored)
    }

    /// The version of `subject` that holds this schema (Confluent's `POST /subjects/{subject}`),
    /// or `None` when the subject exists but does not hold it.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        include_deleted: bool,
    ) -> Result<Option<SubjectVersion>, RegistryError> {
        let rows = version_rows(&self.db, subject, include_deleted).await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let candidate = self
            .candidate(&self.db, subject, schema, references, Resolve::Stored)
            .await?;
        held_by(&self.db, &candidate, &rows, true).await
    }

    /// Parses a schema on its way in, within the limits, fingerprinted for `subject`'s tenant.
    async fn candidate(
        &self,
        conn: &impl ConnectionTrait,
        subject: &str,
        text: &str,
        references: &[SchemaReference],
        resolve: Resolve,
    ) -> Result<Candidate, RegistryError> {
        self.limits.check_definition(text)?;
        Candidate::parse(conn, self.scope(subject), text, references, resolve).await
    }

    /// Soft-deletes every live version of a subject, or (`permanent`) removes a subject whose
    /// versions are all soft-deleted. Returns the version numbers deleted.
    pub async fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let txn = self.begin_write().await?;
        let rows = version_rows(&txn, subject, true).await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let deleted: Vec<i32> = if permanent {
            if rows.iter().any(|row| !row.deleted) {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            version::Entity::delete_many()
                .filter(version::Column::Subject.eq(subject))
                .exec(&txn)
                .await?;
            rows.iter().map(|row| row.version).collect()
        } else {
            let live: Vec<i32> = rows
                .iter()
                .filter(|row| !row.deleted)
                .map(|row| row.version)
                .collect();
            if live.is_empty() {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
            }
            soft_delete(&txn, subject, None).await?;
            // As Confluent does: a deleted subject starts afresh, at the global level.
            config::Entity::delete_by_id(subject).exec(&txn).await?;
            live
        };
        ensure_unreferenced(&txn, subject, &deleted).await?;
        txn.commit().await?;
        Ok(deleted)
    }

    /// Soft-deletes one live version, or (`permanent`) removes a soft-deleted one. `Latest` is
    /// the highest live version for a soft delete, and the highest of all for a permanent one
    /// (so "soft-delete latest, then delete latest permanently" removes the same version).
    /// Returns the version number deleted.
    pub async fn delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
        permanent: bool,
    ) -> Result<i32, RegistryError> {
        let txn = self.begin_write().await?;
        let rows = version_rows(&txn, subject, true).await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let row = match selector {
            VersionSelector::Number(number) => rows
                .iter()
                .find(|row| row.version == number)
                .ok_or_else(|| version_not_found(subject, selector))?,
            VersionSelector::Latest if permanent => rows.last().expect("rows is not empty"),
            VersionSelector::Latest => rows
                .iter()
                .rev()
                .find(|row| !row.deleted)
                .ok_or_else(|| RegistryError::SubjectSoftDeleted(subject.to_owned()))?,
        };
        let (subject, version) = (subject.to_owned(), row.version);
        match (permanent, row.deleted) {
            (false, true) => return Err(RegistryError::VersionSoftDeleted { subject, version }),
            (true, false) => return Err(RegistryError::VersionNotSoftDeleted { subject, version }),
            _ => {}
        }
        if permanent {
            version::Entity::delete_by_id((subject.clone(), version))
                .exec(&txn)
                .await?;
        } else {
            soft_delete(&txn, &subject, Some(version)).await?;
            if !rows
                .iter()
                .any(|other| !other.deleted && other.version != version)
            {
                // The last live version: the subject is gone, as in delete_subject.
                config::Entity::delete_by_id(subject.as_str())
                    .exec(&txn)
                    .await?;
            }
        }
        ensure_unreferenced(&txn, &subject, &[version]).await?;
        txn.commit().await?;
        Ok(version)
    }

    /// The (subject, version) pairs that use schema `id`, sorted; `SchemaNotFound` when none.
    pub async fn versions_using(
        &self,
        id: SchemaId,
        include_deleted: bool,
    ) -> Result<Vec<(String, i32)>, RegistryError> {
        let not_found = || RegistryError::SchemaNotFound(id);
        let row_id = i32::try_from(id).map_err(|_| not_found())?;
        let mut query = version::Entity::find()
            .filter(version::Column::SchemaId.eq(row_id))
            .order_by_asc(version::Column::Subject)
            .order_by_asc(version::Column::Version);
        if !include_deleted {
            query = query.filter(version::Column::Deleted.eq(false));
        }
        let pairs: Vec<(String, i32)> = query
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| (row.subject, row.version))
            .collect();
        if pairs.is_empty() {
            return Err(not_found());
        }
        Ok(pairs)
    }

    /// The subjects that use schema `id`, sorted; `SchemaNotFound` when none.
    pub async fn subjects_using(
        &self,
        id: SchemaId,
        include_deleted: bool,
    ) -> Result<Vec<String>, RegistryError> {
        let mut subjects: Vec<String> = self
            .versions_using(id, include_deleted)
            .await?
            .into_iter()
            .map(|(subject, _)| subject)
            .collect();
        subjects.dedup();
        Ok(subjects)
    }

    /// The ids of the live schemas that reference this version, ascending.
    pub async fn referenced_by(
        &self,
        subject: &str,
        selector: VersionSelector,
    ) -> Result<Vec<SchemaId>, RegistryError> {
        let row = find_version(&self.db, subject, selector, false).await?;
        referencing(&self.db, subject, row.version).await
    }

    /// The level set for this subject, if any.
    pub async fn subject_level(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>, RegistryError> {
        stored_level(&self.db, subject).await
    }

    pub async fn set_subject_level(
        &self,
        subject: &str,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        if subject == GLOBAL {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        store_level(&self.db, subject, level).await
    }

    /// Removes the subject's own level (it follows the global one again); returns what it was.
    pub async fn delete_subject_level(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>, RegistryError> {
        if subject == GLOBAL {
            return Ok(None);
        }
        let previous = stored_level(&self.db, subject).await?;
        config::Entity::delete_by_id(subject).exec(&self.db).await?;
        Ok(previous)
    }

    /// The global level: as set through the API, else the operator's default.
    pub async fn global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        Ok(stored_level(&self.db, GLOBAL)
            .await?
            .unwrap_or(self.default_level))
    }

    pub async fn set_global_level(&self, level: CompatibilityLevel) -> Result<(), RegistryError> {
        store_level(&self.db, GLOBAL, level).await
    }

    /// Returns the global level to the operator's default; returns the level it was.
    pub async fn delete_global_level(&self) -> Result<CompatibilityLevel, RegistryError> {
        let previous = self.global_level().await?;
        config::Entity::delete_by_id(GLOBAL).exec(&self.db).await?;
        Ok(previous)
    }

    /// The level registrations under `subject` are checked at: its own, else the global one.
    pub async fn level_in_force(&self, subject: &str) -> Result<CompatibilityLevel, RegistryError> {
        self.level_for(&self.db, subject).await
    }

    async fn level_for(
        &self,
        conn: &impl ConnectionTrait,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        if let Some(level) = stored_level(conn, subject).await? {
            return Ok(level);
        }
        Ok(stored_level(conn, GLOBAL)
            .await?
            .unwrap_or(self.default_level))
    }

    /// Starts a transaction that will write. On SQLite it takes the database's write lock at
    /// once (waiting up to busy_timeout), so that what it reads stays true until it commits,
    /// rather than failing later when a read transaction cannot become a write one.
    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        let txn = self.db.begin().await?;
        if txn.get_database_backend() == DbBackend::Sqlite {
            txn.execute_unprepared("DELETE FROM schema_registry_versions WHERE 0 = 1")
                .await?;
        }
        Ok(txn)
    }

    /// One registration attempt. The costly part (parsing, the compatibility check) reads
    /// outside any transaction; the write transaction then checks that what was read still
    /// holds (the subject's versions, its level, the referenced versions, which it locks) and
    /// inserts, or reports a race.
    async fn try_register(
        &self,
        subject: &str,
        text: &str,
        references: &[SchemaReference],
    ) -> Result<Attempt, RegistryError> {
        let candidate = self
            .candidate(&self.db, subject, text, references, Resolve::Check)
            .await?;
        let rows = version_rows(&self.db, subject, true).await?;
        if let Some(found) = held_by(&self.db, &candidate, &rows, false).await? {
            return Ok(Attempt::Registered(found));
        }
        let tenant = self.scope(subject);
        let subjects = match (rows.is_empty(), tenant) {
            (true, tenant) if !tenant.is_empty() => {
                self.tenant_subjects(&self.db, tenant).await?.len()
            }
            _ => 0,
        };
        self.limits
            .check_counts(tenant, subject, rows.len(), subjects)?;
        let level = self.level_for(&self.db, subject).await?;
        if level != CompatibilityLevel::None {
            let live: Vec<&version::Model> = rows.iter().filter(|row| !row.deleted).collect();
            let existing = parse_versions(&self.db, &live).await?;
            let messages = violations(level, &candidate, existing).await?;
            if !messages.is_empty() {
                return Err(RegistryError::Incompatible { level, messages });
            }
        }

        let txn = self.begin_write().await?;
        let unchanged = version_rows(&txn, subject, true).await? == rows
            && self.level_for(&txn, subject).await? == level
            && referenced_texts(&txn, references, Resolve::Register).await? == candidate.referenced
            && (subjects == 0 || self.tenant_subjects(&txn, tenant).await?.len() == subjects);
        if !unchanged {
            return Ok(Attempt::Raced);
        }
        let now = now_ms();
        let stored = match find_schema(&txn, &candidate.fingerprint).await? {
            Some(stored) => stored,
            None => {
                let row = schema::Model {
                    id: random_id(),
                    fingerprint: candidate.fingerprint,
                    schema: text.to_owned(),
                    references: references_json(references),
                    created_at_ms: now,
                };
                match schema::Entity::insert(schema::ActiveModel::from(row.clone()))
                    .exec_without_returning(&txn)
                    .await
                {
                    Ok(_) => row,
                    // Another gateway registered the same schema meanwhile, or drew the id.
                    Err(e) if is_unique_violation(&e) => return Ok(Attempt::Raced),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let row = version::Model {
            subject: subject.to_owned(),
            version: rows.last().map_or(1, |last| last.version + 1),
            schema_id: stored.id,
            deleted: false,
            created_at_ms: now,
        };
        match version::Entity::insert(version::ActiveModel::from(row.clone()))
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            // Another registration under this subject took the number meanwhile.
            Err(e) if is_unique_violation(&e) => return Ok(Attempt::Raced),
            Err(e) => return Err(e.into()),
        }
        txn.commit().await?;
        subject_version(&row, &stored).map(Attempt::Registered)
    }
}

/// A schema id: random, positive, 31 bits (the Confluent wire format's id is a signed 32-bit
/// integer). Drawn, not counted, so that ids say nothing about how many schemas exist; a
/// collision fails the insert on the primary key, and the registration draws again.
fn random_id() -> i32 {
    let bits = uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff;
    bits.max(1) as i32
}

/// The live version of `subject` (or any, with `include_deleted`) that holds the candidate,
/// among the subject's `rows`. Also finds schemas stored before ids were scoped by tenant,
/// whose fingerprints are unscoped: only through this subject's own versions, so an unscoped
/// row never reaches another tenant.
async fn held_by(
    conn: &impl ConnectionTrait,
    candidate: &Candidate,
    rows: &[version::Model],
    include_deleted: bool,
) -> Result<Option<SubjectVersion>, RegistryError> {
    for fingerprint in [&candidate.fingerprint, &candidate.unscoped_fingerprint] {
        let Some(stored) = find_schema(conn, fingerprint).await? else {
            continue;
        };
        if let Some(row) = rows
            .iter()
            .rev()
            .find(|row| (include_deleted || !row.deleted) && row.schema_id == stored.id)
        {
            return subject_version(row, &stored).map(Some);
        }
    }
    Ok(None)
}

/// How one registration attempt ended, short of an error.
enum Attempt {
    Registered(SubjectVersion),
    /// A concurrent registration won a race on a unique key; try again from the start.
    Raced,
}

#[async_trait]
impl SchemaRegistry for BuiltinRegistry {
    /// A registration that loses a race (the same schema, or the next version number, taken
    /// by another gateway in the meantime) starts again and sees the winner's row.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<SubjectVersion, RegistryError> {
        if subject == GLOBAL {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        for attempt in 1..=REGISTER_ATTEMPTS {
            match self.try_register(subject, schema, references).await? {
                Attempt::Registered(version) => return Ok(version),
                Attempt::Raced => {
                    tracing::debug!(subject, attempt, "concurrent schema registration; retrying");
                }
            }
        }
        Err(RegistryError::Unavailable(format!(
            "registering under {subject} kept racing with concurrent registrations; try again"
        )))
    }

    async fn schema_by_id(
        &self,
        id: SchemaId,
    ) -> Result<(String, Vec<SchemaReference>), RegistryError> {
        let row_id = i32::try_from(id).map_err(|_| RegistryError::SchemaNotFound(id))?;
        let stored = load_schema(&self.db, row_id).await?;
        let references = references_of(&stored)?;
        Ok((stored.schema, references))
    }

    async fn version(
        &self,
        subject: &str,
        version: VersionSelector,
    ) -> Result<SubjectVersion, RegistryError> {
        self.get_version(subject, version, false).await
    }

    async fn versions(&self, subject: &str) -> Result<Vec<i32>, RegistryError> {
        self.list_versions(subject, false).await
    }

    async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.list_subjects(false).await
    }

    /// Against one version, the level's direction decides (transitive or not, there is only
    /// one to check); `Latest` of a subject without live versions is compatible, as is any
    /// schema when `version` is `None` and the subject has none.
    async fn check_compatibility(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        version: Option<VersionSelector>,
    ) -> Result<CompatibilityReport, RegistryError> {
        let candidate = self
            .candidate(&self.db, subject, schema, references, Resolve::Check)
            .await?;
        let level = self.level_for(&self.db, subject).await?;
        let live = version_rows(&self.db, subject, false).await?;
        let against: Vec<&version::Model> = match version {
            None => live.iter().collect(),
            Some(VersionSelector::Latest) => live.last().into_iter().collect(),
            Some(VersionSelector::Number(number)) => {
                match live.iter().find(|r| r.version == number) {
                    Some(row) => vec![row],
                    None if live.is_empty() => {
                        return Err(RegistryError::SubjectNotFound(subject.to_owned()))
                    }
                    None => {
                        return Err(version_not_found(subject, VersionSelector::Number(number)))
                    }
                }
            }
        };
        let existing = parse_versions(&self.db, &against).await?;
        let messages = violations(level, &candidate, existing).await?;
        Ok(CompatibilityReport {
            compatible: messages.is_empty(),
            messages,
            level,
        })
    }

    fn describe(&self) -> String {
        "built-in".into()
    }
}

/// A schema on its way in: parsed with the schemas it references, and fingerprinted.
struct Candidate {
    /// Self-contained (referenced types written out in place), for compatibility checks.
    resolved: Schema,
    /// The texts of the schemas it references, as they were when it was parsed.
    referenced: Vec<String>,
    /// What identifies it among its tenant's stored schemas (see [`fingerprint`]).
    fingerprint: String,
    /// What identified it before ids were scoped by tenant.
    unscoped_fingerprint: String,
}

/// Which versions a reference may name, and whether to lock them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// A schema being registered: live versions only, locked (PostgreSQL `FOR SHARE`) until
    /// the registration commits, so a concurrent delete either waits and then sees the new
    /// reference, or has committed already and the reference no longer resolves.
    Register,
    /// A schema being checked: live versions only.
    Check,
    /// A stored schema, or one being looked up: soft-deleted versions resolve too.
    Stored,
}

impl Candidate {
    async fn parse(
        conn: &impl ConnectionTrait,
        scope: &str,
        text: &str,
        references: &[SchemaReference],
        resolve: Resolve,
    ) -> Result<Self, RegistryError> {
        let referenced = referenced_texts(conn, references, resolve).await?;
        let (text, texts) = (text.to_owned(), referenced.clone());
        let (written, resolved) = off_the_runtime(move || parse(&text, &texts))
            .await?
            .map_err(RegistryError::InvalidSchema)?;
        Ok(Self {
            resolved,
            referenced,
            fingerprint: fingerprint(scope, &written, references),
            unscoped_fingerprint: fingerprint("", &written, references),
        })
    }
}

/// Runs CPU work (parsing schemas, comparing them) on a blocking thread: a 64 KiB schema checked
/// against its subject's versions takes tens of milliseconds, which would hold up every other
/// call sharing the async thread.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RegistryError::Unavailable(format!("schema work did not finish: {e}")))
}

/// What keeps `candidate` from being registered at `level` after `existing`.
async fn violations(
    level: CompatibilityLevel,
    candidate: &Candidate,
    existing: Vec<(i32, Schema)>,
) -> Result<Vec<String>, RegistryError> {
    let resolved = candidate.resolved.clone();
    off_the_runtime(move || level.violations(&resolved, &existing)).await
}

/// Parses `text` with the (named) schemas it references. Returns it as written (referenced
/// types by name) and self-contained (them written out in place).
fn parse(text: &str, referenced: &[String]) -> Result<(Schema, Schema), String> {
    let (written, schemata) =
        Schema::parse_str_with_list(text, referenced).map_err(|e| e.to_string())?;
    let mut resolved = written.clone();
    resolved.denormalize(&schemata).map_err(|e| e.to_string())?;
    Ok((written, resolved))
}

/// Identifies a schema among stored ones: SHA-256 of the tenant it belongs to (`scope`, empty
/// for subjects of no tenant), of the parsed schema written back as JSON (so whitespace and key
/// order do not matter) and of its references. Not Avro's Parsing Canonical Form: that drops
/// defaults and docs, and defaults decide compatibility.
fn fingerprint(scope: &str, written: &Schema, references: &[SchemaReference]) -> String {
    let mut digest = Sha256::new();
    if !scope.is_empty() {
        digest.update(format!("tenant {scope}"));
        digest.update([0]);
    }
    digest.update(serde_json::to_string(written).expect("a parsed schema serializes"));
    digest.update([0]);
    digest.update(references_json(references));
    hex::encode(digest.finalize())
}

fn references_json(references: &[SchemaReference]) -> String {
    serde_json::to_string(references).expect("references serialize")
}

fn references_of(stored: &schema::Model) -> Result<Vec<SchemaReference>, RegistryError> {
    serde_json::from_str(&stored.references).map_err(|e| {
        RegistryError::Unavailable(format!(
            "the stored references of schema {} are unreadable: {e}",
            stored.id
        ))
    })
}

/// The texts of the schemas `references` name, each after the schemas it references itself
/// (the order apache-avro's parser expects), each once.
async fn referenced_texts(
    conn: &impl ConnectionTrait,
    references: &[SchemaReference],
    resolve: Resolve,
) -> Result<Vec<String>, RegistryError> {
    // Depth-first, with a stack rather than async recursion: a schema's text is emitted once
    // everything it references has been.
    enum Step {
        Visit(SchemaReference),
        Emit(String),
    }
    let mut texts = Vec::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<Step> = references.iter().rev().cloned().map(Step::Visit).collect();
    while let Some(step) = stack.pop() {
        let reference = match step {
            Step::Emit(text) => {
                texts.push(text);
                continue;
            }
            Step::Visit(reference) => reference,
        };
        if !seen.insert((reference.subject.clone(), reference.version)) {
            continue;
        }
        let mut query = version::Entity::find_by_id((reference.subject.clone(), reference.version));
        if resolve == Resolve::Register {
            query = query.lock_shared();
        }
        let row = query
            .one(conn)
            .await?
            .filter(|row| resolve == Resolve::Stored || !row.deleted)
            .ok_or_else(|| missing_reference(&reference))?;
        let stored = load_schema(conn, row.schema_id).await?;
        let nested = references_of(&stored)?;
        stack.push(Step::Emit(stored.schema));
        stack.extend(nested.into_iter().rev().map(Step::Visit));
    }
    Ok(texts)
}

/// Parses stored versions (oldest first), for compatibility checks.
async fn parse_versions(
    conn: &impl ConnectionTrait,
    rows: &[&version::Model],
) -> Result<Vec<(i32, Schema)>, RegistryError> {
    let mut stored_texts = Vec::with_capacity(rows.len());
    for row in rows {
        let stored = load_schema(conn, row.schema_id).await?;
        let references = references_of(&stored)?;
        let referenced = referenced_texts(conn, &references, Resolve::Stored).await?;
        stored_texts.push((row.version, row.subject.clone(), stored, referenced));
    }
    off_the_runtime(move || {
        stored_texts
            .into_iter()
            .map(|(version, subject, stored, referenced)| {
                let (_, resolved) = parse(&stored.schema, &referenced).map_err(|e| {
                    RegistryError::Unavailable(format!(
                        "version {version} of {subject} (schema {}) no longer parses: {e}",
                        stored.id
                    ))
                })?;
                Ok((version, resolved))
            })
            .collect()
    })
    .await?
}

/// A subject's versions (live only unless `include_deleted`), ascending.
async fn version_rows(
    conn: &impl ConnectionTrait,
    subject: &str,
    include_deleted: bool,
) -> Result<Vec<version::Model>, DbErr> {
    let mut query = version::Entity::find()
        .filter(version::Column::Subject.eq(subject))
        .order_by_asc(version::Column::Version);
    if !include_deleted {
        query = query.filter(version::Column::Deleted.eq(false));
    }
    query.all(conn).await
}

/// The version `selector` names among those considered.
async fn find_version(
    conn: &impl ConnectionTrait,
    subject: &str,
    selector: VersionSelector,
    include_deleted: bool,
) -> Result<version::Model, RegistryError> {
    let rows = version_rows(conn, subject, include_deleted).await?;
    let found = match selector {
        VersionSelector::Latest => rows.last(),
        VersionSelector::Number(number) => rows.iter().find(|row| row.version == number),
    };
    match found {
        Some(row) => Ok(row.clone()),
        None if rows.is_empty() => Err(RegistryError::SubjectNotFound(subject.to_owned())),
        None => Err(version_not_found(subject, selector)),
    }
}

fn version_not_found(subject: &str, selector: VersionSelector) -> RegistryError {
    RegistryError::VersionNotFound {
        subject: subject.to_owned(),
        version: match selector {
            VersionSelector::Latest => "latest".to_owned(),
            VersionSelector::Number(number) => number.to_string(),
        },
    }
}

async fn find_schema(
    conn: &impl ConnectionTrait,
    fingerprint: &str,
) -> Result<Option<schema::Model>, DbErr> {
    schema::Entity::find()
        .filter(schema::Column::Fingerprint.eq(fingerprint))
        .one(conn)
        .await
}

async fn load_schema(conn: &impl ConnectionTrait, id: i32) -> Result<schema::Model, RegistryError> {
    schema::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or(RegistryError::SchemaNotFound(id as SchemaId))
}

fn subject_version(
    row: &version::Model,
    stored: &schema::Model,
) -> Result<SubjectVersion, RegistryError> {
    Ok(SubjectVersion {
        subject: row.subject.clone(),
        version: row.version,
        id: stored.id as SchemaId,
        schema: stored.schema.clone(),
        references: references_of(stored)?,
    })
}

/// Marks one live version of a subject deleted, or all of them.
async fn soft_delete(
    txn: &DatabaseTransaction,
    subject: &str,
    version: Option<i32>,
) -> Result<(), DbErr> {
    let mut update = version::Entity::update_many()
        .col_expr(version::Column::Deleted, Expr::value(true))
        .filter(version::Column::Subject.eq(subject))
        .filter(version::Column::Deleted.eq(false));
    if let Some(version) = version {
        update = update.filter(version::Column::Version.eq(version));
    }
    update.exec(txn).await?;
    Ok(())
}

/// Refuses (rolling the delete back) when a live schema references one of these versions.
/// Called after the delete's own update, which locks the rows on PostgreSQL: a registration
/// that references one of them has either committed (and is seen here) or waits for this
/// transaction and then finds the version gone.
async fn ensure_unreferenced(
    txn: &DatabaseTransaction,
    subject: &str,
    versions: &[i32],
) -> Result<(), RegistryError> {
    for &version in versions {
        let referenced_by = referencing(txn, subject, version).await?;
        if !referenced_by.is_empty() {
            return Err(RegistryError::ReferenceExists {
                subject: subject.to_owned(),
                version,
                referenced_by,
            });
        }
    }
    Ok(())
}

/// The ids of the schemas that reference (subject, version) and are some subject's live
/// version, ascending.
async fn referencing(
    conn: &impl ConnectionTrait,
    subject: &str,
    version: i32,
) -> Result<Vec<SchemaId>, RegistryError> {
    // Schemas with references are few; the references are JSON, so they are read here.
    let with_references = schema::Entity::find()
        .filter(schema::Column::References.ne(references_json(&[])))
        .all(conn)
        .await?;
    let mut ids = Vec::new();
    for stored in with_references {
        if references_of(&stored)?
            .iter()
            .any(|r| r.subject == subject && r.version == version)
        {
            ids.push(stored.id);
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut live: Vec<i32> = version::Entity::find()
        .select_only()
        .column(version::Column::SchemaId)
        .filter(version::Column::SchemaId.is_in(ids))
        .filter(version::Column::Deleted.eq(false))
        .distinct()
        .into_tuple()
        .all(conn)
        .await?;
    live.sort_unstable();
    Ok(live.into_iter().map(|id| id as SchemaId).collect())
}

async fn stored_level(
    conn: &impl ConnectionTrait,
    subject: &str,
) -> Result<Option<CompatibilityLevel>, RegistryError> {
    let Some(row) = config::Entity::find_by_id(subject).one(conn).await? else {
        return Ok(None);
    };
    row.compatibility.parse().map(Some).map_err(|e| {
        RegistryError::Unavailable(format!(
            "the stored compatibility level of {subject:?} is unreadable: {e}"
        ))
    })
}

async fn store_level(
    conn: &impl ConnectionTrait,
    subject: &str,
    level: CompatibilityLevel,
) -> Result<(), RegistryError> {
    let row = config::ActiveModel {
        subject: Set(subject.to_owned()),
        compatibility: Set(level.as_str().to_owned()),
    };
    config::Entity::insert(row)
        .on_conflict(
            OnConflict::column(config::Column::Subject)
                .update_column(config::Column::Compatibility)
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    Ok(())
}
