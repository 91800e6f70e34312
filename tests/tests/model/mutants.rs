//! Bugs planted in the adapters, each one the model must catch
//! (`the_model_catches_planted_bugs`).

use async_trait::async_trait;
use courier_core::adapters::memory::{MemoryRegistry, MemoryStore};
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, ConversationId, DeviceId, Message, PendingDelivery, Seq,
    UserId,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, ConnectionRegistry, MessageStore, NewMessage, PendingStore,
    Registered, RegistryError, StoreError,
};

pub struct AckWipesNewer(pub MemoryStore);

#[async_trait]
impl PendingStore for AckWipesNewer {
    async fn list(&self, u: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        self.0.list(u).await
    }
    async fn get(
        &self,
        u: &UserId,
        c: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        PendingStore::get(&self.0, u, c).await
    }
    async fn record(&self, u: &UserId, c: &ConversationId, s: Seq) -> Result<(), StoreError> {
        self.0.record(u, c, s).await
    }
    async fn ack(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        _: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        match PendingStore::get(&self.0, u, c).await? {
            Some(row) => {
                PendingStore::ack(&self.0, u, d, c, row.last_seq, linked).await?;
                Ok(AckOutcome::Cleared)
            }
            None => Ok(AckOutcome::Stale),
        }
    }
    async fn settle_posted(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.0.settle_posted(u, d, c, from, through, linked).await
    }
}

pub struct AckForgetsOtherDevices(pub MemoryStore);

#[async_trait]
impl PendingStore for AckForgetsOtherDevices {
    async fn list(&self, u: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        self.0.list(u).await
    }
    async fn get(
        &self,
        u: &UserId,
        c: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        PendingStore::get(&self.0, u, c).await
    }
    async fn record(&self, u: &UserId, c: &ConversationId, s: Seq) -> Result<(), StoreError> {
        self.0.record(u, c, s).await
    }
    async fn ack(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        s: Seq,
        _: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        PendingStore::ack(&self.0, u, d, c, s, &[]).await
    }
    async fn settle_posted(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.0.settle_posted(u, d, c, from, through, linked).await
    }
}

pub struct SharedCursor(pub MemoryStore);

fn furthest(mut row: PendingDelivery) -> PendingDelivery {
    if let Some(max) = row.cursors.values().max().copied() {
        row.first_undelivered_seq = row.first_undelivered_seq.max(max.next());
    }
    row.cursors.clear();
    row
}

#[async_trait]
impl PendingStore for SharedCursor {
    async fn list(&self, u: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        Ok(self.0.list(u).await?.into_iter().map(furthest).collect())
    }
    async fn get(
        &self,
        u: &UserId,
        c: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        Ok(PendingStore::get(&self.0, u, c).await?.map(furthest))
    }
    async fn record(&self, u: &UserId, c: &ConversationId, s: Seq) -> Result<(), StoreError> {
        self.0.record(u, c, s).await
    }
    async fn ack(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        s: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        PendingStore::ack(&self.0, u, d, c, s, linked).await
    }
    async fn settle_posted(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.0.settle_posted(u, d, c, from, through, linked).await
    }
}

pub struct NoPendingRows(pub MemoryStore);

#[async_trait]
impl MessageStore for NoPendingRows {
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        let mut new = new.clone();
        new.pending_for.clear();
        self.0.append(&new).await
    }
    async fn find_sent(
        &self,
        c: &ConversationId,
        s: &UserId,
        k: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        self.0.find_sent(c, s, k).await
    }
    async fn range(
        &self,
        c: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.0.range(c, from, limit).await
    }
}

pub struct CrossedRegistry(pub MemoryRegistry);

fn neighbour(u: &UserId) -> UserId {
    let i = super::USERS
        .iter()
        .position(|x| *x == u.as_str())
        .unwrap_or(0);
    super::uid((i + 1) % super::USERS.len())
}

#[async_trait]
impl ConnectionRegistry for CrossedRegistry {
    async fn register(&self, u: &UserId, c: &Connection) -> Result<Registered, RegistryError> {
        self.0.register(u, c).await
    }
    async fn lookup(&self, u: &UserId) -> Result<Vec<Connection>, RegistryError> {
        self.0.lookup(&neighbour(u)).await
    }
    async fn remove_if(
        &self,
        u: &UserId,
        d: &DeviceId,
        c: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        self.0.remove_if(u, d, c).await
    }
}
