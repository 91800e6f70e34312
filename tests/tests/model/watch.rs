//! The link store, watched: when each device was linked, in seqs.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use courier_core::adapters::memory::MemoryStore;
use courier_core::domain::{DeviceId, LinkedDevice, Millis, UserId};
use courier_core::ports::{ConversationStore, LinkOutcome, LinkStore, StoreError};

/// The link store, noting every conversation's `last_seq` the moment a
/// device is linked. The in-memory store answers without yielding, so
/// nothing runs between the link and the note.
pub struct LinkWatch {
    pub store: MemoryStore,
    pub linked_at: Arc<Mutex<super::LinkedAt>>,
}

#[async_trait]
impl LinkStore for LinkWatch {
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        let outcome = self
            .store
            .touch(user, device, now, max, stale_before)
            .await?;
        if outcome == LinkOutcome::Linked {
            let mut last = std::collections::BTreeMap::new();
            for i in 0..super::CONVERSATIONS.len() {
                let c = super::cid(i);
                let meta = ConversationStore::get(&self.store, &c).await?;
                last.insert(c, meta.map_or(0, |m| m.last_seq.get()));
            }
            self.linked_at
                .lock()
                .unwrap()
                .insert((user.clone(), device.clone()), last);
        }
        Ok(outcome)
    }
    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        LinkStore::list(&self.store, user).await
    }
    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError> {
        self.store.unlink(user, device).await
    }
}
