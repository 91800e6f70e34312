// The protocol rules without a socket: the Session answers events with the
// frames a client must send, so each rule is checked frame by frame.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_TUNING,
  MAX_ACKS_PER_FRAME,
  Session,
  backoff,
  retryWait,
  isPermanent,
  tokenSubject,
  withToken,
  newClientMsgId,
  frameBytes,
} from '../src/courier.js';

const T = DEFAULT_TUNING;

function session(tuning = {}) {
  const events = [];
  const s = new Session({ me: 'bob', tuning, emit: (type, detail) => events.push({ type, detail }) });
  return { s, events };
}

const messages = (conv, seqs, sender = 'alice') =>
  JSON.stringify({
    type: 'messages',
    conversation_id: conv,
    messages: seqs.map((seq) => ({ seq, message_id: `m${seq}`, sender_id: sender, body: `b${seq}`, sent_at: 1 })),
  });
const parsed = (frames) => frames.map((f) => JSON.parse(f));
const waiter = () => {
  const w = {};
  w.promise = new Promise((resolve, reject) => Object.assign(w, { resolve, reject }));
  return w;
};

test('acks cover the contiguous prefix only', () => {
  const { s } = session();
  s.onOpen(0);
  assert.deepEqual(s.onText(messages('c1', [1, 2, 4]), 0), [], 'acks wait for the coalescing delay');
  const out = parsed(s.onTick(T.ackDelay));
  assert.deepEqual(out, [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 2 }] }]);
  s.onText(messages('c1', [3]), 200);
  assert.deepEqual(parsed(s.onTick(200 + T.ackDelay)), [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 4 }] }]);
});

test('acks are coalesced: one frame for many messages frames and conversations', () => {
  const { s } = session();
  s.onOpen(0);
  for (let i = 1; i <= 10; i += 1) s.onText(messages('c1', [i]), i);
  s.onText(messages('c2', [1, 2, 3]), 20);
  assert.deepEqual(s.onTick(50), [], 'nothing before the delay has passed');
  const out = parsed(s.onTick(T.ackDelay + 1));
  assert.equal(out.length, 1);
  assert.deepEqual(out[0].acks, [
    { conversation_id: 'c1', seq: 10 },
    { conversation_id: 'c2', seq: 3 },
  ]);
  assert.deepEqual(s.onTick(1000), [], 'nothing new, nothing sent');
});

test('more than 100 conversations to ack split into frames of 100', () => {
  const { s } = session();
  s.onOpen(0);
  for (let c = 0; c < 150; c += 1) s.onText(messages(`c${c}`, [1]), 0);
  const out = parsed(s.onTick(T.ackDelay));
  assert.deepEqual(out.map((f) => f.acks.length), [MAX_ACKS_PER_FRAME, 50]);
});

test('ackDelay 0 acks at once', () => {
  const { s } = session({ ackDelay: 0 });
  s.onOpen(0);
  assert.deepEqual(parsed(s.onText(messages('c1', [1, 2]), 0)), [
    { action: 'ack', acks: [{ conversation_id: 'c1', seq: 2 }] },
  ]);
});

test('a redelivery of acked messages repeats the ack (the first was lost with its socket)', () => {
  const { s, events } = session();
  s.onOpen(0);
  s.onText(messages('c1', [1, 2]), 0);
  s.onTick(T.ackDelay);
  s.onClose();
  s.onOpen(1000);
  s.onText(messages('c1', [1, 2]), 1000);
  const out = parsed(s.onTick(1000 + T.ackDelay));
  assert.deepEqual(out, [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 2 }] }]);
  assert.equal(s.duplicates, 2);
  assert.equal(events.filter((e) => e.type === 'message').length, 2, 'duplicates are not reported');
});

test('holes are synced after their grace, one sync in flight per conversation', () => {
  const { s } = session();
  s.onOpen(0);
  s.onText(messages('c1', [1, 5]), 0);
  assert.ok(parsed(s.onTick(100)).every((f) => f.after_seq === undefined));
  const t1 = T.holeGrace;
  const sync = parsed(s.onTick(t1)).find((f) => f.action === 'sync');
  assert.deepEqual(sync, { action: 'sync', conversation_id: 'c1', after_seq: 1, limit: T.syncLimit });
  assert.ok(
    parsed(s.onTick(t1 + T.holeGrace)).every((f) => f.action !== 'sync'),
    'not repeated while in flight',
  );
  const again = parsed(s.onTick(t1 + T.syncTimeout)).find((f) => f.conversation_id === 'c1');
  assert.equal(again.after_seq, 1, 'repeated once the sync timed out');
  s.onText(messages('c1', [2, 3, 4]), t1 + T.syncTimeout);
  assert.deepEqual(s.timeline('c1').holes(), []);
  assert.deepEqual(s.timeline('c1').messages().map((m) => m.seq), [1, 2, 3, 4, 5]);
});

