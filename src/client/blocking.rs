//! A blocking wrapper of [`Client`]: its own single-threaded glommio executor, run for each
//! call. For the CLI, scripts and tests; async code should use [`Client`] directly.

use std::time::Duration;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

use super::{resolve, Client, ClientError, ClientOptions, Stored, Value};
use crate::wire::{HelloInfo, NodeStats, TopologyInfo};

/// io_uring memory of the wrapper's executor: it does no file I/O.
const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;

pub struct BlockingClient {
    // Field order matters: the client's connections must drop inside their executor's life.
    client: Client,
    executor: LocalExecutor,
}

impl BlockingClient {
    /// Connects to the node at `addr` (`host:port`).
    pub fn connect(addr: &str, options: &ClientOptions) -> Result<BlockingClient, ClientError> {
        let addr = resolve(addr)?;
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(EXECUTOR_IO_MEMORY_BYTES)
            .make()
            .map_err(|e| ClientError::Io(format!("cannot start an io_uring executor: {e}")))?;
        let client = executor.run(Client::connect(addr, options))?;
        Ok(BlockingClient { client, executor })
    }

    pub fn hello(&self) -> &HelloInfo {
        self.client.hello()
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs any future on this client's executor (for pipelining many calls at once).
    pub fn run<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.executor.run(future)
    }

    pub fn put(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<Stored, ClientError> {
        self.executor.run(self.client.put(key, value, ttl))
    }

    pub fn put_copies(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
        copies: u8,
    ) -> Result<Stored, ClientError> {
        self.executor
            .run(self.client.put_copies(key, value, ttl, copies))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, ClientError> {
        self.executor.run(self.client.get(key))
    }

    pub fn get_local(&self, key: &[u8]) -> Result<Option<Value>, ClientError> {
        self.executor.run(self.client.get_local(key))
    }

    pub fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        self.executor.run(self.client.delete(key))
    }

    pub fn ping(&self) -> Result<(), ClientError> {
        self.executor.run(self.client.ping())
    }

    pub fn stats(&self) -> Result<NodeStats, ClientError> {
        self.executor.run(self.client.stats())
    }

    pub fn topology(&self) -> Result<TopologyInfo, ClientError> {
        self.executor.run(self.client.topology())
    }
}
