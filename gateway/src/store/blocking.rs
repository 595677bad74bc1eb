//! The store's own threads for its blocking calls (sled reads, commits,
//! trims), apart from tokio's shared blocking pool.
//!
//! tokio's pool also runs every host-name lookup (`TcpStream::connect` with
//! a name calls getaddrinfo there), and a lookup that waits on a DNS server
//! that does not answer holds its thread for the resolver's whole timeout,
//! with a new one at each reconnect attempt. With the store in the same
//! pool, a control plane whose name stopped resolving (its network cut, in
//! the compose example's system test) filled the pool with lookups and held
//! the store writer's commits up for 20 s: readings, rules and the REST API
//! all stalled. Here the store's work waits only for the store.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// Threads at most: as tokio's pool had for the store (each can grow a malloc
/// arena of its own, and the writer commits one batch at a time anyway).
const THREADS: usize = 4;

static POOL: OnceLock<Runtime> = OnceLock::new();

/// Runs `work` on one of the store's threads; await the handle for its result
/// (from any tokio runtime). A panic in `work` comes back as the handle's
/// `JoinError`, as with `tokio::task::spawn_blocking`.
///
/// In this crate's unit tests it is tokio's `spawn_blocking` instead: tests
/// on paused time (`start_paused`) rely on tokio not moving the clock while
/// its own pool works, which it cannot know of another runtime's pool. The
/// integration tests (tests/), like the binary, run on the store's threads.
pub fn spawn<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    #[cfg(test)]
    return tokio::task::spawn_blocking(work);
    #[cfg(not(test))]
    on_store_threads(work)
}

/// Runs `work` on the store's own threads, whatever the build.
pub fn on_store_threads<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    POOL.get_or_init(|| {
        // A runtime used only for its blocking pool: nothing drives its
        // scheduler, and nothing needs to (the work is plain blocking code).
        Builder::new_current_thread()
            .max_blocking_threads(THREADS)
            .thread_name("ferrite-store")
            .build()
            .expect("a runtime with no I/O or timer drivers has nothing that can fail to start")
    })
    .spawn_blocking(work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn store_work_runs_while_the_shared_blocking_pool_is_full() {
        // A runtime whose shared pool has 2 threads, both taken (and more
        // queued) by calls that wait, as lookups against a silent DNS server
        // do.
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (release, held) = mpsc::channel::<()>();
        let held = std::sync::Arc::new(std::sync::Mutex::new(held));
        runtime.block_on(async move {
            let mut stuck = Vec::new();
            for _ in 0..4 {
                let held = held.clone();
                stuck.push(tokio::task::spawn_blocking(move || {
                    let _ = held
                        .lock()
                        .expect("lock")
                        .recv_timeout(Duration::from_secs(10));
                }));
            }
            let answer =
                tokio::time::timeout(Duration::from_secs(2), on_store_threads(|| 6 * 7)).await;
            for _ in 0..4 {
                release.send(()).expect("release");
            }
            assert_eq!(
                answer
                    .expect("store work waited for the shared pool")
                    .expect("store work"),
                42
            );
            for handle in stuck {
                handle.await.expect("stuck call");
            }
        });
    }
}
