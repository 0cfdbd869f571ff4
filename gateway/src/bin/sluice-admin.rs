//! `sluice-admin`: tenants, quotas, certificates and the audit trail. See
//! [`sluice_gateway::admin`].

use std::process::ExitCode;

use clap::Parser;
use sluice_gateway::admin::{run, Cli};

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
