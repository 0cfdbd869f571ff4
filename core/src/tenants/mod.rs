//! The tenant registry: which tenants exist, whether they are active, their quotas, which
//! client certificates authenticate them and which certificates are revoked.
//!
//! `sluice-admin` changes it; the gateway reads all of it at once as a [`TenantSnapshot`].
//! Every change writes one `registry_audit` row, naming the actor, in the same database
//! transaction as the change itself. A request that changes nothing (suspending a suspended
//! tenant, revoking a revoked certificate) succeeds and writes no audit row.
//!
//! Certificate identities are compared as strings, so they are stored in one canonical form,
//! the one [`Binding`] and [`Revocation`] document; other spellings of a hex value (upper
//! case, colons) are normalised on the way in.

mod entity;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, IsolationLevel, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::db::is_unique_violation;
use crate::record::now_ms;
use crate::tenant::TenantId;
use entity::{audit, binding, revoked, tenant};

/// What one tenant may use. Rates are per second; limits apply to one request or stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub documents_per_second: u32,
    pub bytes_per_second: u64,
    pub max_payload_bytes: u64,
    pub max_watch_streams: u32,
    pub max_top_k: u32,
    /// Calls per second other than Ingest and IngestBatch (which count documents): Search,
    /// GetIngestion, DeleteDocument, WatchIngestions, the SchemaService and the REST API.
    pub requests_per_second: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            documents_per_second: 100,
            bytes_per_second: 16 * 1024 * 1024,
            max_payload_bytes: 4 * 1024 * 1024,
            max_watch_streams: 16,
            max_top_k: 100,
            requests_per_second: 1000,
        }
    }
}

impl Quotas {
    /// These quotas with the update's values in place of the current ones.
    pub fn updated(&self, update: &QuotaUpdate) -> Quotas {
        Quotas {
            documents_per_second: update
                .documents_per_second
                .unwrap_or(self.documents_per_second),
            bytes_per_second: update.bytes_per_second.unwrap_or(self.bytes_per_second),
            max_payload_bytes: update.max_payload_bytes.unwrap_or(self.max_payload_bytes),
            max_watch_streams: update.max_watch_streams.unwrap_or(self.max_watch_streams),
            max_top_k: update.max_top_k.unwrap_or(self.max_top_k),
            requests_per_second: update
                .requests_per_second
                .unwrap_or(self.requests_per_second),
        }
    }

    /// Every quota must be positive (a tenant that may do nothing is a suspended one) and fit
    /// the database's signed 64-bit columns.
    fn validate(&self) -> Result<(), TenantError> {
        let quotas = [
            ("documents_per_second", u64::from(self.documents_per_second)),
            ("bytes_per_second", self.bytes_per_second),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_watch_streams", u64::from(self.max_watch_streams)),
            ("max_top_k", u64::from(self.max_top_k)),
            ("requests_per_second", u64::from(self.requests_per_second)),
        ];
        for (name, value) in quotas {
            if value == 0 {
                return Err(TenantError::Invalid(format!(
                    "{name} must be at least 1 (suspend the tenant to stop it)"
                )));
            }
            if i64::try_from(value).is_err() {
                return Err(TenantError::Invalid(format!(
                    "{name} must be at most {}",
                    i64::MAX
                )));
            }
        }
        Ok(())
    }
}

/// Quotas to change; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaUpdate {
    pub documents_per_second: Option<u32>,
    pub bytes_per_second: Option<u64>,
    pub max_payload_bytes: Option<u64>,
    pub max_watch_streams: Option<u32>,
    pub max_top_k: Option<u32>,
    pub requests_per_second: Option<u32>,
}

impl QuotaUpdate {
    pub fn is_empty(&self) -> bool {
        *self == QuotaUpdate::default()
    }
}

