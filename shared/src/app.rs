//! Wiring: the ports a function runs with, built once per execution
//! environment and borrowed by every invocation.
//!
//! [`Ports`] is a bundle of `Arc<dyn Port>`; [`Ports::in_memory`] gives the
//! embedded default (and keeps typed handles to the in-memory adapters so
//! tests can inspect them and inject faults). The AWS wiring lives in
//! `adapters::aws`.

use std::sync::Arc;

use crate::adapters::memory::{
    MemoryGateway, MemoryNotifier, MemoryRegistry, MemoryStore, MemoryTrigger,
};
use crate::ports::{
    CatchUpTrigger, ConnectionRegistry, ConversationStore, DeviceStore, Gateway, MessageStore,
    Notifier, PendingStore,
};

/// Every port, behind a trait object.
#[derive(Clone)]
pub struct Ports {
    pub registry: Arc<dyn ConnectionRegistry>,
    pub messages: Arc<dyn MessageStore>,
    pub conversations: Arc<dyn ConversationStore>,
    pub pending: Arc<dyn PendingStore>,
    pub devices: Arc<dyn DeviceStore>,
    pub gateway: Arc<dyn Gateway>,
    pub trigger: Arc<dyn CatchUpTrigger>,
    pub notifier: Arc<dyn Notifier>,
}

/// Typed handles to the in-memory adapters behind a [`Ports`].
#[derive(Clone, Default)]
pub struct MemoryHandles {
    pub store: MemoryStore,
    pub registry: MemoryRegistry,
    pub gateway: MemoryGateway,
    pub trigger: MemoryTrigger,
    pub notifier: MemoryNotifier,
}

impl MemoryHandles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ports(&self) -> Ports {
        Ports {
            registry: Arc::new(self.registry.clone()),
            messages: Arc::new(self.store.clone()),
            conversations: Arc::new(self.store.clone()),
            pending: Arc::new(self.store.clone()),
            devices: Arc::new(self.store.clone()),
            gateway: Arc::new(self.gateway.clone()),
            trigger: Arc::new(self.trigger.clone()),
            notifier: Arc::new(self.notifier.clone()),
        }
    }
}

impl Ports {
    /// Every port in memory, and the handles to reach into them.
    pub fn in_memory() -> (Ports, MemoryHandles) {
        let handles = MemoryHandles::new();
        (handles.ports(), handles)
    }
}
