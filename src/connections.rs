//! Connection limits, checked when a connection is accepted: per client address
//! (`server.max_connections_per_ip`) and in all (`server.max_connections`).
//!
//! Each open connection holds a file descriptor, and best-of-N requests need more of them for
//! their upstream calls. Without a bound, one address can open connections until the process
//! runs out of descriptors and every upstream call fails. A refused connection gets a short
//! HTTP/1.1 answer (429 for its address, 503 for the whole proxy) and is closed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ServerConfig;
use crate::error::ApiError;

/// Open connections, by client address and in all.
#[derive(Debug)]
pub struct ConnectionLimits {
    per_address: usize,
    total: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    open_total: AtomicUsize,
}

/// Why a new connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerAddress(usize),
    Total(usize),
}

/// One admitted connection; releases its place when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    /// Limits from the config; `server.max_connections = 0` becomes half the process's
    /// file-descriptor limit, leaving the other half for upstream connections.
    pub fn from_config(server: &ServerConfig) -> Arc<ConnectionLimits> {
        let descriptors = descriptor_limit();
        let total = match server.max_connections {
            0 => descriptors.map_or(usize::MAX, |limit| (limit / 2).max(1)),
            n => n,
        };
        let per_address = match server.max_connections_per_ip {
            0 => usize::MAX,
            n => n,
        };
        Arc::new(ConnectionLimits {
            per_address,
            total,
            open: Mutex::new(HashMap::new()),
            open_total: AtomicUsize::new(0),
        })
    }

    /// The bound on all open connections, as applied.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let address = address_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.open_total.load(Ordering::Relaxed) >= self.total {
            return Err(Refusal::Total(self.total));
        }
        let count = open.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(Refusal::PerAddress(self.per_address));
        }
        *count += 1;
        self.open_total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionSlot {
            limits: self.clone(),
            address,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
        self.limits.open_total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Refusal {
    /// The `reason` label of `bon_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress(_) => "per_ip",
            Refusal::Total(_) => "total",
        }
    }

    fn error(self) -> ApiError {
        match self {
            Refusal::PerAddress(limit) => ApiError::too_many_connections(format!(
                "Your address already has {limit} open connections to the proxy \
                 (server.max_connections_per_ip). Reuse connections, or close some and retry."
            )),
            Refusal::Total(limit) => ApiError::overloaded(format!(
                "The proxy is at its limit of {limit} open connections (server.max_connections); \
                 retry shortly."
            )),
        }
    }

    /// Answers a refused connection with a one-shot HTTP/1.1 response and closes it, in the
    /// background and bounded in time. At most [`MAX_ANSWERING`] refusals are answered at once
    /// (each holds a file descriptor for up to a second); beyond that a refused connection is
    /// closed at once, so a client that keeps reconnecting cannot use up descriptors this way.
    pub fn answer(self, stream: TcpStream) {
        let Ok(permit) = ANSWERING.try_acquire() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            self.write_answer(stream).await;
        });
    }

    async fn write_answer(self, mut stream: TcpStream) {
        let error = self.error();
        let body = error.to_body();
        let head = format!(
            "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n",
            error.status,
            body.len()
        );
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await?;
            // Read what the client sent before closing, so the close is not a reset that
            // could destroy the answer before the client reads it.
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
}

/// Refused connections answered at once, at most.
pub const MAX_ANSWERING: usize = 64;

static ANSWERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_ANSWERING);

/// The key connections are counted under: the address, with IPv4-mapped IPv6 addresses as
/// IPv4 and IPv6 addresses by their /64, since one client usually holds a whole /64.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The process's file-descriptor limit, raised to the hard limit first (the usual soft limit
/// of 1024 is far below what a proxy needs).
fn descriptor_limit() -> Option<usize> {
    let raised = rlimit::increase_nofile_limit(u64::MAX).ok()?;
    usize::try_from(raised).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: usize, total: usize) -> Arc<ConnectionLimits> {
        let config = ServerConfig {
            max_connections_per_ip: per_address,
            max_connections: total,
            ..ServerConfig::default()
        };
        ConnectionLimits::from_config(&config)
    }

    #[test]
    fn one_address_cannot_take_every_connection() {
        let limits = limits(2, 10);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerAddress(2));
        assert!(limits.admit(b).is_ok());
        drop(first);
        assert!(
            limits.admit(a).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn the_total_bound_holds_across_addresses() {
        let limits = limits(0, 3);
        let held: Vec<_> = (1..=3)
            .map(|i| limits.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(
            limits.admit(IpAddr::from([10, 0, 0, 9])).unwrap_err(),
            Refusal::Total(3)
        );
        drop(held);
        assert!(limits.admit(IpAddr::from([10, 0, 0, 9])).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(one), address_key(same));
        assert_ne!(address_key(one), address_key(other));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(address_key(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn auto_total_follows_the_descriptor_limit() {
        let limits = limits(0, 0);
        assert!(limits.total() >= 1 && limits.total() < usize::MAX);
    }
}
