//! The live connections: what `@connections` and the `Gateway` port post to.
//!
//! A connection enters the table as *opening* when its handshake arrives and
//! becomes *open* only once its `$connect` handler has returned 200. While it
//! is opening, a post answers 410 exactly as API Gateway does; that is the
//! window the delivery service's open-window retry exists for, so the local
//! gateway must reproduce it rather than accept early posts.
//!
//! Posting puts the frame on the connection's outbound channel; the socket
//! task drains it. A post accepted in the instant between `$connect`
//! returning and the upgrade completing waits in that channel.
//!
//! [`LocalGateway`] is the `Gateway` port over this table, in process: the
//! embedded default wires the handlers to it directly. The same table serves
//! the HTTP `@connections` API, so the real Management API adapter and
//! `aws-sdk-apigatewaymanagement` see the very same answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use courier_core::domain::{ConnectionId, Millis, now_millis};
use courier_core::ports::{ConnectionInfo, Gateway, PostError};
use tokio::sync::mpsc;

/// What the socket task is asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    Binary(Vec<u8>),
    /// Close the socket with this code (a `DELETE @connections`).
    Close {
        code: u16,
        reason: String,
    },
}

#[derive(Debug)]
struct Entry {
    open: bool,
    tx: mpsc::UnboundedSender<Outbound>,
    connected_at: Millis,
    last_active_at: Millis,
    source_ip: String,
    user_agent: Option<String>,
}

/// What `GET @connections/{id}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub connected_at: Millis,
    pub last_active_at: Millis,
    pub source_ip: String,
    pub user_agent: Option<String>,
}

/// Every opening and open connection, by id.
#[derive(Debug)]
pub struct ConnectionTable {
    entries: Mutex<HashMap<String, Entry>>,
    max_post_bytes: usize,
}

/// Close code API Gateway uses when a connection is deleted through
/// `@connections`.
pub const DELETED_CLOSE_CODE: u16 = 1000;

impl ConnectionTable {
    pub fn new(max_post_bytes: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_post_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake arrived: the connection exists but answers 410 until
    /// [`ConnectionTable::mark_open`].
    pub fn insert_opening(
        &self,
        id: &str,
        connected_at: Millis,
        source_ip: &str,
        user_agent: Option<&str>,
    ) -> mpsc::UnboundedReceiver<Outbound> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(
            id.to_owned(),
            Entry {
                open: false,
                tx,
                connected_at,
                last_active_at: connected_at,
                source_ip: source_ip.to_owned(),
                user_agent: user_agent.map(str::to_owned),
            },
        );
        rx
    }

    /// `$connect` returned 200: posts are accepted from now on.
    pub fn mark_open(&self, id: &str) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.open = true;
                true
            }
            None => false,
        }
    }

    /// The connection is gone; later posts get 410.
    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(id).is_some()
    }

    /// The client sent a frame (for `lastActiveAt`).
    pub fn touch(&self, id: &str) {
        if let Some(e) = self.lock().get_mut(id) {
            e.last_active_at = now_millis();
        }
    }

    /// Sends `data` to an open connection: text if it is UTF-8, as API
    /// Gateway does.
    pub fn post(&self, id: &str, data: &[u8]) -> Result<(), PostError> {
        if data.len() > self.max_post_bytes {
            return Err(PostError::PayloadTooLarge);
        }
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id).filter(|e| e.open) else {
            return Err(PostError::Gone);
        };
        let frame = match std::str::from_utf8(data) {
            Ok(t) => Outbound::Text(t.to_owned()),
            Err(_) => Outbound::Binary(data.to_vec()),
        };
        if entry.tx.send(frame).is_err() {
            // The socket task ended without removing the entry yet.
            entries.remove(id);
            return Err(PostError::Gone);
        }
        entry.last_active_at = now_millis();
        Ok(())
    }

    /// A route response: sent whether or not `$connect` has returned (the
    /// socket only exists once it has).
    pub fn reply(&self, id: &str, text: String) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|e| e.tx.send(Outbound::Text(text)).is_ok())
    }

    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        self.lock().get(id).filter(|e| e.open).map(|e| Snapshot {
            connected_at: e.connected_at,
            last_active_at: e.last_active_at,
            source_ip: e.source_ip.clone(),
            user_agent: e.user_agent.clone(),
        })
    }

    /// `DELETE @connections/{id}`: closes the socket; posts answer 410 from
    /// this moment.
    pub fn close(&self, id: &str) -> Result<(), PostError> {
        let mut entries = self.lock();
        match entries.get(id) {
            Some(e) if e.open => {
                let _ = e.tx.send(Outbound::Close {
                    code: DELETED_CLOSE_CODE,
                    reason: "Connection deleted".into(),
                });
                entries.remove(id);
                Ok(())
            }
            _ => Err(PostError::Gone),
        }
    }

    /// Ids of open connections.
    pub fn open_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.open)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// The `Gateway` port in process: posts go straight to the socket tasks.
#[derive(Clone, Debug)]
pub struct LocalGateway {
    table: Arc<ConnectionTable>,
}

impl LocalGateway {
    pub fn new(table: Arc<ConnectionTable>) -> Self {
        Self { table }
    }
}

#[async_trait]
impl Gateway for LocalGateway {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        self.table.post(connection.as_str(), data)
    }

    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        Ok(self
            .table
            .snapshot(connection.as_str())
            .map(|s| ConnectionInfo {
                connected_at: Some(s.connected_at),
                last_active_at: Some(s.last_active_at),
                source_ip: Some(s.source_ip),
            }))
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        self.table.close(connection.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn opening_connections_answer_gone_until_connect_returns() {
        let t = ConnectionTable::new(128 * 1024);
        let mut rx = t.insert_opening("c1", 1, "127.0.0.1", None);
        assert_eq!(t.post("c1", b"early"), Err(PostError::Gone));
        assert!(t.snapshot("c1").is_none());
        assert!(t.mark_open("c1"));
        t.post("c1", b"hello").unwrap();
        assert_eq!(rx.try_recv().unwrap(), Outbound::Text("hello".into()));
        assert_eq!(t.post("nobody", b"x"), Err(PostError::Gone));
    }

    #[test]
    fn posts_over_the_limit_are_refused_before_anything_else() {
        let t = ConnectionTable::new(10);
        let _rx = t.insert_opening("c1", 1, "127.0.0.1", None);
        t.mark_open("c1");
        assert_eq!(t.post("c1", &[b'x'; 11]), Err(PostError::PayloadTooLarge));
        assert_eq!(t.post("gone", &[b'x'; 11]), Err(PostError::PayloadTooLarge));
    }

    #[test]
    fn delete_closes_and_later_posts_are_gone() {
        let t = ConnectionTable::new(1024);
        let mut rx = t.insert_opening("c1", 1, "127.0.0.1", Some("ua"));
        t.mark_open("c1");
        assert_eq!(t.snapshot("c1").unwrap().user_agent.as_deref(), Some("ua"));
        t.close("c1").unwrap();
        assert!(matches!(
            rx.try_recv().unwrap(),
            Outbound::Close { code: 1000, .. }
        ));
        assert_eq!(t.post("c1", b"x"), Err(PostError::Gone));
        assert_eq!(t.close("c1"), Err(PostError::Gone));
    }

    #[test]
    fn a_post_to_a_dead_socket_is_gone() {
        let t = ConnectionTable::new(1024);
        let rx = t.insert_opening("c1", 1, "127.0.0.1", None);
        t.mark_open("c1");
        drop(rx);
        assert_eq!(t.post("c1", b"x"), Err(PostError::Gone));
        assert!(t.open_ids().is_empty());
    }
}