/// A suspended tenant exists (and keeps its data) but may not call the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantState {
    Active,
    Suspended,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
        }
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantState {
    type Err = TenantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(TenantState::Active),
            "suspended" => Ok(TenantState::Suspended),
            other => Err(TenantError::Invalid(format!(
                "tenant state {other:?} is neither \"active\" nor \"suspended\""
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub state: TenantState,
    pub quotas: Quotas,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A certificate identity that authenticates a tenant. Several may point at one tenant (a
/// certificate and its successor during rotation); one never points at two.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Lowercase hex SHA-256 of the certificate's DER: exactly that certificate.
    Fingerprint(String),
    /// The subject as x509-parser displays it, e.g. `CN=alice, O=Acme`.
    Subject(String),
    /// One subject alternative name with its type: `uri:spiffe://…`, `dns:host`,
    /// `email:a@b`, `ip:1.2.3.4`.
    San(String),
}

impl Binding {
    /// The `kind` column: `fingerprint`, `subject` or `san`.
    pub fn kind(&self) -> &'static str {
        match self {
            Binding::Fingerprint(_) => "fingerprint",
            Binding::Subject(_) => "subject",
            Binding::San(_) => "san",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Binding::Fingerprint(v) | Binding::Subject(v) | Binding::San(v) => v,
        }
    }

    fn from_row(kind: &str, value: String) -> Result<Self, TenantError> {
        match kind {
            "fingerprint" => Ok(Binding::Fingerprint(value)),
            "subject" => Ok(Binding::Subject(value)),
            "san" => Ok(Binding::San(value)),
            other => Err(TenantError::Invalid(format!(
                "stored binding kind {other:?} is unknown"
            ))),
        }
    }

    /// The form the registry stores and compares (lowercase hex without colons, a lowercase
    /// SAN type), or why there is none. The registry applies it to what it is given.
    pub fn canonical(self) -> Result<Self, TenantError> {
        match self {
            Binding::Fingerprint(hex) => Ok(Binding::Fingerprint(canonical_fingerprint(&hex)?)),
            Binding::Subject(subject) => {
                let subject = subject.trim();
                if subject.is_empty() {
                    return Err(TenantError::Invalid("the subject is empty".into()));
                }
                Ok(Binding::Subject(subject.to_owned()))
            }
            Binding::San(san) => {
                let (kind, value) = san.split_once(':').unwrap_or(("", ""));
                let kind = kind.to_ascii_lowercase();
                if !["uri", "dns", "email", "ip"].contains(&kind.as_str()) || value.is_empty() {
                    return Err(TenantError::Invalid(format!(
                        "SAN {san:?} is not one of uri:…, dns:…, email:… or ip:…"
                    )));
                }
                Ok(Binding::San(format!("{kind}:{value}")))
            }
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// A revoked certificate: by its issuer and serial number, by serial number alone, or by
/// fingerprint.
///
/// A serial is unique only within its issuer (RFC 5280), so a serial is revoked for one issuer.
/// `Serial` alone revokes that serial from every issuer: it is what revocations made before
/// issuers were recorded mean, and what `sluice-admin cert revoke --any-issuer` asks for. It
/// refuses too much, never too little.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// The issuer's distinguished name in the form [`Binding::Subject`] takes (as
    /// `sluice_pki::CertificateIdentity::issuer` writes it), and the serial as in `Serial`.
    IssuerSerial { issuer: String, serial: String },
    /// Lowercase hex without colons, leading zero bytes stripped.
    Serial(String),
    /// Lowercase hex SHA-256 of the certificate's DER.
    Fingerprint(String),
}

impl Revocation {
    /// The `kind` column: `issuer-serial`, `serial` or `fingerprint`.
    pub fn kind(&self) -> &'static str {
        match self {
            Revocation::IssuerSerial { .. } => "issuer-serial",
            Revocation::Serial(_) => "serial",
            Revocation::Fingerprint(_) => "fingerprint",
        }
    }

    /// The `value` column: for `issuer-serial`, the serial, a space, then the issuer (hex
    /// holds no spaces, so the first one separates them).
    pub fn value(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Revocation::IssuerSerial { issuer, serial } => format!("{serial} {issuer}").into(),
            Revocation::Serial(v) | Revocation::Fingerprint(v) => v.as_str().into(),
        }
    }

    fn from_row(kind: &str, value: String) -> Result<Self, TenantError> {
        match kind {
            "issuer-serial" => match value.split_once(' ') {
                Some((serial, issuer)) => Ok(Revocation::IssuerSerial {
                    issuer: issuer.to_owned(),
                    serial: serial.to_owned(),
                }),
                None => Err(TenantError::Invalid(format!(
                    "stored revocation {value:?} names no issuer"
                ))),
            },
            "serial" => Ok(Revocation::Serial(value)),
            "fingerprint" => Ok(Revocation::Fingerprint(value)),
            other => Err(TenantError::Invalid(format!(
                "stored revocation kind {other:?} is unknown"
            ))),
        }
    }

    /// The form the registry stores and compares, or why there is none. The registry applies
    /// it to what it is given.
    pub fn canonical(self) -> Result<Self, TenantError> {
        match self {
            Revocation::IssuerSerial { issuer, serial } => {
                let Revocation::Serial(serial) = Revocation::Serial(serial).canonical()? else {
                    unreachable!("a serial stays a serial");
                };
                let Binding::Subject(issuer) = Binding::Subject(issuer)
                    .canonical()
                    .map_err(|_| TenantError::Invalid("the issuer is empty".into()))?
                else {
                    unreachable!("a subject stays a subject");
                };
                Ok(Revocation::IssuerSerial { issuer, serial })
            }
            Revocation::Serial(hex) => {
                let invalid = || TenantError::Invalid(format!("serial {hex:?} is not hex"));
                let mut digits = hex_digits(&hex).ok_or_else(invalid)?;
                if digits.is_empty() {
                    return Err(invalid());
                }
                // Whole bytes, then without the leading zero bytes DER may add.
                if digits.len() % 2 == 1 {
                    digits.insert(0, '0');
                }
                let significant = digits.len() - digits.trim_start_matches("00").len();
                let canonical = &digits[significant.min(digits.len() - 2)..];
                Ok(Revocation::Serial(canonical.to_owned()))
            }
            Revocation::Fingerprint(hex) => {
                Ok(Revocation::Fingerprint(canonical_fingerprint(&hex)?))
            }
        }
    }
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revocation::IssuerSerial { issuer, serial } => {
                write!(f, "serial {serial} of issuer {issuer}")
            }
            Revocation::Serial(serial) => write!(f, "serial {serial} of every issuer"),
            Revocation::Fingerprint(fp) => write!(f, "fingerprint {fp}"),
        }
    }
}

/// Lowercase hex digits of `s` with colons removed, or `None` when it is not hex.
fn hex_digits(s: &str) -> Option<String> {
    let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
    digits
        .chars()
        .all(|c| c.is_ascii_hexdigit())
        .then(|| digits.to_ascii_lowercase())
}

fn canonical_fingerprint(hex: &str) -> Result<String, TenantError> {
    hex_digits(hex).filter(|d| d.len() == 64).ok_or_else(|| {
        TenantError::Invalid(format!(
            "fingerprint {hex:?} is not a SHA-256 in hex (64 digits)"
        ))
    })
}

/// One registry change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    /// `tenant.create`, `tenant.suspend`, `tenant.resume`, `tenant.quotas`,
    /// `certificate.bind`, `certificate.unbind` or `certificate.revoke`.
    pub action: String,
    pub tenant: Option<TenantId>,
    pub detail: Value,
}

