//! A model-based test of the whole protocol over the in-memory adapters.
//!
//! Over 700 lines: the model, its generator and its invariant checks are one
//! test and read together; the planted bugs (`mutants`) and the watched link
//! store (`watch`) sit beside it.
//!
//! Proptest generates a case: how many devices each of three users has
//! (1–3, docs/architecture.md, devices) and a history of steps, each acting
//! on one device — sends and retries, connects, clean and dirty
//! disconnects, stale `$disconnect`s, half-open connections that swallow
//! posts, connections that die after k posts, acks, full and range syncs,
//! catch-ups (each triggered one may run any number of times, late or
//! twice), intrusions into other people's conversations, crashes at any
//! port call (before or after the call took effect) and Redis outages —
//! some of them run concurrently and interleaved at port-call granularity
//! (see `courier_tests::crash`). The real services run every step; every
//! simulated device behaves as a real client must, on its own (insert by
//! seq, drop duplicates, ack its highest contiguous seq, retry its
//! unanswered sends with the same `client_msg_id`).
//!
//! After every step the delivery rules of docs/architecture.md are checked
//! against the stores and the devices:
//! - every linked device can still obtain every message stored since it was
//!   linked (`ack` mode) or answered since (`post` mode): it holds it, or
//!   the user's pending row covers it from that device's start
//!   (`start_for(device) <= seq <= last_seq`); the sender's other devices
//!   included;
//! - no pending row is gone, and no device's cursor moved, over a seq a
//!   device linked before the step does not hold;
//! - no cursor goes down (`ack` mode): neither a row's
//!   `first_undelivered_seq` nor any device's `held_by`, across deletions
//!   and re-creations; rows exist only for members;
//! - every conversation's seqs are exactly `1..=last_seq`; a
//!   `(sender, client_msg_id)` is stored at most once, at the seq its `sent`
//!   answered;
//! - no frame about a conversation ever reaches a connection of a user who is
//!   not a member of it, and every delivered message is the stored one.
//!
//! "Linked since" is taken where the link happens: the link store is watched
//! and, the moment a device is linked, every conversation's `last_seq` is
//! noted; what is stored after that is owed to the device.
//!
//! Then faults are healed and every device does what a real client does
//! until nothing is pending: at the end every linked device holds every
//! message since it was linked.
//!
//! `post` mode runs without swallowing connections: losing a message a
//! half-open connection swallowed is that mode's documented trade-off (see
//! `post_mode_loses_what_a_half_open_connection_swallows`).
//!
//! `MODEL_CASES` sets the number of cases (default 256 per mode);
//! `MODEL_STEPS` the longest history (default 40); `MODEL_SEED` the seed of
//! the run (default fixed, so every run generates the same cases;
//! `MODEL_SEED=<n>` replays the run of seed n, `MODEL_SEED=random` explores).
//! A failure prints its shrunk case — `(devices, steps, interleaving seed)` —
//! which `replayed_findings_hold` replays exactly once pasted in;
//! `CRASH_TRACE=1` prints every step as it runs.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::app::{App, MemoryHandles, Settings};
use courier_core::config::PendingClear;
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, DeviceId, Message, Millis,
    PendingDelivery, Seq, UserId, now_millis,
};
use courier_core::ports::{CatchUpRequest, ConversationStore, MessageStore, PendingStore};
use courier_core::protocol::{AckItem, ErrorCode, ServerFrame};
use courier_core::services::Answer;
use courier_core::services::catch_up;
use courier_core::services::{ack, connect, send};
use courier_tests::crash::{CrashPlan, crashing_ports};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

mod mutants;
mod watch;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// A user's devices, in order: a case gives each user the first 1–3. The
/// first is `default`, the device of a connection that names none, as every
/// connection of a deployment from before devices was.
const DEVICES: [&str; 3] = ["default", "laptop", "tablet"];
/// Each user is left out of one conversation: something to intrude into, and
/// frames that must never reach them.
const CONVERSATIONS: [(&str, &[usize]); 4] = [
    ("c1", &[0, 1]),
    ("c2", &[0, 1, 2]),
    ("c3", &[1, 2]),
    ("c4", &[0, 2]),
];

fn uid(i: usize) -> UserId {
    UserId::parse(USERS[i]).unwrap()
}

fn did(i: usize) -> DeviceId {
    DeviceId::parse(DEVICES[i]).unwrap()
}

fn cid(i: usize) -> ConversationId {
    ConversationId::parse(CONVERSATIONS[i].0).unwrap()
}

fn is_member(user: usize, conv: usize) -> bool {
    CONVERSATIONS[conv].1.contains(&user)
}

fn member_convs(user: usize) -> Vec<usize> {
    (0..CONVERSATIONS.len())
        .filter(|c| is_member(user, *c))
        .collect()
}

fn foreign_conv(user: usize) -> usize {
    (0..CONVERSATIONS.len())
        .find(|c| !is_member(user, *c))
        .unwrap()
}

fn conv_index(id: &ConversationId) -> usize {
    CONVERSATIONS
        .iter()
        .position(|(c, _)| *c == id.as_str())
        .unwrap()
}

/// One thing a device, the network or a function does. `device` picks one
/// of the user's devices (modulo how many the case gave them).
#[derive(Debug, Clone)]
enum Op {
    /// A new message into the user's `conv`-th own conversation.
    Send {
        user: usize,
        device: usize,
        conv: usize,
    },
    /// The device's oldest unanswered send again, same `client_msg_id`.
    Retry {
        user: usize,
        device: usize,
    },
    /// A new socket of the device, opened later than any before (the old
    /// one, if any, is dropped without `$disconnect`).
    Connect {
        user: usize,
        device: usize,
    },
    /// Socket closed and `$disconnect` run.
    Disconnect {
        user: usize,
        device: usize,
    },
    /// Socket gone; `$disconnect` comes later (`LateDisconnect`) or never.
    Drop {
        user: usize,
        device: usize,
    },
    LateDisconnect {
        user: usize,
        device: usize,
    },
    /// The socket turns half-open: posts succeed, nothing arrives.
    Swallow {
        user: usize,
        device: usize,
    },
    /// The socket dies after `posts` more successful posts.
    DieAfter {
        user: usize,
        device: usize,
        posts: usize,
    },
    /// The device acks its contiguous prefix of every conversation.
    Ack {
        user: usize,
        device: usize,
    },
    SyncFull {
        user: usize,
        device: usize,
    },
    SyncRange {
        user: usize,
        device: usize,
        conv: usize,
        limit: u32,
    },
    /// Runs the `pick`-th catch-up ever triggered: late, twice, for an old
    /// connection — as Lambda's async invokes may.
    CatchUp {
        pick: usize,
    },
    /// Send (0), ack (1) or range sync (2) in a conversation not the user's.
    Intrude {
        user: usize,
        device: usize,
        kind: usize,
    },
}

