//! Ingests a folder of `.txt` files into Sluice, watches until they are indexed, searches them.
//!
//! ```sh
//! cargo run -p sluice-client --example ingest_folder -- ./notes --query "what moves the tides"
//! ```
//!
//! Connects to the local stack `deploy/dev/up` starts (127.0.0.1:50051, tenant `demo`,
//! certificates in `.sluice/dev/tls`); `--target`, `--certs` and `--tenant` point it
//! elsewhere. Each file becomes one document: its id the file's path in the folder, its title
//! the first line, its text the whole file. Exits 1 if any document fails to index, 2 on bad
//! arguments or an empty folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sluice_client::{Client, Document, IngestionState};

const USAGE: &str = "usage: ingest_folder FOLDER [--query TEXT] [--top-k N] [--target HOST:PORT] \
                     [--certs DIR] [--tenant NAME] [--timeout SECONDS]";

struct Args {
    folder: PathBuf,
    query: Option<String>,
    top_k: u32,
    target: String,
    certs: PathBuf,
    tenant: String,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        folder: PathBuf::new(),
        query: None,
        top_k: 3,
        target: "127.0.0.1:50051".into(),
        certs: PathBuf::from(".sluice/dev/tls"),
        tenant: "demo".into(),
        timeout: Duration::from_secs(300),
    };
    let mut folder = None;
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || given.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--query" => args.query = Some(value()?),
            "--top-k" => args.top_k = value()?.parse().map_err(|e| format!("--top-k: {e}"))?,
            "--target" => args.target = value()?,
            "--certs" => args.certs = value()?.into(),
            "--tenant" => args.tenant = value()?,
            "--timeout" => {
                let seconds: f64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                args.timeout =
                    Duration::try_from_secs_f64(seconds).map_err(|e| format!("--timeout: {e}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ if folder.is_none() => folder = Some(PathBuf::from(arg)),
            _ => return Err(format!("one folder only ({arg}?)")),
        }
    }
    args.folder = folder.ok_or("no folder given")?;
    Ok(args)
}

/// The `.txt` files under `dir`, sorted.
fn text_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            text_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            found.push(path);
        }
    }
    found.sort();
    Ok(())
}

fn documents(
    folder: &Path,
    files: &[PathBuf],
) -> Result<Vec<Document>, Box<dyn std::error::Error>> {
    let folder_name = std::fs::canonicalize(folder)?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)?;
        let name = path
            .strip_prefix(folder)?
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let title = match text.trim().lines().next() {
            Some(line) => line.chars().take(200).collect(),
            None => path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        };
        let fields = json!({"title": title, "text": text, "source": name});
        documents.push(Document::new(name, fields).with_attribute("folder", folder_name.clone()));
    }
    Ok(documents)
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    text_files(&args.folder, &mut files)?;
    if files.is_empty() {
        eprintln!("no .txt files in {}", args.folder.display());
        return Ok(ExitCode::from(2));
    }
    let documents = documents(&args.folder, &files)?;
    let folder = documents[0].attributes["folder"].clone();
    let first_title = documents[0].fields["title"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let sluice = Client::from_directory(&args.target, &args.certs, Some(&args.tenant))?;
    let accepted = sluice.ingest_many(documents).await?;
    println!(
        "accepted {} documents; watching until they are indexed",
        accepted.len()
    );
    let mut failed = 0;
    let mut events = sluice
        .watch()
        .ingestion_ids(accepted.iter().map(|a| a.ingestion_id.clone()))
        .timeout(args.timeout);
    while let Some(event) = events.next().await {
        let ingestion = event?.ingestion;
        let detail = match ingestion.state {
            IngestionState::Indexed => format!("{} chunk(s)", ingestion.chunk_count),
            IngestionState::Failed => ingestion.failure_reason.clone(),
            _ => String::new(),
        };
        println!(
            "  {:<30} {:<8} {detail}",
            ingestion.document_id, ingestion.state
        );
        failed += usize::from(ingestion.state == IngestionState::Failed);
    }
    println!("indexed {} of {}", accepted.len() - failed, accepted.len());

    let query = args.query.unwrap_or(first_title);
    println!("searching: \"{query}\"");
    let hits = sluice
        .search(&query)
        .top_k(args.top_k)
        .filter("folder", folder)
        .await?;
    for hit in hits {
        let text = hit.text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text.chars().take(70).collect();
        println!(
            "  {:.3}  {:<30} #{}  {text}",
            hit.score, hit.document_id, hit.chunk_index
        );
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("{why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