test('a live message overtaking catch-up opens a hole that closes without a sync', () => {
  const { s } = session();
  s.onOpen(0);
  s.onText(messages('c1', [44]), 0);
  s.onText(messages('c1', Array.from({ length: 43 }, (_, i) => i + 1)), 100);
  assert.ok(parsed(s.onTick(T.holeGrace * 3)).every((f) => f.action !== 'sync'));
  assert.equal(s.timeline('c1').contiguousThrough, 44);
});

test('more pulls the rest from the contiguous end at once', () => {
  const { s } = session();
  s.onOpen(0);
  s.onText(messages('c1', [1, 2, 3]), 0);
  const out = parsed(s.onText(JSON.stringify({ type: 'more', conversation_id: 'c1', next_seq: 4 }), 0));
  assert.deepEqual(out, [{ action: 'sync', conversation_id: 'c1', after_seq: 3, limit: T.syncLimit }]);
});

const historyStarts = (conv, first) =>
  JSON.stringify({ type: 'history_starts', conversation_id: conv, first_available_seq: first });
const caughtUp = JSON.stringify({ type: 'caught_up', conversations: 1, messages: 1 });
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('history_starts closes a hole and acks once; the range sync for the hole counts as answered', () => {
  const { s } = session();
  s.onOpen(0);
  s.onText(caughtUp, 0);
  s.onText(messages('c1', [1, 2, 6, 7]), 0);
  s.onTick(T.ackDelay);
  const t1 = T.holeGrace;
  const fill = parsed(s.onTick(t1)).find((f) => f.action === 'sync');
  assert.equal(fill.after_seq, 2);
  // Its reply: 3..5 expired.
  assert.deepEqual(s.onText(historyStarts('c1', 6), t1 + 10), [], 'the ack waits for the coalescing delay');
  assert.equal(s.timeline('c1').contiguousThrough, 7);
  s.onText(historyStarts('c1', 6), t1 + 20);
  assert.deepEqual(parsed(s.onTick(t1 + 10 + T.ackDelay)), [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 7 }] }]);
  assert.deepEqual(sentAt(s, t1 + 200, 2000, () => true), [], 'no second ack, no sync for the closed hole');
  // A new hole is asked for after its own grace, not held back until the
  // answered sync's timeout.
  const t2 = t1 + 2300;
  assert.ok(t2 + T.holeGrace < t1 + T.syncTimeout);
  s.onText(messages('c1', [9]), t2);
  const next = parsed(s.onTick(t2 + T.holeGrace)).find((f) => f.action === 'sync');
  assert.equal(next?.after_seq, 7);
});

test('a client with nothing held gets history_starts 5, then 5..7, and acks 7', () => {
  const { s, events } = session();
  s.onOpen(0);
  s.onText(caughtUp, 0);
  s.onText(historyStarts('c1', 5), 0);
  s.onText(messages('c1', [5, 6, 7]), 10);
  assert.deepEqual(parsed(s.onTick(10 + T.ackDelay)), [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 7 }] }]);
  assert.deepEqual(s.timeline('c1').holes(), []);
  assert.deepEqual(sentAt(s, 200, 4 * T.syncTimeout, () => true), [], 'nothing below 5 is asked for');
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.detail.seq), [5, 6, 7]);
});

test('history_starts at or below the contiguous end changes nothing and sends no ack', () => {
  const { s } = session({ ackDelay: 0 });
  s.onOpen(0);
  s.onText(caughtUp, 0);
  s.onText(messages('c1', [1, 2, 3, 4, 5]), 0);
  for (const first of [3, 6]) {
    assert.deepEqual(s.onText(historyStarts('c1', first), 0), []);
    assert.equal(s.timeline('c1').contiguousThrough, 5);
  }
  assert.deepEqual(s.onTick(10_000), []);
});