#[derive(Debug, Clone)]
enum Step {
    One(Op),
    /// Run at once, interleaved at port calls.
    Together(Vec<Op>),
    /// The `k`-th port call from now crashes its invocation.
    Crash {
        k: u64,
        after_effect: bool,
    },
    RedisDown(bool),
}

fn op_strategy(swallow: bool) -> impl Strategy<Value = Op> {
    let ud = (0..USERS.len(), 0..DEVICES.len());
    prop_oneof![
        10 => (ud.clone(), 0..3usize)
            .prop_map(|((user, device), conv)| Op::Send { user, device, conv }),
        2 => ud.clone().prop_map(|(user, device)| Op::Retry { user, device }),
        8 => ud.clone().prop_map(|(user, device)| Op::Connect { user, device }),
        2 => ud.clone().prop_map(|(user, device)| Op::Disconnect { user, device }),
        2 => ud.clone().prop_map(|(user, device)| Op::Drop { user, device }),
        1 => ud.clone().prop_map(|(user, device)| Op::LateDisconnect { user, device }),
        // Without swallowing (post mode), the socket dies outright instead.
        2 => ud.clone().prop_map(move |(user, device)| if swallow {
            Op::Swallow { user, device }
        } else {
            Op::Drop { user, device }
        }),
        2 => (ud.clone(), 0..4usize)
            .prop_map(|((user, device), posts)| Op::DieAfter { user, device, posts }),
        6 => ud.clone().prop_map(|(user, device)| Op::Ack { user, device }),
        2 => ud.clone().prop_map(|(user, device)| Op::SyncFull { user, device }),
        2 => (ud.clone(), 0..3usize, 1..4u32).prop_map(|((user, device), conv, limit)| {
            Op::SyncRange { user, device, conv, limit }
        }),
        5 => (0..64usize).prop_map(|pick| Op::CatchUp { pick }),
        1 => (ud, 0..3usize).prop_map(|((user, device), kind)| Op::Intrude { user, device, kind }),
    ]
}

fn step_strategy(swallow: bool) -> impl Strategy<Value = Step> {
    prop_oneof![
        14 => op_strategy(swallow).prop_map(Step::One),
        4 => prop::collection::vec(op_strategy(swallow), 2..4).prop_map(Step::Together),
        2 => (1..12u64, any::<bool>()).prop_map(|(k, after_effect)| Step::Crash { k, after_effect }),
        1 => any::<bool>().prop_map(Step::RedisDown),
    ]
}

/// How many devices each user has, the history, and the seed of the
/// interleaving. Shrinks towards one device each.
type Case = ([usize; 3], Vec<Step>, u64);

