//! A TCP proxy on 127.0.0.1 standing in for the network between the gateway
//! and a device: it counts the connections it accepts, and can cut them all
//! (a drop the server does not see coming) or stall them (a link that goes
//! silent: nothing passes either way and new connections hang, until it
//! comes back; the connections that were open are then found dead).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

/// See the module's comment. Stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    cut: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on a free port of 127.0.0.1.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, cuts) = watch::channel(0u64);
        let (stalled, stalls) = watch::channel(false);
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(forward(inbound, target, cuts, stalls.clone()));
            }
        });
        Ok(Proxy {
            addr,
            accepted,
            cut,
            stalled,
            task,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every open connection.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// Stops every byte (`true`) until called with `false`.
    pub fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries one connection until it ends, is cut, or stalls (then it is
/// held, silent, until the stall ends, and dropped).
async fn forward(
    mut inbound: tokio::net::TcpStream,
    target: SocketAddr,
    mut cuts: watch::Receiver<u64>,
    mut stalls: watch::Receiver<bool>,
) {
    // A connection made during a stall hangs until it ends.
    until(&mut stalls, false).await;
    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cuts.changed() => {}
        () = until(&mut stalls, true) => until(&mut stalls, false).await,
    }
}

/// Waits until the stall flag is `want` (forever once the proxy is gone).
async fn until(stalls: &mut watch::Receiver<bool>, want: bool) {
    if stalls.wait_for(|s| *s == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}