test('more continues the range sync from next_seq; the hole below is left to the hole fill', () => {
  const { s } = session();
  s.onOpen(0);
  s.onText(messages('c1', [1, 2, 10, 11]), 0);
  const out = parsed(s.onText(JSON.stringify({ type: 'more', conversation_id: 'c1', next_seq: 12 }), 0));
  assert.deepEqual(out, [{ action: 'sync', conversation_id: 'c1', after_seq: 11, limit: T.syncLimit }]);
  // A `more` behind the contiguous end, or with no usable next_seq, goes on
  // from the contiguous end.
  s.onText(messages('c2', [1, 2, 3]), 0);
  for (const next of [2, '9', undefined]) {
    const again = parsed(s.onText(JSON.stringify({ type: 'more', conversation_id: 'c2', next_seq: next }), 0));
    assert.equal(again[0].after_seq, 3, `next_seq ${next}`);
  }
  s.onText(JSON.stringify({ type: 'synced', conversation_id: 'c1', through_seq: 11 }), 100);
  const fill = parsed(s.onTick(T.holeGrace)).find((f) => f.action === 'sync');
  assert.deepEqual(fill, { action: 'sync', conversation_id: 'c1', after_seq: 2, limit: T.syncLimit });
});

test('expired seqs below a page: every more moves the range sync on instead of asking for the same page', () => {
  // Seqs 3..9 expired; the server keeps 10..30 and answers a range sync with
  // the first `limit` seqs it still has above after_seq, then `more` or
  // `synced`. Followed from the contiguous end (2), every sync would get
  // 10..14 and `more` 15 back, forever.
  const kept = range(10, 30);
  const last = kept.at(-1);
  let saysWhereHistoryStarts = false;
  const answer = (sync) => {
    const page = kept.filter((q) => q > sync.after_seq).slice(0, sync.limit);
    const frames = [];
    if (saysWhereHistoryStarts && sync.after_seq < kept[0] - 1) frames.push(historyStarts('c1', kept[0]));
    if (page.length) frames.push(messages('c1', page));
    const end = page.at(-1) ?? Math.min(sync.after_seq, last);
    frames.push(end < last
      ? JSON.stringify({ type: 'more', conversation_id: 'c1', next_seq: end + 1 })
      : JSON.stringify({ type: 'synced', conversation_id: 'c1', through_seq: end }));
    return frames;
  };
  // Answers every range sync among `frames` and the ones the answers bring
  // (at most 20); the after_seq of each, in order.
  const converse = (frames, now) => {
    const asked = [];
    const syncs = parsed(frames).filter((f) => f.action === 'sync');
    while (syncs.length && asked.length < 20) {
      const sync = syncs.shift();
      asked.push(sync.after_seq);
      for (const f of answer(sync)) syncs.push(...parsed(s.onText(f, now)).filter((x) => x.action === 'sync'));
    }
    return asked;
  };
  const { s } = session({ syncLimit: 5 });
  s.onOpen(0);
  s.onText(caughtUp, 0);
  s.onText(messages('c1', [1, 2]), 0);
  // The catch-up from the first unacked seq (3): the first page, then `more`.
  s.onText(messages('c1', range(10, 14)), 0);
  const more = s.onText(JSON.stringify({ type: 'more', conversation_id: 'c1', next_seq: 15 }), 0);
  assert.deepEqual(converse(more, 0), [14, 19, 24, 29], 'each sync starts where the last page ended');
  assert.deepEqual(s.timeline('c1').holes(), [[3, 9]]);

  // The hole fill asks from the contiguous end; a server that says where
  // history starts closes the hole, and the ack covers everything.
  saysWhereHistoryStarts = true;
  assert.deepEqual(converse(s.onTick(T.holeGrace), T.holeGrace), [2, 30]);
  assert.equal(s.timeline('c1').contiguousThrough, 30);
  assert.deepEqual(parsed(s.onTick(T.holeGrace + T.ackDelay)), [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 30 }] }]);
  assert.deepEqual(sentAt(s, T.holeGrace + 200, 4 * T.syncTimeout, () => true), [], 'nothing left to ask for');
});

