//! A TCP fault proxy: put it between a client and a real server (Redis, moto)
//! and switch, while the test runs, between passing bytes through, delaying
//! them, resetting every connection, black-holing them, or cutting them after
//! a number of bytes. There is no toxiproxy on this machine, and the faults
//! the delivery rules (docs/architecture.md) care about are all of this shape: a registry that is down, slow
//! or hung, a store whose connection dies mid-reply.
//!
//! One task per proxied connection owns both sockets and runs one `select!`
//! over: the client's socket, the target's socket, each direction's queue of
//! chunks waiting for their delivery time, and the mode. Owning both sockets
//! in one task is what lets a switch to [`Mode::Reset`] reset connections
//! that are blocked in a read: the task sets `SO_LINGER 0` and drops them, so
//! both peers see an RST rather than a polite FIN.
//!
//! Modes, and what each one means on the wire:
//! - [`Mode::Pass`]: bytes flow as soon as they are read.
//! - [`Mode::Delay`]: each chunk is written `to_target` / `to_client` after
//!   it was read (one-way latency, not a bandwidth limit; order is kept).
//! - [`Mode::Reset`]: every open connection is reset; a new one is accepted
//!   and reset at once (the client sees `ECONNRESET`, as fast as a refusal).
//!   The listener stays bound so the port cannot be taken by someone else.
//! - [`Mode::BlackHole`]: connections are accepted and read, and nothing is
//!   answered. Bytes are *held*, not dropped: inside one TCP connection a
//!   partition never loses bytes (the kernel retransmits), so dropping them
//!   would desync a pipelined protocol in a way no network does. When the
//!   mode changes back the held bytes flow (or are reset with the rest). At
//!   most [`MAX_QUEUED_CHUNKS`] chunks are held per direction; then the proxy
//!   stops reading and the kernel's buffers fill, as they would.
//! - [`Mode::CloseAfter`]: a connection is closed (FIN both ways) once
//!   `bytes` bytes have crossed it, in both directions together, counted from
//!   its start; the chunk that crosses the bound is cut at it, so a reply is
//!   truncated mid-way.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Chunks held per direction before the proxy stops reading that side.
pub const MAX_QUEUED_CHUNKS: usize = 64;

/// Size of one read.
const CHUNK_BYTES: usize = 16 * 1024;

/// What the proxy does to traffic, switchable at any time with
/// [`FaultProxy::set_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// One-way latency per chunk, per direction.
    Delay {
        to_target: Duration,
        to_client: Duration,
    },
    Reset,
    BlackHole,
    /// Close each connection once this many bytes crossed it.
    CloseAfter {
        bytes: u64,
    },
}