/// The whole registry at one moment: what the gateway authenticates against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSnapshot {
    pub tenants: HashMap<TenantId, Tenant>,
    pub bindings: HashMap<Binding, TenantId>,
    pub revoked: HashSet<Revocation>,
}

impl TenantSnapshot {
    pub fn tenant_for(&self, binding: &Binding) -> Option<&TenantId> {
        self.bindings.get(binding)
    }

    /// Whether this revocation, or one that covers it (the same serial from every issuer, for
    /// an issuer's serial), is in force.
    pub fn is_revoked(&self, revocation: &Revocation) -> bool {
        let covered = match revocation {
            Revocation::IssuerSerial { serial, .. } => {
                self.revoked.contains(&Revocation::Serial(serial.clone()))
            }
            _ => false,
        };
        covered || self.revoked.contains(revocation)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("registry database: {0}")]
    Db(#[from] DbErr),
}

fn not_found(id: &TenantId) -> TenantError {
    TenantError::NotFound(format!("tenant {id}"))
}

/// The registry in the database. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Tenants {
    db: DatabaseConnection,
}

impl Tenants {
    /// The database must be migrated already ([`crate::db::connect`] does that).
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    pub async fn create_tenant(
        &self,
        actor: &str,
        id: &TenantId,
        name: &str,
        quotas: Quotas,
    ) -> Result<Tenant, TenantError> {
        check_actor(actor)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(TenantError::Invalid("the tenant name is empty".into()));
        }
        quotas.validate()?;
        let now = now_ms();
        let tenant = Tenant {
            id: id.clone(),
            name: name.to_owned(),
            state: TenantState::Active,
            quotas,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let txn = self.db.begin().await?;
        let exists = || TenantError::AlreadyExists(format!("tenant {id}"));
        if tenant::Entity::find_by_id(id.as_str())
            .one(&txn)
            .await?
            .is_some()
        {
            return Err(exists());
        }
        tenant::ActiveModel::from(tenant_row(&tenant))
            .insert(&txn)
            .await
            // Another admin created it between our look and our insert.
            .map_err(|e| {
                if is_unique_violation(&e) {
                    exists()
                } else {
                    e.into()
                }
            })?;
        record(
            &txn,
            actor,
            "tenant.create",
            Some(id),
            json!({ "name": tenant.name, "quotas": tenant.quotas }),
        )
        .await?;
        txn.commit().await?;
        Ok(tenant)
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<Option<Tenant>, TenantError> {
        tenant::Entity::find_by_id(id.as_str())
            .one(&self.db)
            .await?
            .map(tenant_from_row)
            .transpose()
    }

    /// All tenants, by id.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, TenantError> {
        tenant::Entity::find()
            .order_by_asc(tenant::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(tenant_from_row)
            .collect()
    }

    /// Suspends or resumes a tenant.
    pub async fn set_state(
        &self,
        actor: &str,
        id: &TenantId,
        state: TenantState,
    ) -> Result<Tenant, TenantError> {
        check_actor(actor)?;
        let txn = self.db.begin().await?;
        let mut tenant = find_tenant(&txn, id).await?;
        if tenant.state == state {
            return Ok(tenant);
        }
        let before = tenant.state;
        tenant.state = state;
        tenant.updated_at_ms = now_ms();
        tenant::ActiveModel::from(tenant_row(&tenant))
            .reset_all()
            .update(&txn)
            .await?;
        let action = match state {
            TenantState::Active => "tenant.resume",
            TenantState::Suspended => "tenant.suspend",
        };
        let detail = json!({ "from": before.as_str(), "to": state.as_str() });
        record(&txn, actor, action, Some(id), detail).await?;
        txn.commit().await?;
        Ok(tenant)
    }

    pub async fn set_quotas(
        &self,
        actor: &str,
        id: &TenantId,
        update: QuotaUpdate,
    ) -> Result<Tenant, TenantError> {
        check_actor(actor)?;
        let txn = self.db.begin().await?;
        let mut tenant = find_tenant(&txn, id).await?;
        let before = tenant.quotas;
        let after = before.updated(&update);
        after.validate()?;
        if after == before {
            return Ok(tenant);
        }
        tenant.quotas = after;
        tenant.updated_at_ms = now_ms();
        tenant::ActiveModel::from(tenant_row(&tenant))
            .reset_all()
            .update(&txn)
            .await?;
        let detail = json!({ "from": before, "to": after });
        record(&txn, actor, "tenant.quotas", Some(id), detail).await?;
        txn.commit().await?;
        Ok(tenant)
    }

    /// Lets certificates with this identity authenticate as the tenant. Binding it to the
    /// same tenant again changes nothing; a binding held by another tenant is `AlreadyExists`
    /// (unbind it first: one identity never authenticates two tenants).
    pub async fn bind_certificate(
        &self,
        actor: &str,
        id: &TenantId,
        binding: Binding,
    ) -> Result<(), TenantError> {
        check_actor(actor)?;
        let binding = binding.canonical()?;
        let txn = self.db.begin().await?;
        find_tenant(&txn, id).await?;
        let taken = |holder: &str| {
            TenantError::AlreadyExists(format!("{binding} is bound to tenant {holder}"))
        };
        if let Some(existing) = find_binding(&txn, &binding).await? {
            return if existing.tenant == id.as_str() {
                Ok(())
            } else {
                Err(taken(&existing.tenant))
            };
        }
        binding::ActiveModel {
            kind: Set(binding.kind().to_owned()),
            value: Set(binding.value().to_owned()),
            tenant: Set(id.to_string()),
            created_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                taken("another tenant (just now)")
            } else {
                e.into()
            }
        })?;
        let detail = json!({ "kind": binding.kind(), "value": binding.value() });
        record(&txn, actor, "certificate.bind", Some(id), detail).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Removes a binding, whichever tenant holds it.
    pub async fn unbind_certificate(
        &self,
        actor: &str,
        binding: &Binding,
    ) -> Result<(), TenantError> {
        check_actor(actor)?;
        let binding = binding.clone().canonical()?;
        let txn = self.db.begin().await?;
        let existing = find_binding(&txn, &binding)
            .await?
            .ok_or_else(|| TenantError::NotFound(format!("no tenant is bound to {binding}")))?;
        let holder = TenantId::parse(&existing.tenant)
            .map_err(|e| TenantError::Invalid(format!("stored binding: {e}")))?;
        binding::Entity::delete_by_id((existing.kind, existing.value))
            .exec(&txn)
            .await?;
        let detail = json!({ "kind": binding.kind(), "value": binding.value() });
        record(&txn, actor, "certificate.unbind", Some(&holder), detail).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The tenant's bindings, oldest first.
    pub async fn bindings(&self, id: &TenantId) -> Result<Vec<Binding>, TenantError> {
        find_tenant(&self.db, id).await?;
        binding::Entity::find()
            .filter(binding::Column::Tenant.eq(id.as_str()))
            .order_by_asc(binding::Column::CreatedAtMs)
            .order_by_asc(binding::Column::Kind)
            .order_by_asc(binding::Column::Value)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| Binding::from_row(&row.kind, row.value))
            .collect()
    }

