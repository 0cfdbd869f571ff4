//! `sluice-admin`: tenants, quotas, certificates and the audit trail. See
//! [`sluice_admin`].

use std::process::ExitCode;

use clap::Parser;
use sluice_admin::{run, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-admin: {e:#}");
            ExitCode::FAILURE
        }
    }
}