test('no caught_up in time sends a full sync, once per timeout', () => {
  const { s, events } = session();
  s.onOpen(0);
  assert.deepEqual(s.onTick(1000), []);
  assert.deepEqual(parsed(s.onTick(T.caughtUpTimeout)), [{ action: 'sync' }]);
  assert.deepEqual(s.onTick(T.caughtUpTimeout + 100), [], 'the wait restarts');
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 2, messages: 6 }), T.caughtUpTimeout + 250);
  assert.deepEqual(s.onTick(60_000), []);
  assert.equal(s.caughtUpCount, 1);
  const ev = events.find((e) => e.type === 'caughtUp').detail;
  assert.deepEqual(ev, { conversations: 2, messages: 6, unreached: 0, afterOpenMs: T.caughtUpTimeout + 250 });
});

test('a caught_up with unreached conversations is followed by a full sync, later each time in a row', () => {
  const { s, events } = session();
  const fullSync = (f) => f.action === 'sync' && f.conversation_id === undefined;
  s.onOpen(0);
  const cut = JSON.stringify({ type: 'caught_up', conversations: 9, messages: 4, unreached: 5 });
  s.onText(cut, 100);
  const ev = events.find((e) => e.type === 'caughtUp').detail;
  assert.equal(ev.unreached, 5);
  assert.deepEqual(sentAt(s, 100, 2000, fullSync), [T.holeGrace], 'one sync, after the grace');
  // Cut short again: one more sync, no sooner than the grace. The window
  // ends before the sync after it, which waits caughtUpTimeout doubled,
  // with jitter: 4–8 s after this one (a 5 s window caught it 1 time in 8).
  s.onText(cut, 3000);
  const again = sentAt(s, 3000, 3000, fullSync);
  assert.equal(again.length, 1, `${again}`);
  assert.ok(again[0] >= T.holeGrace, `${again}`);
  // Complete: nothing more.
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 5, messages: 30 }), 9000);
  assert.deepEqual(sentAt(s, 9000, 120_000, fullSync), []);
});

test('sends are retried with the same client_msg_id until sent, and land in the timeline', async () => {
  const { s, events } = session();
  const w = waiter();
  assert.equal(s.queueSend('c1', 'k1', 'hi', w, 0), null, 'offline: queued');
  const first = parsed(s.onOpen(0));
  assert.deepEqual(first, [{ action: 'sendMessage', conversation_id: 'c1', client_msg_id: 'k1', body: 'hi' }]);
  assert.deepEqual(s.onTick(1000), []);
  const retry = parsed(s.onTick(T.sendRetry));
  assert.equal(retry[0].client_msg_id, 'k1');
  s.onClose();
  const reopened = parsed(s.onOpen(T.sendRetry + 10));
  assert.equal(reopened[0].client_msg_id, 'k1', 'resent on the next connection, same id');
  s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: 'k1', seq: 1, sent_at: 9 }), 5000);
  assert.deepEqual(await w.promise, { conversationId: 'c1', clientMsgId: 'k1', seq: 1, sentAt: 9 });
  assert.equal(s.outbox.size, 0);
  const mine = s.timeline('c1').get(1);
  assert.equal(mine.body, 'hi');
  assert.equal(mine.senderId, 'bob');
  assert.deepEqual(
    parsed(s.onTick(10_000)).filter((f) => f.action === 'ack'),
    [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 1 }] }],
    'our own message is acked like any other: the server keeps a pending row for the sending device too',
  );
  assert.ok(events.some((e) => e.type === 'message' && e.detail.seq === 1));
  // A second `sent` for an earlier retry changes nothing.
  s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: 'k1', seq: 1, sent_at: 9 }), 5000);
  assert.equal(s.timeline('c1').size, 1);
});

// Ticks every 100 ms from `t0` for `span` ms; the times a frame matching
// `pick` went out.
function sentAt(s, t0, span, pick) {
  const at = [];
  for (let t = 0; t <= span; t += 100) {
    if (parsed(s.onTick(t0 + t)).some(pick)) at.push(t);
  }
  return at;
}

// Each gap between repeats lies within [half, all] of the doubled wait.
function assertBacksOff(at, first) {
  assert.ok(at.length >= 4, `repeats: ${at}`);
  for (let i = 1; i < at.length; i += 1) {
    const gap = at[i] - at[i - 1];
    const full = Math.min(first * 2 ** (i - 1), T.retryMax);
    const low = i === 1 ? full : full / 2;
    assert.ok(gap >= low && gap <= full + 100, `gap ${i} of ${at} is ${gap}, not within [${low}, ${full}]`);
  }
}

