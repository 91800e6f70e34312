//! The workloads, each a few real clients doing what users do, between two
//! marks of the meters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use courier_aws::apigw::ApiGatewayManagement;
use courier_core::domain::{ConversationId, UserId};
use courier_core::protocol::ServerFrame;
use serde_json::json;

use super::meters::Meters;
use super::{Config, Workload, prices, sample_app};
use crate::backends::Backends;
use crate::gateway::ProxiedGateway;
use crate::seed::{self, Spec};
use crate::ws::WsClient;

pub fn user(name: &str, tag: &str) -> anyhow::Result<UserId> {
    UserId::parse(&format!("{name}-{tag}")).map_err(|e| anyhow!("{e}"))
}

/// The next frame matching `pick`, skipping others.
async fn until<T>(
    c: &mut WsClient,
    what: &str,
    mut pick: impl FnMut(&ServerFrame) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let r = c
            .next(Duration::from_secs(60))
            .await
            .with_context(|| format!("waiting for {what}"))?;
        if let Some(t) = pick(&r.frame) {
            return Ok(t);
        }
    }
}

async fn online(gw: &ProxiedGateway, u: &UserId) -> anyhow::Result<WsClient> {
    let mut c = WsClient::connect(&gw.ws_url(), u).await?;
    c.until_caught_up(Duration::from_secs(60)).await?;
    Ok(c)
}

async fn create_conversation(
    creator: &mut WsClient,
    members: &[UserId],
) -> anyhow::Result<ConversationId> {
    let names: Vec<&str> = members.iter().map(UserId::as_str).collect();
    creator.send(json!({"action": "createConversation", "members": names}).to_string())?;
    until(creator, "conversation", |f| match f {
        ServerFrame::Conversation {
            conversation_id, ..
        } => Some(conversation_id.clone()),
        _ => None,
    })
    .await
}

fn send_frame(conversation: &ConversationId, body: &str) -> String {
    json!({
        "action": "sendMessage",
        "conversation_id": conversation.as_str(),
        "client_msg_id": uuid::Uuid::new_v4().to_string(),
        "body": body,
    })
    .to_string()
}

/// Sends and waits for `sent`; returns the seq.
async fn send(c: &mut WsClient, conversation: &ConversationId, body: &str) -> anyhow::Result<u64> {
    c.send(send_frame(conversation, body))?;
    until(c, "sent", |f| match f {
        ServerFrame::Sent { seq, .. } => Some(seq.get()),
        ServerFrame::Error { code, message, .. } => {
            tracing::error!(?code, message, "send refused");
            None
        }
        _ => None,
    })
    .await
}

/// Waits for `seq` of `conversation` and acks it.
async fn receive_and_ack(
    c: &mut WsClient,
    conversation: &ConversationId,
    seq: u64,
) -> anyhow::Result<()> {
    until(c, "the message", |f| match f {
        ServerFrame::Messages {
            conversation_id,
            messages,
        } if conversation_id == conversation && messages.iter().any(|m| m.seq.get() == seq) => {
            Some(())
        }
        _ => None,
    })
    .await?;
    c.send(ack_frame(&[(conversation.clone(), seq)]))
}

fn ack_frame(acks: &[(ConversationId, u64)]) -> String {
    let acks: Vec<_> = acks
        .iter()
        .map(|(c, s)| json!({"conversation_id": c.as_str(), "seq": s}))
        .collect();
    json!({"action": "ack", "acks": acks}).to_string()
}

/// (a) 1:1: sent, delivered live, acked, the receipt back to the sender.
pub async fn chat(m: &Meters, config: &Config, tag: &str, body: &str) -> anyhow::Result<Workload> {
    let (a, b) = (user("chat-a", tag)?, user("chat-b", tag)?);
    let mut ca = online(&m.gw, &a).await?;
    let mut cb = online(&m.gw, &b).await?;
    let conversation = create_conversation(&mut ca, std::slice::from_ref(&b)).await?;
    let before = m.mark(&[&ca, &cb]).await?;
    m.gw.tape.take();
    for _ in 0..config.chat_messages {
        let seq = send(&mut ca, &conversation, body).await?;
        receive_and_ack(&mut cb, &conversation, seq).await?;
        until(&mut ca, "the receipt", |f| match f {
            ServerFrame::Receipt {
                delivered_through_seq,
                ..
            } if delivered_through_seq.get() == seq => Some(()),
            _ => None,
        })
        .await?;
    }
    let w = m
        .usage(
            "Courier",
            "1:1, recipient online, acked".into(),
            config.chat_messages,
            &before,
            &[&ca, &cb],
        )
        .await?;
    ca.close();
    cb.close();
    Ok(w)
}

