//! Table creation, for the local gateway, the tests and the benches (the
//! deployed tables come from the template, which `tests/tests/template.rs`
//! checks against this).
//!
//! Idempotent: a table that exists is left as it is, so every start may
//! call [`create_tables`].

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_smithy_types::error::display::DisplayErrorContext;

use courier_core::config::TableNames;
use courier_core::ports::StoreError;

use super::DEVICES_BY_USER_INDEX;
use super::items::attr;
use super::retry::{build_err, sdk_err};

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(build_err)
}

fn def(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(build_err)
}

/// Creates Courier's five tables (on-demand) if they do not exist yet, and
/// turns on TTL where records expire. Existing tables are left as they are,
/// so the local gateway and the test harness can call this on every start.
pub async fn create_tables(client: &Client, tables: &TableNames) -> Result<(), StoreError> {
    use KeyType::{Hash, Range};
    use ScalarAttributeType::{N, S};

    let messages = client
        .create_table()
        .table_name(&tables.messages)
        .key_schema(key(attr::CONVERSATION_ID, Hash)?)
        .key_schema(key(attr::SEQ, Range)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?)
        .attribute_definitions(def(attr::SEQ, N)?);
    let pending = client
        .create_table()
        .table_name(&tables.pending)
        .key_schema(key(attr::USER_ID, Hash)?)
        .key_schema(key(attr::CONVERSATION_ID, Range)?)
        .attribute_definitions(def(attr::USER_ID, S)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?);
    let conversations = client
        .create_table()
        .table_name(&tables.conversations)
        .key_schema(key(attr::CONVERSATION_ID, Hash)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?);
    let idempotency = client
        .create_table()
        .table_name(&tables.idempotency)
        .key_schema(key(attr::IDEMPOTENCY_KEY, Hash)?)
        .attribute_definitions(def(attr::IDEMPOTENCY_KEY, S)?);
    let devices = client
        .create_table()
        .table_name(&tables.devices)
        .key_schema(key(attr::TOKEN, Hash)?)
        .attribute_definitions(def(attr::TOKEN, S)?)
        .attribute_definitions(def(attr::USER_ID, S)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(DEVICES_BY_USER_INDEX)
                .key_schema(key(attr::USER_ID, Hash)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(build_err)?,
        );

    for request in [messages, pending, conversations, idempotency, devices] {
        match request
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(sdk_err("CreateTable", e)),
        }
    }
    for table in [
        &tables.messages,
        &tables.pending,
        &tables.conversations,
        &tables.idempotency,
        &tables.devices,
    ] {
        wait_active(client, table).await?;
    }
    enable_ttl(client, &tables.idempotency, attr::EXPIRES_AT).await
}

/// Creates the connection registry's table (`REGISTRY_BACKEND=dynamodb`)
/// if it does not exist yet, with TTL on `expires_at`: key `user_id`, sort
/// key `device_id`, on-demand. Apart from [`create_tables`], as only a
/// stage without Redis has it.
pub async fn create_registry_table(client: &Client, table: &str) -> Result<(), StoreError> {
    use KeyType::{Hash, Range};
    use ScalarAttributeType::S;

    let request = client
        .create_table()
        .table_name(table)
        .key_schema(key(attr::USER_ID, Hash)?)
        .key_schema(key(attr::DEVICE_ID, Range)?)
        .attribute_definitions(def(attr::USER_ID, S)?)
        .attribute_definitions(def(attr::DEVICE_ID, S)?)
        .billing_mode(BillingMode::PayPerRequest);
    match request.send().await {
        Ok(_) => {}
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(sdk_err("CreateTable", e)),
    }
    wait_active(client, table).await?;
    enable_ttl(client, table, attr::EXPIRES_AT).await
}

/// DynamoDB creates tables asynchronously; writes and TTL changes fail
/// until a table is ACTIVE (moto's are at once).
async fn wait_active(client: &Client, table: &str) -> Result<(), StoreError> {
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(Duration::from_secs(300))
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "table {table} did not become active: {}",
                DisplayErrorContext(&e)
            ))
        })?;
    Ok(())
}

async fn enable_ttl(client: &Client, table: &str, attribute: &str) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| sdk_err("DescribeTimeToLive", e))?;
    let status = current
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(attribute)
                .build()
                .map_err(build_err)?,
        )
        .send()
        .await
        .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
    Ok(())
}