impl Mode {
    /// The same one-way delay in both directions.
    pub fn delay(both_ways: Duration) -> Mode {
        Mode::Delay {
            to_target: both_ways,
            to_client: both_ways,
        }
    }
}

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Client connections accepted (including those reset at once).
    pub accepted: u64,
    /// Connections reset at accept because the mode was `Reset`, or because
    /// the target could not be reached.
    pub refused: u64,
    /// Connections currently proxied.
    pub active: u64,
    /// Open connections reset by a switch to `Reset`.
    pub reset: u64,
    /// Connections closed by `CloseAfter`.
    pub cut: u64,
    /// Bytes written to the target.
    pub bytes_to_target: u64,
    /// Bytes written to clients.
    pub bytes_to_client: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    reset: AtomicU64,
    cut: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// A running proxy. Dropping it stops accepting and ends every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    target: String,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`
    /// (`host:port`, resolved on every new connection).
    pub async fn start(target: impl Into<String>) -> io::Result<FaultProxy> {
        let target = target.into();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            target.clone(),
            mode_rx,
            Arc::clone(&counters),
        ));
        Ok(FaultProxy {
            addr,
            target,
            mode,
            counters,
            accept,
        })
    }

    /// Starts a proxy in front of the server of `url` (`redis://host:port`,
    /// `http://host:port/…`) and returns it with `url` pointed at it.
    pub async fn in_front_of(url: &str) -> io::Result<(FaultProxy, String)> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("not a URL: {url}"))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let proxy = FaultProxy::start(authority).await?;
        let proxied = format!("{scheme}://{}{path}", proxy.addr());
        Ok((proxy, proxied))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// Switches every connection, open or new, to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            accepted: c.accepted.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            active: c.active.load(Ordering::SeqCst),
            reset: c.reset.load(Ordering::SeqCst),
            cut: c.cut.load(Ordering::SeqCst),
            bytes_to_target: c.bytes_to_target.load(Ordering::SeqCst),
            bytes_to_client: c.bytes_to_client.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connection tasks end when they see the mode sender gone.
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = mode.clone();
        let counters = Arc::clone(&counters);
        let target = target.clone();
        tokio::spawn(async move {
            if *mode.borrow() == Mode::Reset {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                reset(client);
                return;
            }
            let upstream = match TcpStream::connect(&target).await {
                Ok(s) => s,
                Err(_) => {
                    counters.refused.fetch_add(1, Ordering::SeqCst);
                    reset(client);
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            counters.active.fetch_add(1, Ordering::SeqCst);
            proxy_connection(client, upstream, mode, &counters).await;
            counters.active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Drops the socket with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Chunks read from one side, waiting for their delivery time.
#[derive(Default)]
struct Lane {
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// The side this lane reads from sent EOF.
    eof: bool,
    /// EOF was passed on (write half shut down).
    shut: bool,
}

impl Lane {
    fn push(&mut self, delay: Duration, chunk: Vec<u8>) {
        // Never before the chunk ahead of it: delays change, order must not.
        let at = (Instant::now() + delay).max(self.queue.back().map_or_else(Instant::now, |c| c.0));
        self.queue.push_back((at, chunk));
    }

    fn can_read(&self) -> bool {
        !self.eof && self.queue.len() < MAX_QUEUED_CHUNKS
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|c| c.0)
    }
}

enum End {
    /// Both directions finished (or one side failed): close normally.
    Done,
    /// Switched to `Reset`, or the proxy was dropped.
    Reset,
    /// `CloseAfter` reached its bound and the queues drained.
    Cut,
}

async fn proxy_connection(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mut mode_rx: watch::Receiver<Mode>,
    counters: &Counters,
) {
    let end = {
        let (mut client_r, mut client_w) = client.split();
        let (mut up_r, mut up_w) = upstream.split();
        let mut to_target = Lane::default();
        let mut to_client = Lane::default();
        let mut up_buf = vec![0u8; CHUNK_BYTES];
        let mut down_buf = vec![0u8; CHUNK_BYTES];
        let mut crossed: u64 = 0;
        let mut cutting = false;
        let mut mode = *mode_rx.borrow_and_update();
        loop {
            if mode == Mode::Reset {
                break End::Reset;
            }
            if cutting && to_target.queue.is_empty() && to_client.queue.is_empty() {
                break End::Cut;
            }
            if to_target.shut && to_client.shut {
                break End::Done;
            }
            let flowing = mode != Mode::BlackHole;
            let (delay_up, delay_down) = match mode {
                Mode::Delay {
                    to_target,
                    to_client,
                } => (to_target, to_client),
                _ => (Duration::ZERO, Duration::ZERO),
            };
            let up_due = to_target.next_due().filter(|_| flowing);
            let down_due = to_client.next_due().filter(|_| flowing);
            tokio::select! {
                changed = mode_rx.changed() => {
                    match changed {
                        Ok(()) => mode = *mode_rx.borrow_and_update(),
                        Err(_) => break End::Reset,
                    }
                }
                read = client_r.read(&mut up_buf), if to_target.can_read() && !cutting => {
                    match read {
                        Ok(0) | Err(_) => to_target.eof = true,
                        Ok(n) => {
                            let chunk = admit(&up_buf[..n], mode, &mut crossed, &mut cutting);
                            to_target.push(delay_up, chunk);
                        }
                    }
                }
                read = up_r.read(&mut down_buf), if to_client.can_read() && !cutting => {
                    match read {
                        Ok(0) | Err(_) => to_client.eof = true,
                        Ok(n) => {
                            let chunk = admit(&down_buf[..n], mode, &mut crossed, &mut cutting);
                            to_client.push(delay_down, chunk);
                        }
                    }
                }
                () = sleep_until(up_due), if up_due.is_some() => {
                    if let Some((_, chunk)) = to_target.queue.pop_front() {
                        if up_w.write_all(&chunk).await.is_err() {
                            break End::Done;
                        }
                        counters.bytes_to_target.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                }
                () = sleep_until(down_due), if down_due.is_some() => {
                    if let Some((_, chunk)) = to_client.queue.pop_front() {
                        if client_w.write_all(&chunk).await.is_err() {
                            break End::Done;
                        }
                        counters.bytes_to_client.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                }
                // Pass an EOF on once everything read before it was written.
                r = up_w.shutdown(), if to_target.eof && !to_target.shut && to_target.queue.is_empty() => {
                    to_target.shut = true;
                    if r.is_err() { break End::Done; }
                }
                r = client_w.shutdown(), if to_client.eof && !to_client.shut && to_client.queue.is_empty() => {
                    to_client.shut = true;
                    if r.is_err() { break End::Done; }
                }
            }
        }
    };
    match end {
        End::Done => {}
        End::Reset => {
            counters.reset.fetch_add(1, Ordering::SeqCst);
            reset(client);
            reset(upstream);
        }
        End::Cut => {
            counters.cut.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
    }
}

/// Applies `CloseAfter` to a chunk just read: cuts it at the bound.
fn admit(chunk: &[u8], mode: Mode, crossed: &mut u64, cutting: &mut bool) -> Vec<u8> {
    let Mode::CloseAfter { bytes } = mode else {
        *crossed += chunk.len() as u64;
        return chunk.to_vec();
    };
    let left = bytes.saturating_sub(*crossed);
    let take = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
    *crossed += take as u64;
    if *crossed >= bytes {
        *cutting = true;
    }
    chunk[..take].to_vec()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn proxy() -> FaultProxy {
        FaultProxy::start(echo_server().await.to_string())
            .await
            .unwrap()
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn pass_forwards_both_ways_and_counts() {
        let p = proxy().await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, b"hello").await.unwrap(), b"hello");
        let st = p.stats();
        assert_eq!((st.accepted, st.active), (1, 1));
        assert_eq!((st.bytes_to_target, st.bytes_to_client), (5, 5));
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.stats().active, 0, "closed connections are not active");
    }

    #[tokio::test]
    async fn delay_adds_one_way_latency_per_direction() {
        let p = proxy().await;
        p.set_mode(Mode::Delay {
            to_target: Duration::from_millis(120),
            to_client: Duration::from_millis(80),
        });
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let t = std::time::Instant::now();
        assert_eq!(roundtrip(&mut s, b"ping").await.unwrap(), b"ping");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(200), "{rtt:?}");
        assert!(rtt < Duration::from_millis(1000), "{rtt:?}");
        // Back to pass: the same connection is fast again.
        p.set_mode(Mode::Pass);
        let t = std::time::Instant::now();
        roundtrip(&mut s, b"pong").await.unwrap();
        assert!(t.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn delayed_chunks_keep_their_order() {
        let p = proxy().await;
        p.set_mode(Mode::delay(Duration::from_millis(30)));
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let mut sent = Vec::new();
        for i in 0..50u8 {
            s.write_all(&[i; 10]).await.unwrap();
            sent.extend_from_slice(&[i; 10]);
            if i == 25 {
                // Shorter delay from here on: must not overtake.
                p.set_mode(Mode::delay(Duration::from_millis(1)));
            }
        }
        let mut got = vec![0u8; sent.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn reset_kills_open_connections_and_refuses_new_ones() {
        let p = proxy().await;
        let mut open = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut open, b"x").await.unwrap();
        p.set_mode(Mode::Reset);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );

        let mut fresh = TcpStream::connect(p.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), roundtrip(&mut fresh, b"y"))
            .await
            .unwrap();
        assert!(r.is_err(), "a new connection is refused: {r:?}");
        let st = p.stats();
        assert_eq!((st.reset, st.refused), (1, 1));

        // Healed: new connections work again.
        p.set_mode(Mode::Pass);
        let mut healed = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut healed, b"z").await.unwrap(), b"z");
    }

    #[tokio::test]
    async fn black_hole_answers_nothing_and_holds_bytes_until_healed() {
        let p = proxy().await;
        let mut open = TcpStream::connect(p.addr()).await.unwrap();
        roundtrip(&mut open, b"a").await.unwrap();
        p.set_mode(Mode::BlackHole);
        let mut fresh = TcpStream::connect(p.addr()).await.unwrap();
        for s in [&mut open, &mut fresh] {
            let r = tokio::time::timeout(Duration::from_millis(200), roundtrip(s, b"lost?")).await;
            assert!(r.is_err(), "no answer while black-holed");
        }
        assert_eq!(p.stats().bytes_to_target, 1, "nothing reached the target");
        p.set_mode(Mode::Pass);
        // The held request flows on, like TCP riding out a partition.
        for s in [&mut open, &mut fresh] {
            let mut got = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, b"lost?");
        }
    }

    #[tokio::test]
    async fn close_after_cuts_the_reply_at_the_bound() {
        let p = proxy().await;
        p.set_mode(Mode::CloseAfter { bytes: 14 });
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"0123456789").await.unwrap();
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
            .await
            .unwrap();
        // 10 bytes out, 4 of the echo back, then EOF.
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(got, b"0123");
        let st = p.stats();
        assert_eq!((st.cut, st.bytes_to_target, st.bytes_to_client), (1, 10, 4));
    }

    #[tokio::test]
    async fn unreachable_target_is_refused() {
        // A port nothing listens on: bind, note it, close.
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let p = FaultProxy::start(dead.to_string()).await.unwrap();
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
        assert_eq!(p.stats().refused, 1);
    }

    #[tokio::test]
    async fn in_front_of_rewrites_the_url() {
        let echo = echo_server().await;
        let (p, url) = FaultProxy::in_front_of(&format!("redis://{echo}/0"))
            .await
            .unwrap();
        assert_eq!(url, format!("redis://{}/0", p.addr()));
        assert_eq!(p.target(), echo.to_string());
    }
}
