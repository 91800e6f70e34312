//! Wiring: the ports a function runs with, built once per execution
//! environment and borrowed by every invocation.
//!
//! [`Ports`] is a bundle of `Arc<dyn Port>`; [`Ports::in_memory`] gives the
//! embedded default (and keeps typed handles to the in-memory adapters so
//! tests can inspect them and inject faults). The wiring from environment
//! variables to real adapters lives in `courier_aws::wiring`, which builds a
//! [`Ports`]; nothing here knows it exists.

use std::sync::Arc;

use crate::adapters::memory::{
    MemoryGateway, MemoryNotifier, MemoryRegistry, MemoryStore, MemoryTrigger,
};
use crate::adapters::unwired::Unwired;
use crate::ports::{
    CatchUpTrigger, ConnectionRegistry, ConversationStore, DeviceStore, Gateway, LinkStore,
    MessageStore, Notifier, PendingStore, RateLimiter,
};

/// Every port, behind a trait object.
#[derive(Clone)]
pub struct Ports {
    pub registry: Arc<dyn ConnectionRegistry>,
    pub messages: Arc<dyn MessageStore>,
    pub conversations: Arc<dyn ConversationStore>,
    pub pending: Arc<dyn PendingStore>,
    pub devices: Arc<dyn DeviceStore>,
    pub links: Arc<dyn LinkStore>,
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
        Ports::unwired()
            .with_store(Arc::new(self.store.clone()))
            .with_registry(Arc::new(self.registry.clone()))
            .with_gateway(Arc::new(self.gateway.clone()))
            .with_trigger(Arc::new(self.trigger.clone()))
            .with_notifier(Arc::new(self.notifier.clone()))
    }
}

impl Ports {
    /// Every port [`Unwired`]: the start of a wiring that fills in the ports
    /// a function asks for.
    pub fn unwired() -> Ports {
        let unwired = Arc::new(Unwired);
        Ports {
            registry: unwired.clone(),
            messages: unwired.clone(),
            conversations: unwired.clone(),
            pending: unwired.clone(),
            devices: unwired.clone(),
            links: unwired.clone(),
            gateway: unwired.clone(),
            trigger: unwired.clone(),
            notifier: unwired,
        }
    }

    /// One store behind all five store ports (messages, conversations,
    /// pending, devices, links), as the DynamoDB and in-memory stores are:
    /// the one place that knows a store fills five ports.
    pub fn with_store<S>(self, store: Arc<S>) -> Ports
    where
        S: MessageStore + ConversationStore + PendingStore + DeviceStore + LinkStore + 'static,
    {
        Ports {
            messages: store.clone(),
            conversations: store.clone(),
            pending: store.clone(),
            devices: store.clone(),
            links: store,
            ..self
        }
    }

    pub fn with_registry(self, registry: Arc<dyn ConnectionRegistry>) -> Ports {
        Ports { registry, ..self }
    }

    pub fn with_gateway(self, gateway: Arc<dyn Gateway>) -> Ports {
        Ports { gateway, ..self }
    }

    pub fn with_trigger(self, trigger: Arc<dyn CatchUpTrigger>) -> Ports {
        Ports { trigger, ..self }
    }

    pub fn with_notifier(self, notifier: Arc<dyn Notifier>) -> Ports {
        Ports { notifier, ..self }
    }

    /// Every port in memory, and the handles to reach into them.
    pub fn in_memory() -> (Ports, MemoryHandles) {
        let handles = MemoryHandles::new();
        (handles.ports(), handles)
    }
}

/// Every service setting, with the documented defaults.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub delivery: crate::config::DeliveryConfig,
    pub catch_up: crate::config::CatchUpConfig,
    pub send: crate::config::SendConfig,
    pub push: crate::config::PushConfig,
    pub rate_limit: crate::config::RateLimitConfig,
    pub devices: crate::config::DeviceConfig,
}

impl Settings {
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &crate::config::Env<F>,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            delivery: crate::config::DeliveryConfig::from_env(env)?,
            catch_up: crate::config::CatchUpConfig::from_env(env)?,
            send: crate::config::SendConfig::from_env(env)?,
            push: crate::config::PushConfig::from_env(env)?,
            rate_limit: crate::config::RateLimitConfig::from_env(env)?,
            devices: crate::config::DeviceConfig::from_env(env)?,
        })
    }
}

/// What a handler borrows: the ports and the settings, built once.
#[derive(Clone)]
pub struct App {
    pub ports: Ports,
    pub settings: Settings,
    /// Per-user send limit. Not in [`Ports`] because only the send path
    /// asks it; [`Unlimited`](crate::adapters::rate_limit::Unlimited) until
    /// [`App::with_rate_limiter`] gives it one.
    pub limiter: Arc<dyn RateLimiter>,
}

impl App {
    pub fn new(ports: Ports, settings: Settings) -> Self {
        Self {
            ports,
            settings,
            limiter: Arc::new(crate::adapters::rate_limit::Unlimited),
        }
    }

    pub fn with_rate_limiter(mut self, limiter: Arc<dyn RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Everything in memory with default settings; the handles reach into
    /// the adapters.
    pub fn in_memory() -> (App, MemoryHandles) {
        let (ports, handles) = Ports::in_memory();
        (App::new(ports, Settings::default()), handles)
    }
}
