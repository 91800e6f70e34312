//! The design of aws-samples' simple-websockets-chat-app, as the baseline
//! of the cost figure: connections in a DynamoDB table (`onconnect`
//! `PutItem`, `ondisconnect` `DeleteItem`); `sendmessage` a `Scan` of the
//! whole table and one `PostToConnection` per connection found, a 410
//! answered by deleting the item. No persistence: a message reaches whoever
//! is connected at that instant, and nobody else, ever; no catch-up, no
//! acknowledgement, no push.
//!
//! The published sample is one room: it posts to every connection of the
//! app. Here each connection item also carries the room (the
//! conversation), and `send_message` posts only to that room's connections
//! — the benefit of the doubt, since posting a one-to-one message to every
//! user of the app would cost as many posts as there are users. It still
//! scans (and DynamoDB bills) every connection of the app, which is the
//! design's cost. Two more differences from the sample's code, neither
//! changing the bill: the scan has no `ProjectionExpression` (a projection
//! does not lower a read's units, and the meter refuses reads that hide
//! what they read) and follows `LastEvaluatedKey` (the sample reads one
//! 1 MB page and misses everyone after it).

use std::collections::HashMap;

use anyhow::Context as _;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use courier_core::domain::ConnectionId;
use courier_core::ports::{Gateway, PostError};

use super::lambda::LambdaMeter;

/// The sample's function names, as its template calls them, for the
/// Lambda count (all 256 MB in its template).
pub const ON_CONNECT: &str = "sample onconnect";
pub const ON_DISCONNECT: &str = "sample ondisconnect";
pub const SEND_MESSAGE: &str = "sample sendmessage";
pub const MEMORY_MB: u32 = 256;

const CONNECTION_ID: &str = "connectionId";
const ROOM_ID: &str = "roomId";

/// The sample's three functions over its table.
pub struct SampleApp {
    pub table: String,
    dynamodb: Client,
    gateway: std::sync::Arc<dyn Gateway>,
}

impl SampleApp {
    /// Creates the connections table (`connectionId` as the key, on
    /// demand, as the sample's template does).
    pub async fn create(
        dynamodb: Client,
        gateway: std::sync::Arc<dyn Gateway>,
    ) -> anyhow::Result<SampleApp> {
        // A scan of the whole app takes moto seconds (one Python process,
        // every item), past the local SDK configuration's 3 s attempt
        // timeout at 10,000 connections under load.
        let patient = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(std::time::Duration::from_secs(60))
            .operation_timeout(std::time::Duration::from_secs(120))
            .build();
        let dynamodb = Client::from_conf(
            dynamodb
                .config()
                .to_builder()
                .timeout_config(patient)
                .build(),
        );
        let table = format!(
            "sample-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        dynamodb
            .create_table()
            .table_name(&table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(CONNECTION_ID)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(CONNECTION_ID)
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .context("creating the sample's table")?;
        Ok(SampleApp {
            table,
            dynamodb,
            gateway,
        })
    }

    /// The item `onconnect` writes.
    pub fn item(connection: &str, room: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (
                CONNECTION_ID.to_owned(),
                AttributeValue::S(connection.into()),
            ),
            (ROOM_ID.to_owned(), AttributeValue::S(room.into())),
        ])
    }

    pub async fn on_connect(
        &self,
        meter: &LambdaMeter,
        connection: &str,
        room: &str,
    ) -> anyhow::Result<()> {
        meter
            .time(ON_CONNECT, async {
                self.dynamodb
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(Self::item(connection, room)))
                    .send()
                    .await
            })
            .await?;
        Ok(())
    }

    pub async fn on_disconnect(&self, meter: &LambdaMeter, connection: &str) -> anyhow::Result<()> {
        meter
            .time(ON_DISCONNECT, async {
                self.dynamodb
                    .delete_item()
                    .table_name(&self.table)
                    .key(CONNECTION_ID, AttributeValue::S(connection.into()))
                    .send()
                    .await
            })
            .await?;
        Ok(())
    }

    /// `sendmessage`: scan every connection, post `data` to those of
    /// `room` at once. Returns the number of posts accepted.
    pub async fn send_message(
        &self,
        meter: &LambdaMeter,
        room: &str,
        data: &str,
    ) -> anyhow::Result<usize> {
        meter
            .time(SEND_MESSAGE, async {
                let mut targets = Vec::new();
                let mut start = None;
                loop {
                    let page = self
                        .dynamodb
                        .scan()
                        .table_name(&self.table)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .context("the sample's scan")?;
                    for item in page.items() {
                        let in_room =
                            matches!(item.get(ROOM_ID), Some(AttributeValue::S(r)) if r == room);
                        if let (true, Some(AttributeValue::S(id))) =
                            (in_room, item.get(CONNECTION_ID))
                        {
                            targets.push(id.clone());
                        }
                    }
                    start = page.last_evaluated_key;
                    if start.is_none() {
                        break;
                    }
                }
                let posts = targets.iter().map(|id| async move {
                    let connection = ConnectionId::parse(id).map_err(|e| anyhow::anyhow!("{e}"))?;
                    match self.gateway.post(&connection, data.as_bytes()).await {
                        Ok(()) => Ok(1),
                        Err(PostError::Gone) => {
                            self.dynamodb
                                .delete_item()
                                .table_name(&self.table)
                                .key(CONNECTION_ID, AttributeValue::S(id.clone()))
                                .send()
                                .await?;
                            Ok(0)
                        }
                        Err(e) => Err(anyhow::anyhow!("post to {id}: {e}")),
                    }
                });
                let sent: Vec<anyhow::Result<usize>> = futures::future::join_all(posts).await;
                sent.into_iter().sum::<anyhow::Result<usize>>()
            })
            .await
    }
}