fn case_strategy(swallow: bool, max_steps: usize) -> impl Strategy<Value = Case> {
    (
        prop::array::uniform3(1..=DEVICES.len()),
        prop::collection::vec(step_strategy(swallow), 1..max_steps),
        any::<u64>(),
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A received message, as the client keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    message_id: String,
    sender: UserId,
    body: String,
}

/// One app installation: its own sockets, timeline, acks and sends.
struct Device {
    id: DeviceId,
    /// The live socket and its `connectedAt`.
    current: Option<(ConnectionId, Millis)>,
    /// Every connection ever opened, and how many of its frames were read.
    seen: Vec<(ConnectionId, usize)>,
    /// Connections whose `$disconnect` has not run yet.
    stale: VecDeque<ConnectionId>,
    timeline: BTreeMap<ConversationId, BTreeMap<u64, Held>>,
    acked: BTreeMap<ConversationId, u64>,
    /// Conversations a `more` frame said to pull with `sync`.
    more: BTreeSet<ConversationId>,
    unanswered: VecDeque<(ConversationId, ClientMsgId, String)>,
}

impl Device {
    fn new(index: usize) -> Device {
        Device {
            id: did(index),
            current: None,
            seen: Vec::new(),
            stale: VecDeque::new(),
            timeline: BTreeMap::new(),
            acked: BTreeMap::new(),
            more: BTreeSet::new(),
            unanswered: VecDeque::new(),
        }
    }

    fn contiguous(&self, conv: &ConversationId) -> u64 {
        let mut n = 0;
        if let Some(t) = self.timeline.get(conv) {
            for seq in t.keys() {
                if *seq == n + 1 {
                    n = *seq;
                } else {
                    break;
                }
            }
        }
        n
    }

    fn holds(&self, conv: &ConversationId, seq: u64) -> bool {
        self.timeline
            .get(conv)
            .is_some_and(|t| t.contains_key(&seq))
    }

    fn acks(&self, user: usize) -> Vec<AckItem> {
        member_convs(user)
            .into_iter()
            .map(cid)
            .filter_map(|c| {
                let through = self.contiguous(&c);
                (through > self.acked.get(&c).copied().unwrap_or(0)).then_some(AckItem {
                    conversation_id: c,
                    seq: Seq(through),
                })
            })
            .collect()
    }
}

struct Client {
    user: UserId,
    index: usize,
    devices: Vec<Device>,
    /// `client_msg_id`s are the user's, unique across their devices.
    next_key: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    cases: u64,
    steps: u64,
    devices: u64,
    answered: u64,
    deliveries: u64,
    duplicates: u64,
    crashes: u64,
    refused: u64,
    lost: u64,
}

static TOTALS: Mutex<Totals> = Mutex::new(Totals {
    cases: 0,
    steps: 0,
    devices: 0,
    answered: 0,
    deliveries: 0,
    duplicates: 0,
    crashes: 0,
    refused: 0,
    lost: 0,
});

/// A function invocation, prepared from the model's state, run against the
/// services with no borrow of the model, applied afterwards. `device` is
/// the index of one of the user's devices.
enum Call {
    Send {
        user: usize,
        device: usize,
        conv: ConversationId,
        key: ClientMsgId,
        body: String,
        member: bool,
    },
    Connect {
        user: usize,
        connection: Connection,
    },
    Disconnect {
        user: usize,
        device: usize,
        connection: ConnectionId,
    },
    Ack {
        user: usize,
        device: usize,
        acks: Vec<AckItem>,
        member: bool,
    },
    CatchUp {
        request: CatchUpRequest,
    },
    Range {
        user: usize,
        connection: Connection,
        conv: ConversationId,
        after: Seq,
        limit: u32,
        member: bool,
    },
}

enum Outcome {
    Send(Result<ServerFrame, send::SendError>),
    Ack(Result<Answer<ack::AckReport>, courier_core::ports::StoreError>),
    Range(Result<Answer<catch_up::Report>, catch_up::CatchUpError>),
    Done,
}

/// `(user, device)` → every conversation's `last_seq` the moment the device
/// was linked: what is stored after that is owed to it.
type LinkedAt = BTreeMap<(UserId, DeviceId), BTreeMap<ConversationId, u64>>;

struct World {
    app: App,
    h: MemoryHandles,
    plan: Arc<CrashPlan>,
    mode: PendingClear,
    clients: Vec<Client>,
    linked_at: Arc<Mutex<LinkedAt>>,
    /// `(sender, client_msg_id)` → the conversation and seq its `sent` said.
    answered: BTreeMap<(usize, ClientMsgId), (ConversationId, Seq)>,
    /// `(user, conversation)` → the highest `first_undelivered_seq` a
    /// pending row ever had.
    floors: BTreeMap<(UserId, ConversationId), u64>,
    /// `(user, device, conversation)` → the highest cursor (`held_by`) the
    /// device ever had on a pending row.
    cursors: BTreeMap<(UserId, DeviceId, ConversationId), u64>,
    /// The pending rows and the linked devices as the last check saw them.
    rows_before: BTreeMap<(UserId, ConversationId), PendingDelivery>,
    linked_before: BTreeSet<(UserId, DeviceId)>,
    /// Connections open later than every one before: `connectedAt` is this
    /// plus the connection's number.
    epoch: Millis,
    next_connection: u64,
    next_invocation: u64,
    duplicates: u64,
    refused: u64,
    /// Planted-bug runs stay out of the printed totals.
    counted: bool,
}

fn settings(mode: PendingClear) -> Settings {
    let mut s = Settings::default();
    s.delivery.pending_clear = mode;
    // A 410 is final at once: the model's connections are open before their
    // `$connect` runs, and real time must not matter to a replayed case.
    s.delivery.open_window = Duration::ZERO;
    // Small frames and a small cap: several frames per catch-up, `more`
    // frames, and posts that a dying connection can cut in between.
    s.delivery.max_frame_bytes = 400;
    s.catch_up.per_conversation_cap = 5;
    s.catch_up.concurrency = 2;
    s
}

impl World {
    async fn new(mode: PendingClear, devices: [usize; 3], seed: u64, mutant: Mutant) -> World {
        let h = MemoryHandles::new();
        for (i, (id, members)) in CONVERSATIONS.iter().enumerate() {
            let created = h
                .store
                .create(&Conversation {
                    conversation_id: ConversationId::parse(id).unwrap(),
                    members: members.iter().map(|m| uid(*m)).collect(),
                    last_seq: Seq::ZERO,
                    created_at: now_millis(),
                })
                .await
                .unwrap();
            assert!(created, "conversation {i}");
        }
        let plan = CrashPlan::new(seed, 2);
        let linked_at = Arc::new(Mutex::new(LinkedAt::new()));
        let mut ports = mutant.plant(&h);
        // Inside the crash wrappers: a link that took effect is noted even
        // when its invocation crashes right after.
        ports.links = Arc::new(watch::LinkWatch {
            store: h.store.clone(),
            linked_at: Arc::clone(&linked_at),
        });
        let ports = crashing_ports(&ports, &plan);
        World {
            app: App::new(ports, settings(mode)),
            h,
            plan,
            mode,
            clients: (0..USERS.len())
                .map(|i| Client {
                    user: uid(i),
                    index: i,
                    devices: (0..devices[i].clamp(1, DEVICES.len()))
                        .map(Device::new)
                        .collect(),
                    next_key: 0,
                })
                .collect(),
            linked_at,
            answered: BTreeMap::new(),
            floors: BTreeMap::new(),
            cursors: BTreeMap::new(),
            rows_before: BTreeMap::new(),
            linked_before: BTreeSet::new(),
            epoch: now_millis() - 60_000,
            next_connection: 0,
            next_invocation: 0,
            duplicates: 0,
            refused: 0,
            counted: mutant == Mutant::None,
        }
    }

    /// The device an op's `device` names.
    fn dev(&self, user: usize, device: usize) -> usize {
        device % self.clients[user].devices.len()
    }

    fn device(&mut self, user: usize, device: usize) -> &mut Device {
        let d = self.dev(user, device);
        &mut self.clients[user].devices[d]
    }

    fn connection(&self, user: usize, device: usize) -> Option<Connection> {
        let d = &self.clients[user].devices[self.dev(user, device)];
        d.current.clone().map(|(c, at)| Connection {
            device_id: d.id.clone(),
            connection_id: c,
            connected_at: Some(at),
        })
    }

    /// The network's part of an op happens here, at once; the function's
    /// part is returned as a call.
    fn prepare(&mut self, op: &Op) -> Option<Call> {
        match *op {
            Op::Send { user, device, conv } => {
                let convs = member_convs(user);
                let conv = cid(convs[conv % convs.len()]);
                let c = &mut self.clients[user];
                c.next_key += 1;
                let n = c.next_key;
                let key = ClientMsgId::parse(&format!("{}-{n}", USERS[user])).unwrap();
                let body = format!("{} says {n}", USERS[user]);
                let device = self.dev(user, device);
                self.clients[user].devices[device].unanswered.push_back((
                    conv.clone(),
                    key.clone(),
                    body.clone(),
                ));
                Some(Call::Send {
                    user,
                    device,
                    conv,
                    key,
                    body,
                    member: true,
                })
            }
            Op::Retry { user, device } => {
                let device = self.dev(user, device);
                let (conv, key, body) = self.clients[user].devices[device]
                    .unanswered
                    .front()?
                    .clone();
                Some(Call::Send {
                    user,
                    device,
                    conv,
                    key,
                    body,
                    member: true,
                })
            }
            Op::Connect { user, device } => {
                self.next_connection += 1;
                let n = self.next_connection;
                let at = self.epoch + i64::try_from(n).unwrap();
                let device = self.dev(user, device);
                let d = &mut self.clients[user].devices[device];
                let id =
                    ConnectionId::parse(&format!("{}-{}-conn-{n}", USERS[user], d.id)).unwrap();
                let device_id = d.id.clone();
                if let Some((old, _)) = d.current.replace((id.clone(), at)) {
                    self.h.gateway.close(&old);
                    d.stale.push_back(old);
                }
                d.seen.push((id.clone(), 0));
                self.h.gateway.open(&id);
                Some(Call::Connect {
                    user,
                    connection: Connection {
                        device_id,
                        connection_id: id,
                        connected_at: Some(at),
                    },
                })
            }
            Op::Disconnect { user, device } => {
                let device = self.dev(user, device);
                let (id, _) = self.clients[user].devices[device].current.take()?;
                self.h.gateway.close(&id);
                Some(Call::Disconnect {
                    user,
                    device,
                    connection: id,
                })
            }
            Op::Drop { user, device } => {
                let device = self.dev(user, device);
                let d = &mut self.clients[user].devices[device];
                let (id, _) = d.current.take()?;
                d.stale.push_back(id.clone());
                self.h.gateway.close(&id);
                None
            }
            Op::LateDisconnect { user, device } => {
                let device = self.dev(user, device);
                let id = self.clients[user].devices[device].stale.pop_front()?;
                Some(Call::Disconnect {
                    user,
                    device,
                    connection: id,
                })
            }
            Op::Swallow { user, device } => {
                let (id, _) = self.device(user, device).current.clone()?;
                self.h.gateway.swallow(&id);
                None
            }
            Op::DieAfter {
                user,
                device,
                posts,
            } => {
                let (id, _) = self.device(user, device).current.clone()?;
                self.h.gateway.die_after(&id, posts);
                None
            }
            Op::Ack { user, device } => {
                let device = self.dev(user, device);
                let acks = self.clients[user].devices[device].acks(user);
                if acks.is_empty() {
                    return None;
                }
                Some(Call::Ack {
                    user,
                    device,
                    acks,
                    member: true,
                })
            }
            Op::SyncFull { user, device } => {
                let connection = self.connection(user, device)?;
                Some(Call::CatchUp {
                    request: CatchUpRequest {
                        user_id: uid(user),
                        device_id: connection.device_id,
                        connection_id: connection.connection_id,
                        connected_at: connection.connected_at,
                        open_conversation: None,
                        device_limit: None,
                        origin: Default::default(),
                        correlation_id: None,
                    },
                })
            }
            Op::SyncRange {
                user,
                device,
                conv,
                limit,
            } => {
                let connection = self.connection(user, device)?;
                let convs = member_convs(user);
                let conv = cid(convs[conv % convs.len()]);
                let after = Seq(self.device(user, device).contiguous(&conv));
                Some(Call::Range {
                    user,
                    connection,
                    conv,
                    after,
                    limit,
                    member: true,
                })
            }
            Op::CatchUp { pick } => {
                let requests = self.h.trigger.requests();
                let request = requests.get(pick % requests.len().max(1))?.clone();
                Some(Call::CatchUp { request })
            }
            Op::Intrude { user, device, kind } => {
                let conv = cid(foreign_conv(user));
                let device = self.dev(user, device);
                match kind {
                    0 => {
                        let c = &mut self.clients[user];
                        c.next_key += 1;
                        Some(Call::Send {
                            user,
                            device,
                            conv,
                            key: ClientMsgId::parse(&format!("{}-x{}", USERS[user], c.next_key))
                                .unwrap(),
                            body: "not yours".into(),
                            member: false,
                        })
                    }
                    1 => Some(Call::Ack {
                        user,
                        device,
                        acks: vec![AckItem {
                            conversation_id: conv,
                            seq: Seq(1),
                        }],
                        member: false,
                    }),
                    _ => {
                        // With or without a socket of their own: the
                        // refusal must not depend on it.
                        let connection = self.connection(user, device).unwrap_or(Connection {
                            device_id: did(device),
                            connection_id: ConnectionId::parse("nobody").unwrap(),
                            connected_at: Some(now_millis()),
                        });
                        Some(Call::Range {
                            user,
                            connection,
                            conv,
                            after: Seq::ZERO,
                            limit: 100,
                            member: false,
                        })
                    }
                }
            }
        }
    }

    async fn execute(app: &App, call: &Call) -> Outcome {
        match call {
            Call::Send {
                user,
                device,
                conv,
                key,
                body,
                ..
            } => Outcome::Send(
                send::send_message(app, &uid(*user), &did(*device), conv, key, body, None)
                    .await
                    .map(Answer::into_frame),
            ),
            Call::Connect { user, connection } => {
                connect::connect(
                    app,
                    &uid(*user),
                    connection,
                    None,
                    courier_core::domain::CorrelationId::new(),
                )
                .await;
                Outcome::Done
            }
            Call::Disconnect {
                user,
                device,
                connection,
            } => {
                connect::disconnect(&app.ports, &uid(*user), &did(*device), connection).await;
                Outcome::Done
            }
            Call::Ack {
                user, device, acks, ..
            } => Outcome::Ack(ack::ack(app, &uid(*user), &did(*device), acks).await),
            Call::CatchUp { request } => {
                // Faults are fine here: the next catch-up or sync covers them.
                let _ = catch_up::catch_up(app, request, None, None).await;
                Outcome::Done
            }
            Call::Range {
                user,
                connection,
                conv,
                after,
                limit,
                ..
            } => Outcome::Range(
                catch_up::sync_range(
                    app,
                    &uid(*user),
                    connection,
                    conv,
                    *after,
                    Some(*limit),
                    None,
                )
                .await,
            ),
        }
    }

    async fn apply(&mut self, call: Call, outcome: Outcome) -> Result<(), TestCaseError> {
        match (call, outcome) {
            (
                Call::Send {
                    user,
                    device,
                    conv,
                    key,
                    member,
                    ..
                },
                Outcome::Send(result),
            ) => match (member, result) {
                (
                    true,
                    Ok(ServerFrame::Sent {
                        seq,
                        conversation_id,
                        client_msg_id,
                        ..
                    }),
                ) => {
                    prop_assert_eq!(&conversation_id, &conv);
                    prop_assert_eq!(&client_msg_id, &key);
                    if let Some((c, s)) = self.answered.get(&(user, key.clone())) {
                        prop_assert_eq!(
                            (c, *s),
                            (&conv, seq),
                            "a retried client_msg_id must answer its first seq"
                        );
                    }
                    // The sending device puts its own message in its
                    // timeline at the seq `sent` gave it.
                    let stored = self.h.store.range(&conv, seq, 1).await.unwrap();
                    prop_assert!(!stored.is_empty());
                    let m = &stored[0];
                    let d = &mut self.clients[user].devices[device];
                    d.timeline.entry(conv.clone()).or_default().insert(
                        seq.get(),
                        Held {
                            message_id: m.message_id.clone(),
                            sender: m.sender_id.clone(),
                            body: m.body.clone(),
                        },
                    );
                    d.unanswered.retain(|(_, k, _)| k != &key);
                    self.answered.insert((user, key), (conv, seq));
                }
                (true, Ok(other)) => {
                    return Err(TestCaseError::fail(format!(
                        "member's send answered {other:?}"
                    )));
                }
                (true, Err(_)) => {} // stays unanswered; the device retries
                (false, Ok(ServerFrame::Error { code, .. })) => {
                    prop_assert_eq!(code, ErrorCode::NotAMember);
                    self.refused += 1;
                }
                (false, Ok(other)) => {
                    return Err(TestCaseError::fail(format!(
                        "a non-member's send was answered {other:?}"
                    )));
                }
                (false, Err(_)) => {}
            },
            (
                Call::Ack {
                    user,
                    device,
                    acks,
                    member,
                },
                Outcome::Ack(result),
            ) => match (member, result) {
                (true, Ok(Answer::Done(report))) => {
                    prop_assert!(report.refused.is_empty(), "{:?}", report.refused);
                    let d = &mut self.clients[user].devices[device];
                    for a in acks {
                        let e = d.acked.entry(a.conversation_id).or_insert(0);
                        *e = (*e).max(a.seq.get());
                    }
                }
                (_, Ok(Answer::Refused(e))) => {
                    return Err(TestCaseError::fail(format!(
                        "an ack is served for its valid entries, never refused whole: {e:?}"
                    )));
                }
                (false, Ok(Answer::Done(report))) => {
                    prop_assert!(report.outcomes.is_empty(), "{:?}", report.outcomes);
                    prop_assert_eq!(report.refused.len(), 1);
                    prop_assert_eq!(report.refused[0].code, ErrorCode::NotAMember);
                    self.refused += 1;
                }
                (_, Err(_)) => {}
            },
            (Call::Range { member, .. }, Outcome::Range(result)) => match (member, result) {
                (true, Ok(Answer::Done(_)) | Err(_)) => {}
                (true, Ok(Answer::Refused(refusal))) => {
                    return Err(TestCaseError::fail(format!(
                        "member's range sync refused: {refusal:?}"
                    )));
                }
                (false, Ok(Answer::Refused(e))) if e.code == ErrorCode::NotAMember => {
                    self.refused += 1
                }
                (false, Err(_)) => {}
                (false, Ok(other)) => {
                    return Err(TestCaseError::fail(format!(
                        "a non-member's range sync was answered {other:?}"
                    )));
                }
            },
            (_, Outcome::Done) => {}
            _ => return Err(TestCaseError::fail("call and outcome do not match")),
        }
        Ok(())
    }

    async fn run_ops(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        let calls: Vec<Call> = ops.iter().filter_map(|op| self.prepare(op)).collect();
        let app = self.app.clone();
        let plan = Arc::clone(&self.plan);
        let first = self.next_invocation;
        self.next_invocation += calls.len() as u64;
        let outcomes = futures::future::join_all(calls.iter().enumerate().map(|(i, call)| {
            let app = &app;
            let plan = &plan;
            async move {
                plan.invocation(first + i as u64 + 1, World::execute(app, call))
                    .await
            }
        }))
        .await;
        for (call, outcome) in calls.into_iter().zip(outcomes) {
            self.apply(call, outcome).await?;
        }
        Ok(())
    }

    async fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::One(op) => self.run_ops(std::slice::from_ref(op)).await?,
            Step::Together(ops) => self.run_ops(ops).await?,
            Step::Crash { k, after_effect } => self.plan.arm(*k, *after_effect),
            Step::RedisDown(down) => self.h.registry.set_down(*down),
        }
        self.drain().await?;
        self.check().await
    }

    /// Every device reads what reached its sockets.
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        for c in &mut self.clients {
            for d in &mut c.devices {
                for (id, read) in &mut d.seen {
                    let frames = self.h.gateway.frames(id);
                    for raw in &frames[*read..] {
                        let frame: ServerFrame = serde_json::from_str(raw)
                            .map_err(|e| TestCaseError::fail(format!("bad frame {raw}: {e}")))?;
                        match frame {
                            ServerFrame::Messages {
                                conversation_id,
                                messages,
                            } => {
                                let conv = conv_index(&conversation_id);
                                prop_assert!(
                                    is_member(c.index, conv),
                                    "{} received messages of {}",
                                    c.user,
                                    conversation_id
                                );
                                for m in messages {
                                    let stored = self
                                        .h
                                        .store
                                        .range(&conversation_id, m.seq, 1)
                                        .await
                                        .unwrap();
                                    prop_assert_eq!(stored.len(), 1);
                                    let s = &stored[0];
                                    prop_assert_eq!(s.seq, m.seq);
                                    prop_assert_eq!(&s.body, &m.body);
                                    prop_assert_eq!(&s.sender_id, &m.sender_id);
                                    prop_assert_eq!(&s.message_id, &m.message_id);
                                    let held = Held {
                                        message_id: m.message_id,
                                        sender: m.sender_id,
                                        body: m.body,
                                    };
                                    let t = d.timeline.entry(conversation_id.clone()).or_default();
                                    if t.insert(m.seq.get(), held).is_some() {
                                        self.duplicates += 1;
                                    }
                                }
                            }
                            ServerFrame::More {
                                conversation_id, ..
                            } => {
                                prop_assert!(is_member(c.index, conv_index(&conversation_id)));
                                d.more.insert(conversation_id);
                            }
                            ServerFrame::Synced {
                                conversation_id, ..
                            }
                            | ServerFrame::Receipt {
                                conversation_id, ..
                            } => {
                                prop_assert!(
                                    is_member(c.index, conv_index(&conversation_id)),
                                    "{} received a frame about {}",
                                    c.user,
                                    conversation_id
                                );
                            }
                            ServerFrame::CaughtUp { .. } => {}
                            other => {
                                return Err(TestCaseError::fail(format!(
                                    "unexpected pushed frame {other:?}"
                                )));
                            }
                        }
                    }
                    *read = frames.len();
                }
            }
        }
        Ok(())
    }

    async fn stored(&self, conv: &ConversationId) -> Vec<Message> {
        self.h.store.range(conv, Seq(1), usize::MAX).await.unwrap()
    }

    /// The user's devices linked now, with every conversation's `last_seq`
    /// at their link.
    fn linked(&self, user: usize) -> Vec<(usize, BTreeMap<ConversationId, u64>)> {
        let linked_at = self.linked_at.lock().unwrap();
        self.clients[user]
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                linked_at
                    .get(&(uid(user), d.id.clone()))
                    .map(|at| (i, at.clone()))
            })
            .collect()
    }

    /// The invariants of docs/architecture.md, delivery rules and devices,
    /// on the stores and the devices.
    async fn check(&mut self) -> Result<(), TestCaseError> {
        let mut answered_at: BTreeSet<(ConversationId, u64)> = BTreeSet::new();
        for ((sender, key), (conv, seq)) in &self.answered {
            let stored = self.h.store.range(conv, *seq, 1).await.unwrap();
            prop_assert!(
                stored.first().is_some_and(|m| m.seq == *seq
                    && &m.client_msg_id == key
                    && m.sender_id == uid(*sender)),
                "sent {key} answered seq {seq} of {conv}, store has {stored:?}"
            );
            answered_at.insert((conv.clone(), seq.get()));
        }
        let mut rows: BTreeMap<(UserId, ConversationId), PendingDelivery> = BTreeMap::new();
        for u in 0..USERS.len() {
            for row in self.h.store.list(&uid(u)).await.unwrap() {
                rows.insert((row.user_id.clone(), row.conversation_id.clone()), row);
            }
        }
        let linked: Vec<_> = (0..USERS.len()).map(|u| self.linked(u)).collect();

        // No row gone, no cursor moved, over a seq a device linked before
        // this step does not hold: an ack moves only the acking device's
        // cursor, and the row goes only when every linked device is past it.
        for ((user, conv), before) in &self.rows_before {
            let u = USERS.iter().position(|x| *x == user.as_str()).unwrap();
            let now = rows
                .get(&(user.clone(), conv.clone()))
                .filter(|r| r.first_undelivered_seq <= before.last_seq);
            for d in &self.clients[u].devices {
                if !self.linked_before.contains(&(user.clone(), d.id.clone())) {
                    continue;
                }
                let from = before.start_for(&d.id).get();
                let to = now
                    .map_or(before.last_seq.next(), |r| r.start_for(&d.id))
                    .get();
                for seq in from..to.min(before.last_seq.get() + 1) {
                    prop_assert!(
                        d.holds(conv, seq),
                        "{}'s {} lacks seq {} of {}, yet its pending row went past it \
                         (was {:?}, now {:?})",
                        user,
                        d.id,
                        seq,
                        conv,
                        before,
                        now
                    );
                }
            }
        }

        for (ci, (_, members)) in CONVERSATIONS.iter().enumerate() {
            let conv = cid(ci);
            let meta = ConversationStore::get(&self.h.store, &conv)
                .await
                .unwrap()
                .unwrap();
            let messages = self.stored(&conv).await;
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq.get()).collect();
            let expected: Vec<u64> = (1..=meta.last_seq.get()).collect();
            prop_assert_eq!(seqs, expected, "seqs of {} are not gap-free", conv);
            let mut keys = BTreeSet::new();
            for m in &messages {
                prop_assert!(
                    keys.insert((m.sender_id.clone(), m.client_msg_id.clone())),
                    "{} stored twice in {}",
                    m.client_msg_id,
                    conv
                );
                // ack mode: the append wrote the rows, so even a send that was
                // never answered is owed to every device.
                let owed = self.mode == PendingClear::Ack
                    || answered_at.contains(&(conv.clone(), m.seq.get()));
                if !owed {
                    continue;
                }
                // Every linked device, the sender's other ones included, can
                // still obtain what was stored since its link.
                for &r in *members {
                    let row = rows.get(&(uid(r), conv.clone()));
                    for (d, at) in &linked[r] {
                        let device = &self.clients[r].devices[*d];
                        if m.seq.get() <= at.get(&conv).copied().unwrap_or(0)
                            || device.holds(&conv, m.seq.get())
                        {
                            continue;
                        }
                        prop_assert!(
                            row.is_some_and(
                                |row| row.start_for(&device.id) <= m.seq && m.seq <= row.last_seq
                            ),
                            "seq {} of {} is neither with {}'s {} nor covered by its pending \
                             row ({:?})",
                            m.seq,
                            conv,
                            USERS[r],
                            device.id,
                            row
                        );
                    }
                }
            }
        }

        for ((user, conv), row) in &rows {
            let u = USERS.iter().position(|x| *x == user.as_str()).unwrap();
            prop_assert!(
                is_member(u, conv_index(conv)),
                "pending row for a non-member: {row:?}"
            );
            let meta = ConversationStore::get(&self.h.store, conv)
                .await
                .unwrap()
                .unwrap();
            prop_assert!(
                row.first_undelivered_seq <= row.last_seq && row.last_seq <= meta.last_seq,
                "{row:?}"
            );
            // `post` mode may lower a row (a seq recorded late drops the
            // cursors); in `ack` mode nothing goes down, not even across a
            // deleted and re-created row.
            let ack_mode = self.mode == PendingClear::Ack;
            let floor = self.floors.entry((user.clone(), conv.clone())).or_insert(0);
            prop_assert!(
                !ack_mode || row.first_undelivered_seq.get() >= *floor,
                "first_undelivered_seq went down from {} to {:?}",
                floor,
                row
            );
            *floor = (*floor).max(row.first_undelivered_seq.get());
            for d in &self.clients[u].devices {
                let held = row.held_by(&d.id).get();
                let floor = self
                    .cursors
                    .entry((user.clone(), d.id.clone(), conv.clone()))
                    .or_insert(0);
                prop_assert!(
                    !ack_mode || held >= *floor,
                    "{}'s cursor went down from {} to {} ({:?})",
                    d.id,
                    floor,
                    held,
                    row
                );
                *floor = (*floor).max(held);
            }
        }
        self.rows_before = rows;
        self.linked_before = self.linked_at.lock().unwrap().keys().cloned().collect();
        Ok(())
    }

    /// Heals every fault and lets every device do what a real client does
    /// until nothing is owed; then every linked device must hold everything
    /// since its link.
    async fn settle(&mut self) -> Result<(), TestCaseError> {
        self.plan.disarm();
        self.h.registry.set_down(false);
        for _round in 0..12 {
            for user in 0..USERS.len() {
                for device in 0..self.clients[user].devices.len() {
                    self.settle_device(user, device).await?;
                }
                self.check().await?;
            }
            let mut pending = 0;
            for u in 0..USERS.len() {
                pending += self.h.store.list(&uid(u)).await.unwrap().len();
            }
            let unanswered: usize = self
                .clients
                .iter()
                .flat_map(|c| &c.devices)
                .map(|d| d.unanswered.len())
                .sum();
            if pending == 0 && unanswered == 0 {
                return self.all_delivered().await;
            }
        }
        let mut left = Vec::new();
        for u in 0..USERS.len() {
            left.extend(self.h.store.list(&uid(u)).await.unwrap());
        }
        Err(TestCaseError::fail(format!(
            "the system did not settle: every device caught up, pulled and acked 12 times, \
             rows left {left:?}"
        )))
    }

    /// One device retries, reconnects, catches up, pulls what is left and
    /// acks.
    async fn settle_device(&mut self, user: usize, device: usize) -> Result<(), TestCaseError> {
        while let Some(call) = self.prepare(&Op::Retry { user, device }) {
            let before = self.clients[user].devices[device].unanswered.len();
            self.run_call(call).await?;
            prop_assert!(
                self.clients[user].devices[device].unanswered.len() < before,
                "a retry with every fault healed was not answered"
            );
        }
        self.run_ops(&[Op::Connect { user, device }]).await?;
        let request = self.h.trigger.requests().last().cloned().unwrap();
        self.run_call(Call::CatchUp { request }).await?;
        self.drain().await?;
        // `more` frames and holes in a timeline are pulled with a range
        // sync, until neither is left.
        for _ in 0..5 {
            let d = &mut self.clients[user].devices[device];
            let mut pull = std::mem::take(&mut d.more);
            for (conv, t) in &d.timeline {
                if t.keys().next_back().copied().unwrap_or(0) > d.contiguous(conv) {
                    pull.insert(conv.clone());
                }
            }
            if pull.is_empty() {
                break;
            }
            for conv in pull {
                let ci = member_convs(user)
                    .iter()
                    .position(|c| cid(*c) == conv)
                    .unwrap();
                self.run_ops(&[Op::SyncRange {
                    user,
                    device,
                    conv: ci,
                    limit: 1000,
                }])
                .await?;
            }
            self.drain().await?;
        }
        self.run_ops(&[Op::Ack { user, device }]).await
    }

    async fn run_call(&mut self, call: Call) -> Result<(), TestCaseError> {
        self.next_invocation += 1;
        let outcome = self
            .plan
            .invocation(self.next_invocation, World::execute(&self.app, &call))
            .await;
        self.apply(call, outcome).await?;
        self.drain().await
    }

    async fn all_delivered(&self) -> Result<(), TestCaseError> {
        let mut deliveries = 0;
        let mut lost = 0;
        for (ci, (_, members)) in CONVERSATIONS.iter().enumerate() {
            let conv = cid(ci);
            let messages = self.stored(&conv).await;
            for m in &messages {
                for &r in *members {
                    for (d, at) in self.linked(r) {
                        if m.seq.get() <= at.get(&conv).copied().unwrap_or(0) {
                            continue;
                        }
                        let device = &self.clients[r].devices[d];
                        match device.timeline.get(&conv).and_then(|t| t.get(&m.seq.get())) {
                            Some(h) => {
                                prop_assert_eq!(&h.body, &m.body);
                                prop_assert_eq!(&h.message_id, &m.message_id);
                                prop_assert_eq!(&h.sender, &m.sender_id);
                                deliveries += 1;
                            }
                            None => lost += 1,
                        }
                    }
                }
            }
        }
        prop_assert_eq!(lost, 0, "messages lost after settling");
        if !self.counted {
            return Ok(());
        }
        let mut t = TOTALS.lock().unwrap();
        t.deliveries += deliveries;
        t.lost += lost;
        t.answered += self.answered.len() as u64;
        t.duplicates += self.duplicates;
        t.crashes += self.plan.crashes();
        t.refused += self.refused;
        t.devices += self
            .clients
            .iter()
            .map(|c| c.devices.len() as u64)
            .sum::<u64>();
        Ok(())
    }
}

