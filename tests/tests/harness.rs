//! The harness itself: the servers answer and table sets are isolated.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};

use courier_aws::dynamo::create_tables;
use courier_tests::{drop_tables, dynamo_client, fresh_tables, redis_url};

#[tokio::test]
async fn redis_answers_ping() {
    let url = redis_url().await;
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[tokio::test]
async fn fresh_tables_are_distinct_and_creation_is_idempotent() {
    let a = fresh_tables().await;
    let b = fresh_tables().await;
    assert_ne!(a.messages, b.messages);
    let client = dynamo_client().await;
    // Creating an existing set again is fine (the local gateway does it on
    // every start).
    create_tables(&client, &a).await.unwrap();
    for table in [
        &a.messages,
        &a.pending,
        &a.conversations,
        &a.idempotency,
        &a.devices,
    ] {
        let d = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap();
        assert_eq!(d.table().and_then(|t| t.table_name()), Some(table.as_str()));
    }
    let scan = client.scan().table_name(&b.messages).send().await.unwrap();
    assert_eq!(scan.count(), 0);
}

#[tokio::test]
async fn drop_tables_removes_the_whole_set() {
    let t = fresh_tables().await;
    drop_tables(&t).await;
    let client = dynamo_client().await;
    for table in [
        &t.messages,
        &t.pending,
        &t.conversations,
        &t.idempotency,
        &t.devices,
    ] {
        let e = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e),
            Some("ResourceNotFoundException")
        );
    }
}