test('unanswered syncs and sends back off, and start over on an answer', () => {
  const span = 200_000;
  const fullSync = (f) => f.action === 'sync' && f.conversation_id === undefined;
  const rangeSync = (f) => f.action === 'sync' && f.after_seq !== undefined;

  // No caught_up, ever: 4 s, 8, 16, 32, 60 (cap) — not every 4 s.
  let { s } = session({ ackDelay: 0 });
  s.onOpen(0);
  let at = sentAt(s, 0, span, fullSync);
  assert.equal(at[0], T.caughtUpTimeout);
  assertBacksOff(at, T.caughtUpTimeout);
  assert.ok(at.length < 10, `${at.length} full syncs in 200 s`);
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 0, messages: 0 }), span);
  s.fullSync(span);
  assert.deepEqual(sentAt(s, span, 5000, fullSync), [T.caughtUpTimeout], 'caught_up starts it over');

  // A hole whose sync is never answered.
  ({ s } = session({ ackDelay: 0 }));
  s.onOpen(0);
  s.onText(messages('c1', [1, 5]), 0);
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 1, messages: 2 }), 0);
  at = sentAt(s, 0, span, rangeSync);
  assert.equal(at[0], T.holeGrace);
  assertBacksOff(at, T.syncTimeout);
  s.onText(JSON.stringify({ type: 'synced', conversation_id: 'c1', through_seq: 5 }), span);
  assert.deepEqual(sentAt(s, span, 6000, rangeSync), [0, T.syncTimeout], 'synced starts it over');

  // A send never answered.
  ({ s } = session({ ackDelay: 0 }));
  s.onOpen(0);
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 0, messages: 0 }), 0);
  assert.ok(s.queueSend('c1', 'k1', 'hi', null, 0));
  at = sentAt(s, 0, span, (f) => f.action === 'sendMessage');
  assertBacksOff([0, ...at], T.sendRetry);

  assert.equal(retryWait(3000, 1, T, () => 1), 3000, 'the first wait has no jitter');
  assert.equal(retryWait(3000, 2, T, () => 0), 3000);
  assert.equal(retryWait(3000, 2, T, () => 1), 6000);
  assert.equal(retryWait(3000, 30, T, () => 1), T.retryMax);
});

test('permanent errors fail the send, transient ones keep it for the retry', async () => {
  const { s } = session();
  s.onOpen(0);
  const w = waiter();
  s.queueSend('c1', 'k1', 'x', w, 0);
  s.onText(JSON.stringify({ type: 'error', code: 'internal', message: 'retry', client_msg_id: 'k1' }), 0);
  assert.equal(s.outbox.size, 1);
  s.onText(JSON.stringify({ type: 'error', code: 'not_a_member', message: 'no', client_msg_id: 'k1' }), 0);
  assert.equal(s.outbox.size, 0);
  await assert.rejects(w.promise, (e) => e.code === 'not_a_member' && e.clientMsgId === 'k1');
  assert.equal(isPermanent('rate_limited'), false);
  assert.equal(isPermanent('payload_too_large'), true);
});

test('replies reach their request; a close fails those sent, keeps those not yet sent', async () => {
  const { s } = session();
  s.onOpen(0);
  const created = waiter();
  const text = JSON.parse(s.queueRequest('r1', { action: 'createConversation', members: ['alice'] }, created));
  assert.equal(text.request_id, 'r1');
  s.onText(JSON.stringify({ type: 'conversation', conversation_id: 'c9', members: ['bob', 'alice'], request_id: 'r1' }), 0);
  assert.equal((await created.promise).conversation_id, 'c9');
  assert.ok(s.timelines.has('c9'));

  const lost = waiter();
  s.queueRequest('r2', { action: 'ping' }, lost);
  s.onClose();
  await assert.rejects(lost.promise, (e) => e.code === 'closed');
  const later = waiter();
  assert.equal(s.queueRequest('r3', { action: 'ping' }, later), null, 'closed: waits for the next open');
  const out = parsed(s.onOpen(10));
  assert.deepEqual(out, [{ action: 'ping', request_id: 'r3' }]);
  s.onText(JSON.stringify({ type: 'pong', request_id: 'r3' }), 11);
  assert.equal((await later.promise).type, 'pong');

  const refused = waiter();
  s.queueRequest('r4', { action: 'registerDevice', platform: 'x', token: 't' }, refused);
  s.onText(JSON.stringify({ type: 'error', code: 'bad_request', message: 'platform', request_id: 'r4' }), 12);
  await assert.rejects(refused.promise, (e) => e.code === 'bad_request' && e.requestId === 'r4');
});