fn run_case(
    mode: PendingClear,
    devices: [usize; 3],
    steps: &[Step],
    seed: u64,
    mutant: Mutant,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut world = World::new(mode, devices, seed, mutant).await;
        let trace = std::env::var_os("CRASH_TRACE").is_some_and(|v| v != "0");
        for (i, step) in steps.iter().enumerate() {
            if trace {
                eprintln!("step {i}: {step:?}");
            }
            world
                .step(step)
                .await
                .map_err(|e| TestCaseError::fail(format!("after step {i} ({step:?}): {e}")))?;
        }
        world.settle().await?;
        if mutant == Mutant::None {
            let mut t = TOTALS.lock().unwrap();
            t.cases += 1;
            t.steps += steps.len() as u64;
        }
        Ok(())
    })
}

/// The seed of the default, reproducible run.
const DEFAULT_MODEL_SEED: u64 = 20261129;

/// The default run is reproducible: a fixed seed, so the test command
/// passes or fails the same way on every machine. `MODEL_SEED=random`
/// explores new histories (the long run); `MODEL_SEED=<n>` replays one.
fn seeded_runner(config: Config) -> TestRunner {
    match std::env::var("MODEL_SEED").ok().as_deref() {
        Some("random") => TestRunner::new(config),
        other => {
            let seed: u64 = other
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_MODEL_SEED);
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRunner::new_with_rng(
                config,
                proptest::test_runner::TestRng::from_seed(
                    proptest::test_runner::RngAlgorithm::ChaCha,
                    &bytes,
                ),
            )
        }
    }
}

