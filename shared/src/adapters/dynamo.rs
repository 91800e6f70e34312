//! The DynamoDB adapter: messages, conversations, idempotency records,
//! pending deliveries and devices (DESIGN §3).
//!
//! Work in progress: table creation first (the test harness and the local
//! gateway need it); the store follows.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};

use crate::config::TableNames;
use crate::ports::StoreError;

/// Attribute names, written once so a typo cannot split a table in two.
pub mod attr {
    pub const CONVERSATION_ID: &str = "conversation_id";
    pub const SEQ: &str = "seq";
    pub const MESSAGE_ID: &str = "message_id";
    pub const CLIENT_MSG_ID: &str = "client_msg_id";
    pub const SENDER_ID: &str = "sender_id";
    pub const BODY: &str = "body";
    pub const SENT_AT: &str = "sent_at";
    pub const USER_ID: &str = "user_id";
    pub const FIRST_UNDELIVERED_SEQ: &str = "first_undelivered_seq";
    pub const LAST_SEQ: &str = "last_seq";
    pub const UPDATED_AT: &str = "updated_at";
    pub const MEMBERS: &str = "members";
    pub const CREATED_AT: &str = "created_at";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const TOKEN: &str = "token";
    pub const PLATFORM: &str = "platform";
    pub const ENDPOINT_ARN: &str = "endpoint_arn";
}

/// The devices table's index from user to tokens.
pub const DEVICES_BY_USER_INDEX: &str = "by_user";

fn build_err(e: BuildError) -> StoreError {
    StoreError::Unavailable(format!("request could not be built: {e}"))
}

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
    enable_ttl(client, &tables.idempotency, attr::EXPIRES_AT).await
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

/// An SDK error as a store error: throttling and conflicts apart from the
/// rest, so callers can tell "slow down" from "broken".
fn sdk_err<E: ProvideErrorMetadata + std::fmt::Debug, R>(
    op: &'static str,
    e: SdkError<E, R>,
) -> StoreError {
    let code = e.code().unwrap_or("none").to_owned();
    let message = e.message().unwrap_or("").to_owned();
    match code.as_str() {
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TransactionConflictException" => {
            StoreError::Throttled(format!("{op}: {code}: {message}"))
        }
        _ => StoreError::Unavailable(format!("{op}: {code}: {message}")),
    }
}