test('receipts are surfaced and kept at their highest', () => {
  const { s, events } = session();
  s.onOpen(0);
  const r = (seq) => JSON.stringify({ type: 'receipt', conversation_id: 'c1', user_id: 'alice', delivered_through_seq: seq });
  s.onText(r(5), 0);
  s.onText(r(3), 0);
  assert.equal(s.receipt('c1', 'alice'), 5);
  assert.deepEqual(events.filter((e) => e.type === 'receipt').map((e) => e.detail.deliveredThroughSeq), [5, 3]);
});

test('an error frame no request owns is an error event', () => {
  const { s, events } = session();
  s.onOpen(0);
  s.onText(JSON.stringify({ type: 'error', code: 'unknown_action', message: 'unknown action "fly"' }), 0);
  const e = events.find((x) => x.type === 'error').detail;
  assert.equal(e.code, 'unknown_action');
});

test('foreign and malformed frames are ignored', () => {
  const { s, events } = session();
  s.onOpen(0);
  for (const raw of [
    '{"message":"Internal server error","connectionId":"x","requestId":"y"}',
    'not json',
    'null',
    '[]',
    '{"type":"messages","conversation_id":"c1","messages":[null,7]}',
    '{"type":"from_the_future"}',
    '{"type":"history_starts","conversation_id":"c1","first_available_seq":"5"}',
    '{"type":"history_starts","conversation_id":"c1","first_available_seq":2.5}',
    '{"type":"history_starts","conversation_id":"c1","first_available_seq":-4}',
    '{"type":"history_starts","conversation_id":"c1"}',
    '{"type":"history_starts","conversation_id":7,"first_available_seq":5}',
  ]) {
    assert.deepEqual(s.onText(raw, 0), []);
  }
  assert.equal(events.length, 0);
  assert.equal(s.timeline('c1').contiguousThrough, 0, 'no history_starts with a bad field moved anything');
  assert.equal(s.timelines.size, 1);
});

test('closeAll fails every waiting send and request', async () => {
  const { s } = session();
  const send = waiter();
  const req = waiter();
  s.queueSend('c1', 'k1', 'x', send, 0);
  s.queueRequest('r1', { action: 'ping' }, req);
  s.closeAll();
  await assert.rejects(send.promise, (e) => e.code === 'closed');
  await assert.rejects(req.promise, (e) => e.code === 'closed');
});

test('backoff grows, is capped, and is jittered', () => {
  for (let attempt = 0; attempt < 30; attempt += 1) {
    const exp = Math.min(T.backoffBase * 2 ** Math.min(attempt, 16), T.backoffMax);
    for (const r of [0, 0.5, 0.999]) {
      const d = backoff(T, attempt, () => r);
      assert.ok(d >= exp / 2 && d <= exp, `attempt ${attempt}: ${d}`);
    }
  }
  const samples = new Set(Array.from({ length: 20 }, () => backoff(T, 5)));
  assert.ok(samples.size > 1, 'jitter varies the delay');
});

test('helpers: token urls, token subjects, client message ids', () => {
  assert.equal(withToken('ws://h:1', 't'), 'ws://h:1/?token=t');
  assert.equal(withToken('wss://h/prod', 't'), 'wss://h/prod?token=t');
  assert.equal(withToken('ws://h/?x=1', 't'), 'ws://h/?x=1&token=t');
  const payload = Buffer.from(JSON.stringify({ sub: 'bob', exp: 1 })).toString('base64url');
  assert.equal(tokenSubject(`h.${payload}.s`), 'bob');
  assert.equal(tokenSubject('garbage'), undefined);
  const id = newClientMsgId();
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(newClientMsgId(), id);
});

