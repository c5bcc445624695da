//! A few open store connections for request handlers: opening a store
//! checks its schema, far too slow to do per request.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_store::Store;

use super::ServerError;

pub struct StorePool {
    dir: PathBuf,
    idle: Mutex<Vec<Store>>,
}

impl StorePool {
    pub fn new(dir: &Path) -> StorePool {
        StorePool {
            dir: dir.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `work` with a connection on the blocking pool.
    pub async fn with<T, F>(self: &std::sync::Arc<Self>, work: F) -> Result<T, ServerError>
    where
        F: FnOnce(&mut Store) -> Result<T, ServerError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = std::sync::Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let taken = pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut store = match taken {
                Some(store) => store,
                None => Store::open(&pool.dir)?,
            };
            let result = work(&mut store);
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < 8 {
                idle.push(store);
            }
            result
        })
        .await
        .map_err(|error| ServerError::Internal(error.to_string()))?
    }
}
