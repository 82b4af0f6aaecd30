//! Binding the sockets the proxy and the demo upstream listen on.
//!
//! tokio's `TcpListener::bind` goes through std, which asks Linux for a backlog of 128
//! connections not yet accepted. A burst of new connections larger than that (clients of a
//! fleet reconnecting after a deploy, a load balancer opening its pool, a proxy opening
//! hundreds of upstream connections for one wave of best-of-N) overflows it: the kernel drops
//! the SYNs past it, and each client retries only after a second, then three. The backlog asked
//! for here is 4,096, which the kernel caps at `net.core.somaxconn` (4,096 by default since
//! Linux 5.4).

use std::io;
use std::net::SocketAddr;

use tokio::net::{lookup_host, TcpListener, TcpSocket, ToSocketAddrs};

/// Connections the kernel may hold complete but not yet accepted.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (`SO_REUSEADDR`, so a restart does not wait out old connections in
/// TIME_WAIT) and listens with [`BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// [`bind`] for an address that may need resolving (`localhost:9090`): its first address.
pub async fn bind_to(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let first = lookup_host(addr).await?.next();
    let addr = first.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_past_std_backlog_is_held_until_accepted() {
        let listener = bind_to("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        // 300 connects with nobody accepting: past std's 128 the kernel would drop SYNs and
        // these would wait a second for their retry.
        let connects: Vec<_> = (0..300)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
            .collect();
        let deadline = std::time::Duration::from_millis(800);
        for connect in connects {
            let connected = tokio::time::timeout(deadline, connect).await;
            assert!(
                matches!(connected, Ok(Ok(Ok(_)))),
                "a connect waited past {deadline:?}: the backlog is too small"
            );
        }
        drop(listener);
    }
}