test('frame size is the UTF-8 bytes of the JSON text, escapes included', () => {
  const frame = (body) => JSON.stringify({ action: 'sendMessage', conversation_id: 'c1', client_msg_id: 'k1', body });
  const base = frameBytes(frame(''));
  assert.equal(base, frame('').length);
  // `"` `\` and \n \t escape to 2 bytes, other control characters to
  // \u00XX (6), an astral emoji is 4 UTF-8 bytes (2 UTF-16 units), é 2.
  assert.equal(frameBytes(frame('"')), base + 2);
  assert.equal(frameBytes(frame('\\')), base + 2);
  assert.equal(frameBytes(frame('\n\t')), base + 4);
  assert.equal(frameBytes(frame('\u0001\u001f')), base + 12);
  assert.equal(frameBytes(frame('😀')), base + 4);
  assert.equal(frameBytes(frame('é')), base + 2);
  assert.equal(frameBytes(frame('a"\\\u0000😀')), base + 1 + 2 + 2 + 6 + 4);
  const poison = '"'.repeat(16_384);
  assert.equal(frameBytes(frame(poison)), base + 32_768);
  for (const body of ['', poison, 'a"\\\u0000😀é\u2028', '\ud83d lone']) {
    assert.equal(frameBytes(frame(body)), new TextEncoder().encode(frame(body)).length, body.slice(0, 10));
  }
});

test('an oversize send is rejected at once and never enters the outbox', async () => {
  // The server's measures off: the socket's own limit is under test here
  // (limits.test.js has the others).
  const { s } = session({ maxBodyBytes: Infinity, maxMessageFrameBytes: Infinity });
  s.onOpen(0);
  let rejected;
  const frame = s.queueSend('c1', 'k1', '"'.repeat(16_384), { resolve() {}, reject: (e) => (rejected = e) }, 0);
  assert.equal(frame, null);
  assert.equal(s.outbox.size, 0);
  assert.equal(rejected.code, 'payload_too_large');
  assert.equal(rejected.limitName, 'maxFrameBytes');
  assert.equal(rejected.limit, 32_768);
  assert.ok(rejected.frameBytes > 32_768);
  // Exactly at the limit goes out.
  const base = JSON.stringify({ action: 'sendMessage', conversation_id: 'c1', client_msg_id: 'k2', body: '' }).length;
  const out = s.queueSend('c1', 'k2', 'x'.repeat(32_768 - base), null, 0);
  assert.equal(frameBytes(out), 32_768);
  // A request over the limit is refused too.
  let refused;
  assert.equal(s.queueRequest('r1', { action: 'createConversation', members: ['"'.repeat(20_000)] }, { resolve() {}, reject: (e) => (refused = e) }), null);
  assert.equal(refused.code, 'payload_too_large');
  assert.equal(s.requests.size, 0);
});

test('a close with 1009 fails the largest send since the last frame; others stay', () => {
  const { s } = session({ maxFrameBytes: 1 << 20, maxMessageFrameBytes: Infinity });
  s.onOpen(0);
  const small = [];
  let big;
  s.queueSend('c1', 'k1', 'hi', { resolve() {}, reject: (e) => small.push(e) }, 0);
  s.queueSend('c1', 'k2', '"'.repeat(16_384), { resolve() {}, reject: (e) => (big = e) }, 0);
  s.onDropped(1009, 5000);
  s.onClose();
  assert.equal(big.code, 'payload_too_large');
  assert.equal(big.closeCode, 1009);
  assert.deepEqual(small, []);
  const again = s.onOpen(5000).map((f) => JSON.parse(f));
  assert.deepEqual(again.map((f) => f.client_msg_id), ['k1']);
});

test('two closes in a row right after a send fail it; an answer in between resets', () => {
  const { s } = session();
  let failed;
  s.onOpen(0);
  s.queueSend('c1', 'k1', 'hi', { resolve() {}, reject: (e) => (failed = e) }, 0);
  const drop = (now) => {
    s.onDropped(1006, now);
    s.onClose();
  };
  drop(100);
  assert.equal(s.outbox.size, 1, 'one quick close is not enough');
  s.onOpen(100);
  s.onText(JSON.stringify({ type: 'caught_up', conversations: 0, messages: 0 }), 100);
  drop(100);
  assert.equal(s.outbox.size, 1, 'the connection answered something');
  s.onOpen(100);
  drop(30_000);
  assert.equal(s.outbox.size, 1, 'a close long after the send');
  s.onOpen(30_000);
  drop(30_100);
  assert.equal(s.outbox.size, 1);
  s.onOpen(30_100);
  drop(30_200);
  assert.equal(s.outbox.size, 0, 'two quick closes in a row');
  assert.equal(failed.code, 'payload_too_large');
});
