//! [`DeviceStore`]: push endpoints keyed by token, found per user through
//! the keys-only GSI and confirmed on the table.
//!
//! The GSI lags the table, so a token it lists may have moved to another
//! user since: `for_user` re-reads every token with a strongly consistent
//! `BatchGetItem` and keeps only those still the user's, so a preview is
//! never pushed to the wrong person.

use std::collections::HashMap;

use async_trait::async_trait;

use courier_core::domain::{Device, UserId};
use courier_core::ports::{DeviceStore, StoreError};

use super::items::{Item, attr, device_item, get_s, parse_device, s};
use super::retry::failure;
use super::{DEVICES_BY_USER_INDEX, DynamoStore};

use super::MAX_BATCH_GET;

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
            let keys = chunk
                .iter()
                .map(|t| HashMap::from([(attr::TOKEN.to_owned(), s(t))]))
                .collect();
            for item in self
                .batch_get("BatchGetItem devices", &self.tables.devices, keys)
                .await?
            {
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
