//! `sluice-admin`: the operator's command line for the tenant registry (tenants, their
//! state and quotas, certificate bindings and revocations, the audit trail), for
//! development certificates, for looking up an ingestion, and for re-driving dead letters.
//!
//! It reads the same configuration as the gateway to find the database. Every change is
//! recorded in the registry's audit trail under `--actor`. Certificate commands that only
//! write files (`cert init-ca`, `cert server`) need no database.
//!
//! A crate of its own so that the operator's tool links neither the model nor the worker.
//!
//! # Layout
//! - this file: the command line and what each command does.
//! - [`redrive`]: sends dead letters back for another try, exactly once.

pub mod redrive;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};
use sluice_core::config::Config;
use sluice_core::tenant::TenantId;
use sluice_core::tenants::{
    Binding, QuotaUpdate, Quotas, Revocation, Tenant, TenantState, Tenants,
};

use sluice_pki::{Authority, CertSpec, CertificateIdentity, Issued};

/// The SPIFFE trust domain tenant certificates are issued in, unless `--trust-domain` says.
pub const DEFAULT_TRUST_DOMAIN: &str = "sluice.local";

#[derive(Parser, Debug)]
#[command(
    name = "sluice-admin",
    version,
    about = "Manage Sluice tenants, their quotas and certificates, and read the audit trail"
)]
pub struct Cli {
    /// TOML configuration file, as the gateway's (default: ./sluice.toml when present).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Directory of the embedded database [data_dir].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Who is making changes, recorded in the audit trail [default: $USER@<host name>].
    #[arg(long, env = "SLUICE_ADMIN_ACTOR", global = true)]
    actor: Option<String>,
    /// SPIFFE trust domain of tenant certificates [default: sluice.local].
    #[arg(long, global = true)]
    trust_domain: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, show, suspend and resume tenants; change their quotas.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Development certificates, certificate bindings and revocations.
    #[command(subcommand)]
    Cert(CertCommand),
    /// The latest registry changes, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Records that failed for good and went to the dead-letter topic.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// One ingestion as the gateway recorded it, with its Kafka position (which tenants are
    /// not shown: offsets on a shared partition count other tenants' records).
    #[command(subcommand)]
    Ingestion(IngestionCommand),
}

