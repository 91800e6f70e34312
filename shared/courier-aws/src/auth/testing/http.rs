//! The one loopback HTTP/1.1 server of the workspace's tests: it stands in
//! for a remote (an IdP's JWKS in the auth tests, API Gateway, Lambda, SNS
//! and a throttling DynamoDB in `courier-tests`), records every request
//! (method, decoded path, headers, body bytes) and answers with what the
//! test's handler says, per request: status, headers, body, a delay, or no
//! answer at all (a black-holed host). The test can then check both what
//! went over the wire and how each answer is mapped.
//!
//! Deliberately small: one request at a time per connection, bodies by
//! `Content-Length` (what the AWS SDK and hyper send), keep-alive honoured so
//! a client's connection pool behaves as it does against the real service.
//! Dropping the server closes the listener and every open connection, so a
//! test can turn a working endpoint into a dead one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head read; a test client never comes close.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The path with percent-escapes decoded, without the query.
    pub path: String,
    /// The path exactly as sent, query included.
    pub raw_path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header of that name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers one request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited before the answer is written: a slow remote.
    pub delay: Duration,
    /// Never answer, holding the connection open: a black-holed remote,
    /// which only a client's own timeout gets out of.
    pub hang: bool,
}

impl Reply {
    /// `status`, no headers, empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body(body.as_bytes())
    }

    /// No answer ever (see [`Reply::hang`](Reply#structfield.hang)).
    pub fn hang() -> Self {
        Self {
            hang: true,
            ..Self::status(0)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;
type Log = Arc<Mutex<Vec<Recorded>>>;

/// A running server; stops, connections and all, when dropped.
pub struct StubServer {
    pub addr: SocketAddr,
    requests: Log,
    task: JoinHandle<()>,
}

impl Drop for StubServer {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it drops
        // the set, which aborts every connection, hung ones included.
        self.task.abort();
    }
}

impl StubServer {
    /// Starts on a free loopback port; `handler` answers every request. It
    /// runs on the connection's task, so a handler that blocks (forwarding
    /// to another server) needs `tokio::task::block_in_place`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let requests = Log::default();
        let handler: Handler = Arc::new(handler);
        let log = requests.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve(stream, handler.clone(), log.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:port`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order (hung ones included).
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.requests).clone()
    }

    /// How many requests have arrived so far.
    pub fn hits(&self) -> usize {
        lock(&self.requests).len()
    }
}

/// A panicking handler must not turn every later assertion into a poison
/// error that hides the first failure.
fn lock(log: &Mutex<Vec<Recorded>>) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(mut stream: TcpStream, handler: Handler, log: Log) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let reply = handler(&request);
        // Recorded before any delay, so a test sees the hit while the
        // client is still waiting.
        lock(&log).push(request);
        if reply.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(reply.delay).await;
        let mut head = format!(
            "HTTP/1.1 {} Stub\r\ncontent-length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (n, v) in &reply.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&reply.body).await.is_err()
        {
            return;
        }
    }
}

/// The next request on the connection, or `None` when the client closed it
/// or sent something that is not HTTP/1.1.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return None;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let raw_path = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let start = head_end + 4;
    while buf.len() < start + len {
        read_more(stream, buf).await?;
    }
    let body = buf[start..start + len].to_vec();
    buf.drain(..start + len);
    let path = percent_decode(raw_path.split('?').next().unwrap_or(""));
    Some(Recorded {
        method,
        path,
        raw_path,
        headers,
        body,
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `%XX` escapes decoded (invalid ones kept as they are); `+` is left alone,
/// as in a path. Also what a test needs to read a form body's values.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    /// Writes `raw` on `stream` and reads one answer (head and a
    /// `content-length` body), as a keep-alive client would.
    async fn exchange(stream: &mut TcpStream, raw: &[u8]) -> (String, Vec<u8>) {
        stream.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i;
            }
            read_more(stream, &mut buf).await.unwrap();
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        while buf.len() < end + 4 + len {
            read_more(stream, &mut buf).await.unwrap();
        }
        (head, buf[end + 4..end + 4 + len].to_vec())
    }

    #[tokio::test]
    async fn records_each_request_and_answers_what_the_handler_says() {
        let server = StubServer::start(|r| {
            Reply::json(201, &format!("{{\"got\":{}}}", r.body.len())).header("x-seen", &r.path)
        })
        .await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let (head, body) = exchange(
            &mut s,
            b"POST /a%20b/%40c?x=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Target: Op\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 201 "), "{head}");
        assert!(head.contains("x-seen: /a b/@c"), "{head}");
        assert_eq!(body, br#"{"got":5}"#);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/a b/@c");
        assert_eq!(reqs[0].raw_path, "/a%20b/%40c?x=1");
        assert_eq!(reqs[0].header("X-AMZ-TARGET"), Some("Op"));
        assert_eq!(reqs[0].body, b"hello");
    }

    #[tokio::test]
    async fn keeps_the_connection_alive_and_answers_per_request() {
        let n = Arc::new(AtomicUsize::new(0));
        let counter = n.clone();
        let server = StubServer::start(move |_| {
            Reply::status(200 + u16::try_from(counter.fetch_add(1, Ordering::SeqCst)).unwrap())
        })
        .await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        for expected in ["200", "201", "202"] {
            let (head, _) = exchange(&mut s, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
            assert!(head.starts_with(&format!("HTTP/1.1 {expected} ")), "{head}");
        }
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test]
    async fn a_delayed_reply_waits_and_the_hit_counts_at_once() {
        let server =
            StubServer::start(|_| Reply::status(204).delay(Duration::from_millis(300))).await;
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        let ask = exchange(&mut s, b"GET / HTTP/1.1\r\n\r\n");
        let early = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.hits()
        };
        let ((head, _), hits_while_waiting) = tokio::join!(ask, early);
        assert!(head.starts_with("HTTP/1.1 204 "), "{head}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(hits_while_waiting, 1);
    }

    #[tokio::test]
    async fn a_hung_reply_never_answers_and_dropping_the_server_closes_it() {
        let server = StubServer::start(|_| Reply::hang()).await;
        let addr = server.addr;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut byte = [0u8; 1];
        let waited = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await;
        assert!(waited.is_err(), "no answer while hung: {waited:?}");
        assert_eq!(server.hits(), 1);

        drop(server);
        let closed = tokio::time::timeout(Duration::from_secs(2), s.read(&mut byte))
            .await
            .expect("the connection closes with the server");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "nothing listens");
    }

    #[test]
    fn percent_decode_decodes_escapes_and_keeps_invalid_ones() {
        assert_eq!(percent_decode("a%2Fb%3d%20c"), "a/b= c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz+%4"), "%zz+%4");
    }
}
