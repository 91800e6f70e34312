//! [`Unwired`]: the stand-in for every port a function did not ask for.
//!
//! Every call fails with an error naming the port, so a handler that reaches
//! for a port its function's wiring left out fails loudly on its first call
//! instead of silently using a stand-in (`courier_aws::wiring::Needs` says
//! which ports each function asks for).

use async_trait::async_trait;

use crate::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Device, DeviceId,
    LinkedDevice, Message, Millis, PendingDelivery, Platform, Seq, UserId,
};
use crate::ports::{
    AckOutcome, AppendOutcome, CatchUpRequest, CatchUpTrigger, ConnectionInfo, ConnectionRegistry,
    ConversationStore, DeviceStore, Gateway, LinkOutcome, LinkStore, MessageStore, NewMessage,
    Notifier, PendingStore, PostError, PushError, PushMessage, Registered, RegistryError,
    StoreError, TriggerError,
};

/// Stands in for a port the function did not ask for; every call fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unwired;

const UNWIRED: &str = "not wired in this function (see courier_aws::wiring::Needs)";

fn store_unwired<T>(port: &str) -> Result<T, StoreError> {
    Err(StoreError::Unavailable(format!("{port} {UNWIRED}")))
}

#[async_trait]
impl ConnectionRegistry for Unwired {
    async fn register(&self, _: &UserId, _: &Connection) -> Result<Registered, RegistryError> {
        Err(RegistryError(format!("registry {UNWIRED}")))
    }
    async fn lookup(&self, _: &UserId) -> Result<Vec<Connection>, RegistryError> {
        Err(RegistryError(format!("registry {UNWIRED}")))
    }
    async fn remove_if(
        &self,
        _: &UserId,
        _: &DeviceId,
        _: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        Err(RegistryError(format!("registry {UNWIRED}")))
    }
}

#[async_trait]
impl MessageStore for Unwired {
    async fn append(&self, _: &NewMessage) -> Result<AppendOutcome, StoreError> {
        store_unwired("message store")
    }
    async fn find_sent(
        &self,
        _: &ConversationId,
        _: &UserId,
        _: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        store_unwired("message store")
    }
    async fn range(
        &self,
        _: &ConversationId,
        _: Seq,
        _: usize,
    ) -> Result<Vec<Message>, StoreError> {
        store_unwired("message store")
    }
}

#[async_trait]
impl ConversationStore for Unwired {
    async fn create(&self, _: &Conversation) -> Result<bool, StoreError> {
        store_unwired("conversation store")
    }
    async fn get(&self, _: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        store_unwired("conversation store")
    }
    async fn list_for(
        &self,
        _: &UserId,
        _: Option<&ConversationId>,
        _: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError> {
        store_unwired("conversation store")
    }
}

#[async_trait]
impl PendingStore for Unwired {
    async fn list(&self, _: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        store_unwired("pending store")
    }
    async fn get(
        &self,
        _: &UserId,
        _: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        store_unwired("pending store")
    }
    async fn record(&self, _: &UserId, _: &ConversationId, _: Seq) -> Result<(), StoreError> {
        store_unwired("pending store")
    }
    async fn ack(
        &self,
        _: &UserId,
        _: &DeviceId,
        _: &ConversationId,
        _: Seq,
        _: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        store_unwired("pending store")
    }
    async fn settle_posted(
        &self,
        _: &UserId,
        _: &DeviceId,
        _: &ConversationId,
        _: Seq,
        _: Seq,
        _: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        store_unwired("pending store")
    }
}

#[async_trait]
impl DeviceStore for Unwired {
    async fn put(&self, _: &Device) -> Result<(), StoreError> {
        store_unwired("device store")
    }
    async fn by_token(&self, _: &str) -> Result<Option<Device>, StoreError> {
        store_unwired("device store")
    }
    async fn for_user(&self, _: &UserId) -> Result<Vec<Device>, StoreError> {
        store_unwired("device store")
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        store_unwired("device store")
    }
}

#[async_trait]
impl LinkStore for Unwired {
    async fn touch(
        &self,
        _: &UserId,
        _: &DeviceId,
        _: Millis,
        _: usize,
        _: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        store_unwired("link store")
    }
    async fn list(&self, _: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        store_unwired("link store")
    }
    async fn unlink(&self, _: &UserId, _: &DeviceId) -> Result<bool, StoreError> {
        store_unwired("link store")
    }
}

#[async_trait]
impl Gateway for Unwired {
    async fn post(&self, _: &ConnectionId, _: &[u8]) -> Result<(), PostError> {
        Err(PostError::Unavailable(format!("gateway {UNWIRED}")))
    }
    async fn get(&self, _: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        Err(PostError::Unavailable(format!("gateway {UNWIRED}")))
    }
    async fn delete(&self, _: &ConnectionId) -> Result<(), PostError> {
        Err(PostError::Unavailable(format!("gateway {UNWIRED}")))
    }
}

#[async_trait]
impl CatchUpTrigger for Unwired {
    async fn trigger(&self, _: &CatchUpRequest) -> Result<(), TriggerError> {
        Err(TriggerError(format!("catch-up trigger {UNWIRED}")))
    }
}

#[async_trait]
impl Notifier for Unwired {
    async fn create_endpoint(&self, _: Platform, _: &str, _: &UserId) -> Result<String, PushError> {
        Err(PushError::Unavailable(format!("notifier {UNWIRED}")))
    }
    async fn publish(&self, _: &str, _: &PushMessage) -> Result<(), PushError> {
        Err(PushError::Unavailable(format!("notifier {UNWIRED}")))
    }
    async fn delete_endpoint(&self, _: &str) -> Result<(), PushError> {
        Err(PushError::Unavailable(format!("notifier {UNWIRED}")))
    }
}