/// (b) a group: one sender, `group_online - 1` recipients online (each
/// acks), the rest offline with a push device.
pub async fn group(m: &Meters, config: &Config, tag: &str, body: &str) -> anyhow::Result<Workload> {
    let members: Vec<UserId> = (0..config.group_members)
        .map(|i| user(&format!("g{i}"), tag))
        .collect::<anyhow::Result<_>>()?;
    for u in &members[config.group_online..] {
        let mut c = online(&m.gw, u).await?;
        c.send(
            json!({"action": "registerDevice", "platform": "fcm", "token": format!("tok-{u}")})
                .to_string(),
        )?;
        until(&mut c, "device_registered", |f| {
            matches!(f, ServerFrame::DeviceRegistered { .. }).then_some(())
        })
        .await?;
        c.close();
    }
    let mut clients = Vec::new();
    for u in &members[..config.group_online] {
        clients.push(online(&m.gw, u).await?);
    }
    let conversation = create_conversation(&mut clients[0], &members[1..]).await?;
    // The offline members' $disconnect before the mark, not in it.
    m.lambda
        .idle(Duration::from_millis(300), Duration::from_secs(120))
        .await?;
    let before = m.mark(&clients.iter().collect::<Vec<_>>()).await?;
    m.gw.tape.take();
    for _ in 0..config.group_messages {
        let seq = send(&mut clients[0], &conversation, body).await?;
        for c in &mut clients[1..] {
            receive_and_ack(c, &conversation, seq).await?;
        }
    }
    let w = m
        .usage(
            "Courier",
            format!(
                "group of {}: {} online, {} offline with push",
                config.group_members,
                config.group_online - 1,
                config.group_members - config.group_online
            ),
            config.group_messages,
            &before,
            &clients.iter().collect::<Vec<_>>(),
        )
        .await?;
    for c in &clients {
        c.close();
    }
    Ok(w)
}

/// (c) a user back after a day: connect (authorizer, `$connect`, the
/// catch-up), every message received, one ack per conversation, then
/// `$disconnect`.
pub async fn catch_up(
    m: &Meters,
    backends: &Backends,
    config: &Config,
    tag: &str,
) -> anyhow::Result<Workload> {
    let (reader, sender) = (user("back", tag)?, user("friend", tag)?);
    let prefix = format!("cu-{tag}");
    let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
    let backlog = seed::seed(
        &direct,
        m.gw.store.tables(),
        &Spec {
            reader: &reader,
            sender: &sender,
            prefix: &prefix,
            conversations: config.backlog_conversations,
            messages_per_conversation: config.backlog_messages,
            body_bytes: config.body_bytes,
        },
    )
    .await?;
    let before = m.mark(&[]).await?;
    m.gw.tape.take();
    let mut c = WsClient::connect(&m.gw.ws_url(), &reader).await?;
    let frames = c.until_caught_up(Duration::from_secs(120)).await?;
    let mut last: BTreeMap<ConversationId, u64> = BTreeMap::new();
    let mut received = 0;
    for f in &frames {
        if let ServerFrame::Messages {
            conversation_id,
            messages,
        } = &f.frame
        {
            received += messages.len();
            for msg in messages {
                let e = last.entry(conversation_id.clone()).or_default();
                *e = (*e).max(msg.seq.get());
            }
        }
    }
    ensure!(
        received == backlog.total_messages(),
        "catch-up delivered {received} of {} messages",
        backlog.total_messages()
    );
    let acks: Vec<(ConversationId, u64)> = last.into_iter().collect();
    for chunk in acks.chunks(courier_core::protocol::MAX_ACKS_PER_FRAME) {
        c.send(ack_frame(chunk))?;
    }
    // The acks are answered by nothing the client waits for: they run
    // before the socket closes.
    m.lambda
        .idle(Duration::from_millis(300), Duration::from_secs(120))
        .await?;
    c.close();
    m.usage(
        "Courier",
        format!(
            "catch-up after a day offline: {} conversations × {} messages, acked, disconnect",
            config.backlog_conversations, config.backlog_messages
        ),
        backlog.total_messages(),
        &before,
        &[&c],
    )
    .await
}

