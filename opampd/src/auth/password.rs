//! Password hashing with its own bounded concurrency.
//!
//! argon2 is slow and memory-hungry on purpose. Running it on tokio's
//! blocking pool would let a flood of logins occupy the threads that serve
//! every database read, so it runs on dedicated threads: at most `workers`
//! hashes at once, at most `queue` more waiting; past that a caller is told
//! to come back instead of piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Every hashing thread and waiting slot is taken.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("password checks are saturated; retry in a second")]
pub struct Busy;

pub struct PasswordHashing {
    permits: Arc<Semaphore>,
    in_line: AtomicUsize,
    capacity: usize,
}

impl PasswordHashing {
    /// `workers` threads hash at once; `queue` more requests may wait.
    pub fn new(workers: usize, queue: usize) -> PasswordHashing {
        let workers = workers.max(1);
        PasswordHashing {
            permits: Arc::new(Semaphore::new(workers)),
            in_line: AtomicUsize::new(0),
            capacity: workers + queue,
        }
    }

    /// Sized for this machine: half the cores hash, the rest serve everything else.
    pub fn for_this_machine() -> PasswordHashing {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PasswordHashing::new(cores / 2, 32)
    }

    /// Verifies `password` against a PHC `hash` off the async workers.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        self.run(move || super::verify_password(&password, &hash))
            .await
    }

    /// Hashes a new password off the async workers.
    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, Busy> {
        self.run(move || super::hash_password(&password)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let _slot = Slot::take(&self.in_line, self.capacity).ok_or(Busy)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("password-hash".into())
            .spawn(move || {
                let _permit = permit;
                let _ = tx.send(job());
            })
            .map_err(|_| Busy)?;
        rx.await.map_err(|_| Busy)
    }
}

/// A place in line, given back when the request finishes or is dropped.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn take(counter: &'a AtomicUsize, capacity: usize) -> Option<Slot<'a>> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(counter))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_line_is_refused_and_slots_come_back() {
        let pool = Arc::new(PasswordHashing::new(1, 1));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let mut held = Vec::new();
        for _ in 0..2 {
            let (pool, rx) = (pool.clone(), release_rx.clone());
            held.push(tokio::spawn(async move {
                pool.run(move || {
                    let _ = rx.lock().unwrap().recv();
                })
                .await
            }));
        }
        while pool.in_line.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| 1).await, Err(Busy));
        release_tx.send(()).unwrap();
        release_tx.send(()).unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert_eq!(pool.run(|| 7).await, Ok(7));
        assert_eq!(pool.in_line.load(Ordering::Acquire), 0);
    }
}