#[derive(Subcommand, Debug)]
enum IngestionCommand {
    Show {
        #[arg(value_parser = TenantId::parse)]
        tenant: TenantId,
        ingestion_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// Send dead letters back to the documents topic as new ingestions, once each, after the
    /// cause of their failure is fixed.
    Redrive {
        /// At most this many in one run.
        #[arg(long, default_value_t = 1000)]
        max: usize,
        /// Only list what would be re-driven.
        #[arg(long)]
        dry_run: bool,
        /// Give up reading the dead-letter topic after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Create an active tenant; quotas not given take their defaults.
    Create {
        #[arg(value_parser = TenantId::parse)]
        id: TenantId,
        /// Display name [default: the id].
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        quotas: QuotaFlags,
    },
    /// All tenants with their state and quotas.
    List,
    /// One tenant, with the certificate identities bound to it.
    Show {
        #[arg(value_parser = TenantId::parse)]
        id: TenantId,
    },
    /// Refuse the tenant's requests from now on; its data stays.
    Suspend {
        #[arg(value_parser = TenantId::parse)]
        id: TenantId,
    },
    /// Accept the tenant's requests again.
    Resume {
        #[arg(value_parser = TenantId::parse)]
        id: TenantId,
    },
    /// Change the quotas given; with none, show the current ones.
    Quotas {
        #[arg(value_parser = TenantId::parse)]
        id: TenantId,
        #[command(flatten)]
        quotas: QuotaFlags,
    },
}

#[derive(Args, Debug, Clone, Copy)]
struct QuotaFlags {
    /// Documents per second.
    #[arg(long)]
    documents_per_second: Option<u32>,
    /// Payload bytes per second.
    #[arg(long)]
    bytes_per_second: Option<u64>,
    /// Largest payload of one document, in bytes.
    #[arg(long)]
    max_payload_bytes: Option<u64>,
    /// Concurrent WatchIngestions streams.
    #[arg(long)]
    max_watch_streams: Option<u32>,
    /// Largest top_k of one search.
    #[arg(long)]
    max_top_k: Option<u32>,
    /// Calls per second other than ingestions (searches, lookups, watches, schemas).
    #[arg(long)]
    requests_per_second: Option<u32>,
}

impl From<QuotaFlags> for QuotaUpdate {
    fn from(flags: QuotaFlags) -> Self {
        QuotaUpdate {
            documents_per_second: flags.documents_per_second,
            bytes_per_second: flags.bytes_per_second,
            max_payload_bytes: flags.max_payload_bytes,
            max_watch_streams: flags.max_watch_streams,
            max_top_k: flags.max_top_k,
            requests_per_second: flags.requests_per_second,
        }
    }
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Create a development CA: ca.pem and ca-key.pem (readable by the owner only).
    InitCa {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Sluice development CA")]
        common_name: String,
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue the gateway's server certificate: server.pem and server-key.pem.
    Server {
        /// Where ca.pem and ca-key.pem are.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Host name or IP address clients connect to; repeat for several.
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a tenant's client certificate (<tenant>.pem, <tenant>-key.pem) and bind its
    /// fingerprint to the tenant.
    Client {
        #[arg(value_parser = TenantId::parse)]
        tenant: TenantId,
        /// Where ca.pem and ca-key.pem are.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue a worker's client certificate (worker-<name>.pem, worker-<name>-key.pem): a
    /// `sluice-worker` without the database reads schemas by id through the gateway's
    /// registry API with it. It acts for no tenant.
    Worker {
        /// The worker's name (lowercase letters, digits and '-').
        #[arg(value_parser = worker_name)]
        name: String,
        /// Where ca.pem and ca-key.pem are.
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36500))]
        days: u64,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Let certificates with this identity authenticate as the tenant.
    Bind {
        #[arg(value_parser = TenantId::parse)]
        tenant: TenantId,
        #[command(flatten)]
        identity: BindingFlags,
    },
    /// Remove a binding, whichever tenant holds it.
    Unbind {
        #[command(flatten)]
        identity: BindingFlags,
    },
    /// Refuse a certificate from now on.
    Revoke {
        #[command(flatten)]
        certificate: RevocationFlags,
        #[command(flatten)]
        issuer: IssuerFlags,
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct BindingFlags {
    /// A certificate file: binds its fingerprint.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// SHA-256 of the certificate's DER, hex (colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
    /// The certificate subject, e.g. "CN=alice, O=Acme".
    #[arg(long)]
    subject: Option<String>,
    /// A subject alternative name: uri:…, dns:…, email:… or ip:….
    #[arg(long)]
    san: Option<String>,
}

impl BindingFlags {
    /// The binding, in the registry's canonical form so it prints as stored.
    fn binding(&self) -> anyhow::Result<Binding> {
        let binding = match self {
            BindingFlags {
                cert: Some(path), ..
            } => Binding::Fingerprint(read_identity(path)?.fingerprint),
            BindingFlags {
                fingerprint: Some(hex),
                ..
            } => Binding::Fingerprint(hex.clone()),
            BindingFlags {
                subject: Some(subject),
                ..
            } => Binding::Subject(subject.clone()),
            BindingFlags { san: Some(san), .. } => Binding::San(san.clone()),
            _ => bail!("give one of --cert, --fingerprint, --subject or --san"),
        };
        Ok(binding.canonical()?)
    }
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct RevocationFlags {
    /// A certificate file: revokes its serial and its fingerprint.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Serial number, hex (colons allowed), with --issuer (serials are unique per issuer only)
    /// or --any-issuer.
    #[arg(long)]
    serial: Option<String>,
    /// SHA-256 of the certificate's DER, hex (colons allowed).
    #[arg(long)]
    fingerprint: Option<String>,
}

#[derive(Args, Debug)]
struct IssuerFlags {
    /// The issuing CA's subject, e.g. "CN=Sluice development CA" (`openssl x509 -issuer`).
    #[arg(long, requires = "serial", conflicts_with = "any_issuer")]
    issuer: Option<String>,
    /// Revoke the serial whichever CA issued it.
    #[arg(long, requires = "serial")]
    any_issuer: bool,
}

impl RevocationFlags {
    /// The revocations, in the registry's canonical form so they print as stored.
    fn revocations(&self, issuer: &IssuerFlags) -> anyhow::Result<Vec<Revocation>> {
        let revocations: Vec<Revocation> = match self {
            RevocationFlags {
                cert: Some(path), ..
            } => read_identity(path)?.revocations().into(),
            RevocationFlags {
                serial: Some(hex), ..
            } => match (&issuer.issuer, issuer.any_issuer) {
                (Some(issuer), _) => vec![Revocation::IssuerSerial {
                    issuer: issuer.clone(),
                    serial: hex.clone(),
                }],
                (None, true) => vec![Revocation::Serial(hex.clone())],
                (None, false) => bail!(
                    "a serial is unique only within its issuer: give --issuer (the CA's \
                     subject) or --any-issuer"
                ),
            },
            RevocationFlags {
                fingerprint: Some(hex),
                ..
            } => vec![Revocation::Fingerprint(hex.clone())],
            _ => bail!("give one of --cert, --serial or --fingerprint"),
        };
        revocations
            .into_iter()
            .map(|r| r.canonical().map_err(Into::into))
            .collect()
    }
}

impl Cli {
    fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }

    fn actor(&self) -> String {
        self.actor.clone().unwrap_or_else(default_actor)
    }

    /// The configuration, as the gateway would read it.
    fn config(&self) -> anyhow::Result<Config> {
        let mut overrides = Map::new();
        if let Some(dir) = &self.data_dir {
            overrides.insert("data_dir".into(), json!(dir));
        }
        Ok(Config::load(
            self.config.as_deref(),
            Value::Object(overrides),
        )?)
    }

    /// The registry in the configured database (migrated on connect, like the gateway's).
    async fn database(&self) -> anyhow::Result<sea_orm::DatabaseConnection> {
        let url = self.config()?.database_url();
        sluice_core::db::connect(&url)
            .await
            .with_context(|| format!("database {}", redact_password(&url)))
    }

    async fn registry(&self) -> anyhow::Result<Tenants> {
        Ok(Tenants::new(self.database().await?))
    }
}

/// Runs one command, printing its outcome to stdout.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Tenant(command) => tenant(&cli, command).await,
        Command::Cert(command) => cert(&cli, command).await,
        Command::Audit { limit } => audit(&cli, *limit).await,
        Command::DeadLetters(command) => dead_letters(&cli, command).await,
        Command::Ingestion(IngestionCommand::Show {
            tenant,
            ingestion_id,
        }) => show_ingestion(&cli, tenant, ingestion_id).await,
    }
}

async fn dead_letters(cli: &Cli, command: &DeadLetterCommand) -> anyhow::Result<()> {
    let DeadLetterCommand::Redrive {
        max,
        dry_run,
        timeout_secs,
    } = command;
    let options = crate::redrive::Options {
        max: *max,
        dry_run: *dry_run,
        timeout: Duration::from_secs(*timeout_secs),
    };
    let report = crate::redrive::redrive(&cli.config()?, &options).await?;
    for unreadable in &report.unreadable {
        println!("unreadable, not re-driven: {unreadable}");
    }
    if report.redriven.is_empty() {
        println!("no dead letters to re-drive");
        return Ok(());
    }
    let rows = report
        .redriven
        .iter()
        .map(|r| {
            vec![
                r.tenant.clone(),
                r.document_id.clone(),
                r.failed_ingestion_id.clone(),
                r.ingestion_id.clone().unwrap_or_else(|| "-".into()),
                r.error.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "TENANT",
            "DOCUMENT",
            "FAILED INGESTION",
            "NEW INGESTION",
            "ERROR",
        ],
        rows,
    );
    if *dry_run {
        println!(
            "dry run: {} dead letter(s) would be re-driven",
            report.redriven.len()
        );
    } else {
        println!("re-drove {} dead letter(s)", report.redriven.len());
    }
    Ok(())
}

async fn tenant(cli: &Cli, command: &TenantCommand) -> anyhow::Result<()> {
    let registry = cli.registry().await?;
    let actor = cli.actor();
    match command {
        TenantCommand::Create { id, name, quotas } => {
            let name = name.clone().unwrap_or_else(|| id.to_string());
            let quotas = Quotas::default().updated(&(*quotas).into());
            let tenant = registry.create_tenant(&actor, id, &name, quotas).await?;
            println!("created tenant {}", tenant.id);
            print_tenant(&tenant, None, cli.trust_domain());
        }
        TenantCommand::List => {
            let tenants = registry.list_tenants().await?;
            if tenants.is_empty() {
                println!("no tenants");
                return Ok(());
            }
            let header = [
                "ID",
                "NAME",
                "STATE",
                "DOCS/S",
                "BYTES/S",
                "MAX PAYLOAD",
                "WATCHES",
                "TOP K",
                "CALLS/S",
            ];
            let rows = tenants
                .iter()
                .map(|t| {
                    let q = &t.quotas;
                    vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.state.to_string(),
                        q.documents_per_second.to_string(),
                        q.bytes_per_second.to_string(),
                        q.max_payload_bytes.to_string(),
                        q.max_watch_streams.to_string(),
                        q.max_top_k.to_string(),
                        q.requests_per_second.to_string(),
                    ]
                })
                .collect();
            print_table(&header, rows);
        }
        TenantCommand::Show { id } => {
            let tenant = registry
                .tenant(id)
                .await?
                .with_context(|| format!("tenant {id} does not exist"))?;
            let bindings = registry.bindings(id).await?;
            print_tenant(&tenant, Some(&bindings), cli.trust_domain());
        }
        TenantCommand::Suspend { id } => {
            let tenant = registry
                .set_state(&actor, id, TenantState::Suspended)
                .await?;
            println!("tenant {} is {}", tenant.id, tenant.state);
        }
        TenantCommand::Resume { id } => {
            let tenant = registry.set_state(&actor, id, TenantState::Active).await?;
            println!("tenant {} is {}", tenant.id, tenant.state);
        }
        TenantCommand::Quotas { id, quotas } => {
            let update = QuotaUpdate::from(*quotas);
            let tenant = if update.is_empty() {
                registry
                    .tenant(id)
                    .await?
                    .with_context(|| format!("tenant {id} does not exist"))?
            } else {
                registry.set_quotas(&actor, id, update).await?
            };
            println!("quotas of tenant {}:", tenant.id);
            print_quotas(&tenant.quotas);
        }
    }
    Ok(())
}

async fn cert(cli: &Cli, command: &CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::InitCa {
            out,
            common_name,
            days,
            force,
        } => {
            let ca_pem = out.join("ca.pem");
            let key_pem = out.join("ca-key.pem");
            refuse_overwrite(&[&ca_pem, &key_pem], *force)?;
            let ca = Authority::generate(common_name, days_from(*days))?;
            write_file(&ca_pem, &ca.cert_pem(), false)?;
            write_file(&key_pem, &ca.key_pem(), true)?;
            let identity = CertificateIdentity::from_pem(&ca.cert_pem())?;
            println!("wrote {} and {}", ca_pem.display(), key_pem.display());
            print_identity(&identity);
        }
        CertCommand::Server {
            ca_dir,
            out,
            names,
            days,
            force,
        } => {
            let cert_pem = out.join("server.pem");
            let key_pem = out.join("server-key.pem");
            refuse_overwrite(&[&cert_pem, &key_pem], *force)?;
            let ca = load_authority(ca_dir)?;
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let issued = ca.issue(&CertSpec::server(&names, days_from(*days)))?;
            write_issued(&issued, &cert_pem, &key_pem)?;
            print_identity(&issued.identity);
        }
        CertCommand::Client {
            tenant,
            ca_dir,
            out,
            days,
            force,
        } => {
            let cert_pem = out.join(format!("{tenant}.pem"));
            let key_pem = out.join(format!("{tenant}-key.pem"));
            refuse_overwrite(&[&cert_pem, &key_pem], *force)?;
            let ca = load_authority(ca_dir)?;
            let registry = cli.registry().await?;
            let known = registry.tenant(tenant).await?.with_context(|| {
                format!("tenant {tenant} does not exist: create it first (sluice-admin tenant create {tenant})")
            })?;
            let spec = CertSpec::client_for_tenant(cli.trust_domain(), tenant, days_from(*days));
            let issued = ca.issue(&spec)?;
            // The SPIFFE URI already names the tenant; the fingerprint binding also tells the
            // registry about this very certificate. Bound before the files are written, so a
            // failure leaves no certificate the registry does not know.
            let fingerprint = Binding::Fingerprint(issued.identity.fingerprint.clone());
            registry
                .bind_certificate(&cli.actor(), tenant, fingerprint)
                .await?;
            write_issued(&issued, &cert_pem, &key_pem)?;
            print_identity(&issued.identity);
            println!("bound its fingerprint to tenant {tenant}");
            if known.state == TenantState::Suspended {
                println!("note: tenant {tenant} is suspended; resume it before it can connect");
            }
        }
        CertCommand::Worker {
            name,
            ca_dir,
            out,
            days,
            force,
        } => {
            let cert_pem = out.join(format!("worker-{name}.pem"));
            let key_pem = out.join(format!("worker-{name}-key.pem"));
            refuse_overwrite(&[&cert_pem, &key_pem], *force)?;
            let ca = load_authority(ca_dir)?;
            let spec = CertSpec::client_for_worker(cli.trust_domain(), name, days_from(*days));
            let issued = ca.issue(&spec)?;
            write_issued(&issued, &cert_pem, &key_pem)?;
            print_identity(&issued.identity);
        }
        CertCommand::Bind { tenant, identity } => {
            let binding = identity.binding()?;
            let registry = cli.registry().await?;
            registry
                .bind_certificate(&cli.actor(), tenant, binding.clone())
                .await?;
            println!("bound {binding} to tenant {tenant}");
        }
        CertCommand::Unbind { identity } => {
            let binding = identity.binding()?;
            let registry = cli.registry().await?;
            registry.unbind_certificate(&cli.actor(), &binding).await?;
            println!("unbound {binding}");
        }
        CertCommand::Revoke {
            certificate,
            issuer,
            reason,
        } => {
            let revocations = certificate.revocations(issuer)?;
            let registry = cli.registry().await?;
            for revocation in revocations {
                registry
                    .revoke(&cli.actor(), revocation.clone(), reason)
                    .await?;
                println!("revoked {revocation} ({reason})");
            }
        }
    }
    Ok(())
}

async fn show_ingestion(cli: &Cli, tenant: &TenantId, ingestion_id: &str) -> anyhow::Result<()> {
    let db = cli.database().await?;
    let Some(row) = sluice_core::db::projection::get(&db, tenant.as_str(), ingestion_id).await?
    else {
        bail!("tenant {tenant} has no ingestion {ingestion_id}");
    };
    println!("ingestion: {}", row.ingestion_id);
    println!("tenant:    {}", row.tenant);
    println!("document:  {}", row.document_id);
    println!("operation: {}", row.operation);
    println!("state:     {}", row.state);
    println!(
        "kafka:     {} partition {} offset {}",
        row.kafka_topic, row.kafka_partition, row.kafka_offset
    );
    println!("chunks:    {}", row.chunk_count);
    println!("accepted:  {}", format_ms(row.accepted_at_ms));
    if let Some(at) = row.completed_at_ms {
        println!("completed: {}", format_ms(at));
    }
    if let Some(reason) = &row.failure_reason {
        println!("failure:   {reason}");
    }
    Ok(())
}

async fn audit(cli: &Cli, limit: u64) -> anyhow::Result<()> {
    let registry = cli.registry().await?;
    let entries = registry.audit(limit).await?;
    if entries.is_empty() {
        println!("no changes recorded");
        return Ok(());
    }
    let rows = entries
        .into_iter()
        .map(|e| {
            vec![
                format_ms(e.at_ms),
                e.actor,
                e.action,
                e.tenant
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                e.detail.to_string(),
            ]
        })
        .collect();
    print_table(&["AT", "ACTOR", "ACTION", "TENANT", "DETAIL"], rows);
    Ok(())
}

fn print_tenant(tenant: &Tenant, bindings: Option<&[Binding]>, trust_domain: &str) {
    println!("id:       {}", tenant.id);
    println!("name:     {}", tenant.name);
    println!("state:    {}", tenant.state);
    println!("created:  {}", format_ms(tenant.created_at_ms));
    println!("updated:  {}", format_ms(tenant.updated_at_ms));
    println!("quotas:");
    print_quotas(&tenant.quotas);
    println!("identity: spiffe://{trust_domain}/tenant/{}", tenant.id);
    if let Some(bindings) = bindings {
        println!("bindings:");
        if bindings.is_empty() {
            println!("  none");
        }
        for binding in bindings {
            println!("  {binding}");
        }
    }
}

fn print_quotas(q: &Quotas) {
    println!("  documents_per_second  {}", q.documents_per_second);
    println!("  bytes_per_second      {}", q.bytes_per_second);
    println!("  max_payload_bytes     {}", q.max_payload_bytes);
    println!("  max_watch_streams     {}", q.max_watch_streams);
    println!("  max_top_k             {}", q.max_top_k);
    println!("  requests_per_second   {}", q.requests_per_second);
}

fn print_identity(identity: &CertificateIdentity) {
    println!("subject:     {}", identity.subject);
    for san in &identity.sans {
        println!("san:         {san}");
    }
    println!("fingerprint: {}", identity.fingerprint);
    println!("serial:      {}", identity.serial);
    println!("not after:   {}", format_ms(identity.not_after * 1000));
}

/// Columns padded to their widest cell; the last one is left ragged.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let padded: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i == last {
                    cell.to_owned()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", padded.join("  "));
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn load_authority(ca_dir: &Path) -> anyhow::Result<Authority> {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        fs::read_to_string(&path).with_context(|| {
            format!(
                "{} (create a CA with: sluice-admin cert init-ca --out {})",
                path.display(),
                ca_dir.display()
            )
        })
    };
    Authority::from_pem(&read("ca.pem")?, &read("ca-key.pem")?)
        .with_context(|| format!("the CA in {}", ca_dir.display()))
}

fn read_identity(path: &Path) -> anyhow::Result<CertificateIdentity> {
    let pem = fs::read_to_string(path).with_context(|| path.display().to_string())?;
    CertificateIdentity::from_pem(&pem).with_context(|| path.display().to_string())
}

fn refuse_overwrite(paths: &[&Path], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for path in paths {
        if path.exists() {
            bail!("{} exists; --force replaces it", path.display());
        }
    }
    Ok(())
}

fn write_issued(issued: &Issued, cert_pem: &Path, key_pem: &Path) -> anyhow::Result<()> {
    write_file(cert_pem, &issued.cert_pem, false)?;
    write_file(key_pem, &issued.key_pem, true)?;
    println!("wrote {} and {}", cert_pem.display(), key_pem.display());
    Ok(())
}

/// Writes a file, creating its directory; private keys are readable by the owner only, from
/// the moment the file exists.
fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| path.display().to_string())?;
    // `mode` only applies to new files; a replaced one keeps its old permissions otherwise.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .and_then(|()| file.write_all(contents.as_bytes()))
        .with_context(|| path.display().to_string())
}

fn days_from(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(24 * 60 * 60))
}

/// `$USER@<host name>`.
fn default_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

/// The URL for error messages, without a password.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A worker's name: what a SPIFFE path segment and a file name can both hold.
fn worker_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err("1 to 63 lowercase letters, digits and '-', not starting with '-'".into())
    }
}