    /// Refuses the certificate from now on. Revoking it again changes nothing (the first
    /// reason stays).
    pub async fn revoke(
        &self,
        actor: &str,
        revocation: Revocation,
        reason: &str,
    ) -> Result<(), TenantError> {
        check_actor(actor)?;
        let revocation = revocation.canonical()?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(TenantError::Invalid("the reason is empty".into()));
        }
        let txn = self.db.begin().await?;
        let key = (
            revocation.kind().to_owned(),
            revocation.value().into_owned(),
        );
        if revoked::Entity::find_by_id(key).one(&txn).await?.is_some() {
            return Ok(());
        }
        let inserted = revoked::ActiveModel {
            kind: Set(revocation.kind().to_owned()),
            value: Set(revocation.value().into_owned()),
            reason: Set(reason.to_owned()),
            revoked_at_ms: Set(now_ms()),
        }
        .insert(&txn)
        .await;
        match inserted {
            // Revoked concurrently by someone else: the outcome is the same.
            Err(e) if is_unique_violation(&e) => return Ok(()),
            other => other?,
        };
        // A fingerprint bound to a tenant tells whose certificate this was.
        let tenant = match &revocation {
            Revocation::Fingerprint(fp) => find_binding(&txn, &Binding::Fingerprint(fp.clone()))
                .await?
                .and_then(|row| TenantId::parse(&row.tenant).ok()),
            Revocation::IssuerSerial { .. } | Revocation::Serial(_) => None,
        };
        let detail = json!({
            "kind": revocation.kind(),
            "value": revocation.value(),
            "reason": reason,
        });
        record(&txn, actor, "certificate.revoke", tenant.as_ref(), detail).await?;
        txn.commit().await?;
        Ok(())
    }

    /// The latest `limit` changes, newest first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>, TenantError> {
        audit::Entity::find()
            .order_by_desc(audit::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                let tenant = row
                    .tenant
                    .map(|t| TenantId::parse(&t))
                    .transpose()
                    .map_err(|e| TenantError::Invalid(format!("stored audit row: {e}")))?;
                Ok(AuditEntry {
                    at_ms: row.at_ms,
                    actor: row.actor,
                    action: row.action,
                    tenant,
                    // Always JSON we wrote; kept as text rather than lost if it is not.
                    detail: serde_json::from_str(&row.detail).unwrap_or(Value::String(row.detail)),
                })
            })
            .collect()
    }

    /// Tenants, bindings and revocations as of one moment.
    pub async fn snapshot(&self) -> Result<TenantSnapshot, TenantError> {
        // One transaction so the three reads agree. SQLite transactions read one snapshot
        // already; PostgreSQL needs REPEATABLE READ for that (and SQLite warns if asked).
        let txn = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                self.db
                    .begin_with_config(Some(IsolationLevel::RepeatableRead), None)
                    .await?
            }
            _ => self.db.begin().await?,
        };
        let mut snapshot = TenantSnapshot::default();
        for row in tenant::Entity::find().all(&txn).await? {
            let tenant = tenant_from_row(row)?;
            snapshot.tenants.insert(tenant.id.clone(), tenant);
        }
        for row in binding::Entity::find().all(&txn).await? {
            let tenant = TenantId::parse(&row.tenant)
                .map_err(|e| TenantError::Invalid(format!("stored binding: {e}")))?;
            snapshot
                .bindings
                .insert(Binding::from_row(&row.kind, row.value)?, tenant);
        }
        for row in revoked::Entity::find().all(&txn).await? {
            snapshot
                .revoked
                .insert(Revocation::from_row(&row.kind, row.value)?);
        }
        txn.commit().await?;
        Ok(snapshot)
    }
}