fn run_model(mode: PendingClear, swallow: bool) {
    let cases = env_usize("MODEL_CASES", 256) as u32;
    let max_steps = env_usize("MODEL_STEPS", 40).max(2);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = seeded_runner(config);
    let started = Instant::now();
    let result = runner.run(
        &case_strategy(swallow, max_steps),
        |(devices, steps, seed)| run_case(mode, devices, &steps, seed, Mutant::None),
    );
    let t = *TOTALS.lock().unwrap();
    eprintln!(
        "model {mode:?}: {} cases, {} devices, {} steps, {} sends answered, {} deliveries, \
         {} lost, {} duplicates dropped, {} crashes injected, {} intrusions refused, {:.1}s",
        t.cases,
        t.devices,
        t.steps,
        t.answered,
        t.deliveries,
        t.lost,
        t.duplicates,
        t.crashes,
        t.refused,
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Both modes share `TOTALS`; running them in one test keeps the printed
/// numbers per mode.
#[test]
fn model_holds_every_invariant_in_ack_and_post_mode() {
    run_model(PendingClear::Ack, true);
    *TOTALS.lock().unwrap() = Totals::default();
    run_model(PendingClear::Post, false);
}

/// The trade-off `post` mode makes (docs/architecture.md, delivery rules), shown rather than claimed: a
/// post a half-open connection swallowed counts as delivered, and nothing is
/// left to redeliver it. `ack` mode, same history, redelivers.
#[test]
fn post_mode_loses_what_a_half_open_connection_swallows() {
    for mode in [PendingClear::Post, PendingClear::Ack] {
        let steps = vec![
            Step::One(Op::Connect { user: 1, device: 0 }),
            Step::One(Op::Swallow { user: 1, device: 0 }),
            Step::One(Op::Send {
                user: 0,
                device: 0,
                conv: 0,
            }),
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let held = rt.block_on(async {
            let mut w = World::new(mode, [1, 1, 1], 1, Mutant::None).await;
            for s in &steps {
                // Not `step`: its invariant check is what post mode breaks.
                let Step::One(op) = s else { unreachable!() };
                w.run_ops(std::slice::from_ref(op)).await.unwrap();
                w.drain().await.unwrap();
            }
            // bob reconnects and catches up.
            w.run_ops(&[Op::Connect { user: 1, device: 0 }])
                .await
                .unwrap();
            let request = w.h.trigger.requests().last().cloned().unwrap();
            w.run_call(Call::CatchUp { request }).await.unwrap();
            w.clients[1].devices[0].holds(&cid(0), 1)
        });
        match mode {
            PendingClear::Post => assert!(!held, "post mode has nothing to redeliver"),
            PendingClear::Ack => assert!(held, "ack mode redelivers on reconnect"),
        }
    }
}

/// A bug planted in an adapter, to show the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutant {
    None,
    /// An ack deletes the row whatever its `last_seq`: newer messages wiped.
    AckWipesNewer,
    /// The append writes no pending rows.
    NoPendingRows,
    /// The registry answers with another user's connection.
    CrossedRegistry,
    /// An ack clears the row once the acking device is past it, whatever
    /// the user's other linked devices hold (`linked` ignored).
    AckForgetsOtherDevices,
    /// Rows are read as if the user had one cursor, the furthest device's:
    /// a catch-up starts every device where the most advanced one is.
    SharedCursor,
}

impl Mutant {
    fn plant(self, h: &MemoryHandles) -> courier_core::app::Ports {
        let mut ports = h.ports();
        match self {
            Mutant::None => {}
            Mutant::AckWipesNewer => {
                ports.pending = Arc::new(mutants::AckWipesNewer(h.store.clone()))
            }
            Mutant::NoPendingRows => {
                ports.messages = Arc::new(mutants::NoPendingRows(h.store.clone()))
            }
            Mutant::CrossedRegistry => {
                ports.registry = Arc::new(mutants::CrossedRegistry(h.registry.clone()))
            }
            Mutant::AckForgetsOtherDevices => {
                ports.pending = Arc::new(mutants::AckForgetsOtherDevices(h.store.clone()))
            }
            Mutant::SharedCursor => {
                ports.pending = Arc::new(mutants::SharedCursor(h.store.clone()))
            }
        }
        ports
    }
}

/// The model has teeth: each planted bug is found within the default
/// number of cases, from the same seed as the main run (`MODEL_SEED`).
#[test]
fn the_model_catches_planted_bugs() {
    for mutant in [
        Mutant::AckWipesNewer,
        Mutant::NoPendingRows,
        Mutant::CrossedRegistry,
        Mutant::AckForgetsOtherDevices,
        Mutant::SharedCursor,
    ] {
        let mut runner = seeded_runner(Config {
            cases: 256,
            max_shrink_iters: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&case_strategy(true, 40), |(devices, steps, seed)| {
            run_case(PendingClear::Ack, devices, &steps, seed, mutant)
        });
        let Err(e) = result else {
            panic!("{mutant:?} went unnoticed")
        };
        eprintln!("{mutant:?} caught: {e}");
    }
}

/// Cases the random runs once failed on, replayed exactly (devices, steps
/// and the interleaving seed) on every run.
#[test]
fn replayed_findings_hold() {
    use Op::*;
    let found: Vec<(PendingClear, [usize; 3], Vec<Step>, u64)> = vec![(
        // A post-mode sync racing a send and a retry, Redis down, crashes
        // (found with one device each).
        PendingClear::Post,
        [1, 1, 1],
        vec![
            Step::Crash {
                k: 1,
                after_effect: false,
            },
            Step::Crash {
                k: 3,
                after_effect: true,
            },
            Step::One(Send {
                user: 0,
                device: 0,
                conv: 1,
            }),
            Step::Together(vec![
                Disconnect { user: 0, device: 0 },
                Send {
                    user: 0,
                    device: 0,
                    conv: 0,
                },
            ]),
            Step::Together(vec![
                Disconnect { user: 0, device: 0 },
                Send {
                    user: 0,
                    device: 0,
                    conv: 0,
                },
            ]),
            Step::RedisDown(true),
            Step::Together(vec![
                Disconnect { user: 0, device: 0 },
                Send {
                    user: 0,
                    device: 0,
                    conv: 1,
                },
            ]),
            Step::One(Send {
                user: 0,
                device: 0,
                conv: 0,
            }),
            Step::One(Connect { user: 2, device: 0 }),
            Step::Together(vec![
                SyncFull { user: 2, device: 0 },
                Send {
                    user: 0,
                    device: 0,
                    conv: 0,
                },
                Retry { user: 0, device: 0 },
            ]),
        ],
        3027286953632785512,
    )];
    for (mode, devices, steps, seed) in found {
        if let Err(e) = run_case(mode, devices, &steps, seed, Mutant::None) {
            panic!("{mode:?}, {devices:?}, seed {seed}: {e}");
        }
    }
}

/// Found by this model (seed 1806 of the history below; 4 in 3000 seeds
/// failed): in `post` mode a catch-up read the user's linked devices once,
/// at its start, and settled with that list. bob's laptop links while his
/// phone catches up; alice's message, stored after the link, is recorded
/// for the laptop (not reached live) and posted to the phone by the same
/// catch-up's next round, which settled through it with `linked =
/// [default]`: the row went, the laptop never got the message. Fixed: the
/// settle reads the linked devices after posting (whatever the catch-up
/// posted was read after its append, so after the link); this history
/// stays in the default run so it cannot come back.
#[test]
fn post_mode_catch_up_keeps_the_row_for_a_device_linked_meanwhile() {
    use Op::*;
    let steps = vec![
        Step::One(Connect { user: 1, device: 0 }),
        Step::One(Drop { user: 1, device: 0 }),
        Step::One(Send {
            user: 0,
            device: 0,
            conv: 0,
        }),
        Step::One(Connect { user: 1, device: 0 }),
        Step::Together(vec![
            SyncFull { user: 1, device: 0 },
            Connect { user: 1, device: 1 },
            Send {
                user: 0,
                device: 0,
                conv: 0,
            },
        ]),
    ];
    if let Err(e) = run_case(PendingClear::Post, [1, 2, 1], &steps, 1806, Mutant::None) {
        panic!("{e}");
    }
}
