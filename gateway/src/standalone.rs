//! Gateway and worker in one process, sharing the model and the embedded vector store (which
//! only one process may open). The local stack and the tests run this way.

use sluice_core::config::Config;
use sluice_worker::{Worker, WorkerHandle};

use crate::server::{Gateway, RunningGateway, Shared};

pub struct Standalone {
    pub gateway: RunningGateway,
    pub shared: Shared,
    config: Config,
    worker: Option<WorkerHandle>,
}

impl Standalone {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let shared = Shared::open(config).await?;
        // The gateway creates the topics the worker subscribes to.
        let gateway = Gateway::start(config, shared.clone()).await?;
        let mut standalone = Self {
            gateway,
            shared,
            config: config.clone(),
            worker: None,
        };
        standalone.start_worker()?;
        Ok(standalone)
    }

    /// Starts the worker (again); it resumes from the group's committed offsets.
    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        let indexer = sluice_worker::indexer_for(
            &self.config,
            self.shared.schemas.clone(),
            self.shared.embedder.clone(),
            self.shared.store.clone(),
        )?;
        self.worker = Some(
            Worker::new(
                self.config.kafka.clone(),
                self.config.worker.clone(),
                indexer,
            )
            .spawn(),
        );
        Ok(())
    }

    /// Stops the worker after its current batch; the gateway keeps serving.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await;
        }
    }

    /// Stops the worker mid-flight, as a crash would (for tests of recovery).
    pub fn crash_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }

    /// The gateway first (no new work), then the worker finishes its batch and leaves.
    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        if let Some(worker) = self.worker {
            worker.shutdown().await;
        }
    }
}