fn check_actor(actor: &str) -> Result<(), TenantError> {
    if actor.trim().is_empty() {
        return Err(TenantError::Invalid(
            "the actor is empty: every change names who made it".into(),
        ));
    }
    Ok(())
}

/// Writes the audit row for a change, inside the change's transaction.
async fn record(
    txn: &DatabaseTransaction,
    actor: &str,
    action: &str,
    tenant: Option<&TenantId>,
    detail: Value,
) -> Result<(), DbErr> {
    audit::ActiveModel {
        id: NotSet,
        at_ms: Set(now_ms()),
        actor: Set(actor.trim().to_owned()),
        action: Set(action.to_owned()),
        tenant: Set(tenant.map(ToString::to_string)),
        detail: Set(detail.to_string()),
    }
    .insert(txn)
    .await?;
    Ok(())
}

async fn find_tenant(db: &impl ConnectionTrait, id: &TenantId) -> Result<Tenant, TenantError> {
    let row = tenant::Entity::find_by_id(id.as_str())
        .one(db)
        .await?
        .ok_or_else(|| not_found(id))?;
    tenant_from_row(row)
}

async fn find_binding(
    db: &impl ConnectionTrait,
    binding: &Binding,
) -> Result<Option<binding::Model>, DbErr> {
    binding::Entity::find_by_id((binding.kind().to_owned(), binding.value().to_owned()))
        .one(db)
        .await
}

