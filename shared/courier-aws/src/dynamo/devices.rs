//! [`DeviceStore`]: push endpoints keyed by token, found per user through
//! the keys-only GSI and confirmed on the table.
//!
//! The GSI lags the table, so a token it lists may have moved to another
//! user since: `for_user` re-reads every token with a strongly consistent
//! `BatchGetItem` and keeps only those still the user's, so a preview is
//! never pushed to the wrong person.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::KeysAndAttributes;

use courier_core::domain::{Device, UserId};
use courier_core::ports::{DeviceStore, StoreError};

use super::items::{Item, attr, device_item, get_s, parse_device, s};
use super::retry::{build_err, failure};
use super::{DEVICES_BY_USER_INDEX, DynamoStore};

/// Keys one `BatchGetItem` may ask for.
const MAX_BATCH_GET: usize = 100;

#[async_trait]
impl DeviceStore for DynamoStore {
    async fn put(&self, device: &Device) -> Result<(), StoreError> {
        let item = device_item(device);
        self.retrying("PutItem device", || {
            let req = self
                .client
                .put_item()
                .table_name(&self.tables.devices)
                .set_item(Some(item.clone()));
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| failure("PutItem device", e))
            }
        })
        .await
    }

    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        let key = HashMap::from([(attr::TOKEN.to_owned(), s(token))]);
        self.get_item("GetItem device", &self.tables.devices, key)
            .await?
            .map(|item| parse_device(&item))
            .transpose()
    }

    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        let mut tokens = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .retrying("Query devices by_user", || {
                    let req = self
                        .client
                        .query()
                        .table_name(&self.tables.devices)
                        .index_name(DEVICES_BY_USER_INDEX)
                        .key_condition_expression("#u = :u")
                        .expression_attribute_names("#u", attr::USER_ID)
                        .expression_attribute_values(":u", s(user.as_str()))
                        .set_exclusive_start_key(start.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| failure("Query devices by_user", e))
                    }
                })
                .await?;
            for item in page.items.unwrap_or_default() {
                tokens.push(get_s(&item, attr::TOKEN, "devices")?.to_owned());
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        tokens.sort();
        tokens.dedup();
        let mut devices = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_BATCH_GET) {
            for item in self.batch_get_devices(chunk).await? {
                let device = parse_device(&item)?;
                // The index may lag a move to another user.
                if &device.user_id == user {
                    devices.push(device);
                }
            }
        }
        devices.sort_by(|a, b| a.token.cmp(&b.token));
        Ok(devices)
    }

    async fn delete(&self, token: &str) -> Result<(), StoreError> {
        self.retrying("DeleteItem device", || {
            let req = self
                .client
                .delete_item()
                .table_name(&self.tables.devices)
                .key(attr::TOKEN, s(token));
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| failure("DeleteItem device", e))
            }
        })
        .await
    }
}

impl DynamoStore {
    /// Strongly consistent reads of device items by token, unprocessed keys
    /// retried with the same backoff as throttling.
    async fn batch_get_devices(&self, tokens: &[String]) -> Result<Vec<Item>, StoreError> {
        let table = self.tables.devices.as_str();
        let mut keys: Vec<Item> = tokens
            .iter()
            .map(|t| HashMap::from([(attr::TOKEN.to_owned(), s(t))]))
            .collect();
        let mut found = Vec::new();
        let mut round = 0;
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(true)
                .build()
                .map_err(build_err)?;
            let out = self
                .retrying("BatchGetItem devices", || {
                    let req = self
                        .client
                        .batch_get_item()
                        .request_items(table, request.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| failure("BatchGetItem devices", e))
                    }
                })
                .await?;
            if let Some(mut responses) = out.responses {
                found.extend(responses.remove(table).unwrap_or_default());
            }
            if let Some(mut unprocessed) = out.unprocessed_keys {
                keys = unprocessed
                    .remove(table)
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                round += 1;
                if round >= self.retry.max_attempts {
                    return Err(StoreError::Throttled(
                        "BatchGetItem devices: keys left unprocessed".into(),
                    ));
                }
                tokio::time::sleep(self.retry.backoff().delay(round)).await;
            }
        }
        Ok(found)
    }
}