/// The sample design on the 1:1 and group workloads, at each app size.
pub async fn sample(
    m: &Meters,
    backends: &Backends,
    config: &Config,
    tag: &str,
    body: &str,
) -> anyhow::Result<Vec<Workload>> {
    let app = sample_app::SampleApp::create(
        Backends::clients(&m.dynamo.url).dynamodb(),
        Arc::new(ApiGatewayManagement::new(
            Backends::clients(&backends.dynamodb_endpoint).management(&m.gw.management.url),
        )),
    )
    .await?;
    let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
    // The members' sockets are Courier's gateway's; their connection ids
    // are what the sample's onconnect would have stored.
    let members: Vec<UserId> = (0..config.group_online)
        .map(|i| user(&format!("s{i}"), tag))
        .collect::<anyhow::Result<_>>()?;
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    for u in &members {
        clients.push(online(&m.gw, u).await?);
        let conns = m.gw.registry.lookup(u).await?;
        let conn = conns.first().context("a member not in the registry")?;
        ids.push(conn.connection_id.as_str().to_owned());
    }
    let room_1to1 = format!("pair-{tag}");
    let room_group = format!("group-{tag}");
    let data = json!({"action": "sendmessage", "data": body}).to_string();
    let mut written = 0;
    let mut out = Vec::new();
    for &size in &config.app_sizes {
        // Everyone else connected to the app, each in a room of their own.
        let others = size.saturating_sub(ids.len());
        let filler: Vec<_> = (written..others)
            .map(|i| sample_app::SampleApp::item(&format!("other-{tag}-{i}"), &format!("r{i}")))
            .collect();
        seed::put_all(&direct, &app.table, filler).await?;
        written = written.max(others);
        for (name, room, in_room, n) in [
            ("1:1, recipient online", &room_1to1, 2, config.chat_messages),
            (
                "group, its online members only",
                &room_group,
                ids.len(),
                config.group_messages,
            ),
        ] {
            // onconnect, as each member's socket opened (not counted): the
            // first `in_room` in the room, the rest elsewhere.
            for (i, id) in ids.iter().enumerate() {
                let r = if i < in_room {
                    room.as_str()
                } else {
                    "elsewhere"
                };
                app.on_connect(&m.lambda, id, r).await?;
            }
            let refs: Vec<&WsClient> = clients.iter().collect();
            let before = m.mark(&refs).await?;
            let mut posted = 0;
            for _ in 0..n {
                posted += app.send_message(&m.lambda, room, body).await?;
            }
            ensure!(
                posted == n * in_room,
                "sample design, {name}: {posted} posts for {n} messages to {in_room} connections"
            );
            let mut w = m
                .usage(
                    "simple-websockets-chat-app",
                    format!("{name}, app of {size} connections"),
                    n,
                    &before,
                    &refs,
                )
                .await?;
            // The sender's frame in, which this benchmark does not send
            // through Courier's gateway (it would run Courier's $default).
            w.usage.apigw_messages +=
                n as u64 * prices::apigw_messages(data.len() as u64, m.increment);
            w.frames += n as u64;
            // Its functions are outside any VPC: nothing through a NAT.
            w.usage.nat_bytes = 0;
            out.push(w);
        }
    }
    for (c, id) in clients.iter().zip(&ids) {
        app.on_disconnect(&m.lambda, id).await?;
        c.close();
    }
    Ok(out)
}