fn tenant_row(tenant: &Tenant) -> tenant::Model {
    // Quotas were validated to fit i64 before they got here.
    let q = &tenant.quotas;
    tenant::Model {
        id: tenant.id.to_string(),
        name: tenant.name.clone(),
        state: tenant.state.as_str().to_owned(),
        documents_per_second: i64::from(q.documents_per_second),
        bytes_per_second: q.bytes_per_second as i64,
        max_payload_bytes: q.max_payload_bytes as i64,
        max_watch_streams: i64::from(q.max_watch_streams),
        max_top_k: i64::from(q.max_top_k),
        requests_per_second: i64::from(q.requests_per_second),
        created_at_ms: tenant.created_at_ms,
        updated_at_ms: tenant.updated_at_ms,
    }
}

fn tenant_from_row(row: tenant::Model) -> Result<Tenant, TenantError> {
    let id = TenantId::parse(&row.id).map_err(|e| TenantError::Invalid(e.to_string()))?;
    let quotas = Quotas {
        documents_per_second: stored_quota(&id, "documents_per_second", row.documents_per_second)?,
        bytes_per_second: stored_quota(&id, "bytes_per_second", row.bytes_per_second)?,
        max_payload_bytes: stored_quota(&id, "max_payload_bytes", row.max_payload_bytes)?,
        max_watch_streams: stored_quota(&id, "max_watch_streams", row.max_watch_streams)?,
        max_top_k: stored_quota(&id, "max_top_k", row.max_top_k)?,
        requests_per_second: stored_quota(&id, "requests_per_second", row.requests_per_second)?,
    };
    Ok(Tenant {
        id,
        name: row.name,
        state: row.state.parse()?,
        quotas,
        created_at_ms: row.created_at_ms,
        updated_at_ms: row.updated_at_ms,
    })
}

fn stored_quota<T: TryFrom<i64>>(id: &TenantId, name: &str, value: i64) -> Result<T, TenantError> {
    T::try_from(value).map_err(|_| {
        TenantError::Invalid(format!(
            "tenant {id}: stored {name} {value} is out of range"
        ))
    })
}

#[cfg(test)]
mod tests;
