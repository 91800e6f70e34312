// The timeline on its own: seq order whatever the arrival order, duplicates
// dropped by seq, holes found, and acks that never pass a hole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Timeline } from '../src/courier.js';

const m = (seq, body = `body ${seq}`) => ({
  conversationId: 'c1',
  seq,
  messageId: `m${seq}`,
  senderId: 'alice',
  body,
  sentAt: 1_795_000_000_000 + seq,
});
const seqs = (t) => t.messages().map((x) => x.seq);

test('out-of-order arrivals end in seq order', () => {
  const t = new Timeline();
  for (const s of [3, 1, 5, 2, 4]) assert.equal(t.insert(m(s)), 'new');
  assert.deepEqual(seqs(t), [1, 2, 3, 4, 5]);
  assert.equal(t.contiguousThrough, 5);
  assert.equal(t.hasHole(), false);
});

test('duplicates are dropped by seq, the first copy wins', () => {
  const t = new Timeline();
  t.insert(m(1));
  t.insert(m(2));
  assert.equal(t.insert(m(2, 'a second copy')), 'duplicate');
  assert.equal(t.insert(m(1)), 'duplicate');
  t.insert(m(4));
  assert.equal(t.insert(m(4)), 'duplicate');
  assert.equal(t.duplicates, 3);
  assert.equal(t.get(2).body, 'body 2');
  assert.equal(t.size, 3);
  assert.deepEqual(seqs(t), [1, 2, 4]);
});

test('gaps are found and the ack stops at the first one', () => {
  const t = new Timeline();
  for (const s of [1, 2, 5, 6, 9]) t.insert(m(s));
  assert.equal(t.contiguousThrough, 2);
  assert.equal(t.highest, 9);
  assert.deepEqual(t.holes(), [[3, 4], [7, 8]]);
  assert.equal(t.ackDue(), 2);
  t.markAcked(2);
  assert.equal(t.ackDue(), null);
  for (const s of [3, 4, 7, 8]) t.insert(m(s));
  assert.deepEqual(t.holes(), []);
  assert.equal(t.ackDue(), 9, 'the fill moves the ack to the new end of the prefix');
});

test('a hole waits out its grace before it is asked for', () => {
  const grace = 300;
  const t = new Timeline();
  t.insert(m(2), 1000);
  assert.ok(t.hasHole());
  assert.equal(t.holeOlderThan(grace, 1100), false);
  assert.equal(t.holeOlderThan(grace, 1300), true);
  t.holeRequested(1300);
  assert.equal(t.holeOlderThan(grace, 1400), false, 'a request restarts the grace');
  t.insert(m(1), 1400);
  assert.equal(t.holeOlderThan(grace, 99_999), false, 'no hole, nothing to ask');
});

test('the ack cursor never moves down', () => {
  const t = new Timeline();
  t.markAcked(7);
  t.markAcked(3);
  assert.equal(t.acked, 7);
});

test('seq 0, negative and non-integer seqs are never messages', () => {
  const t = new Timeline();
  for (const s of [0, -1, 1.5, Number.NaN]) assert.equal(t.insert(m(s)), 'duplicate');
  assert.equal(t.size, 0);
});

test('a large shuffled backlog with repeats comes out whole and in order', () => {
  const t = new Timeline();
  const order = [];
  for (let s = 1; s <= 500; s += 1) order.push(s, s);
  // A fixed shuffle (LCG): the same every run.
  let x = 42;
  for (let i = order.length - 1; i > 0; i -= 1) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    const j = x % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  let fresh = 0;
  for (const s of order) if (t.insert(m(s)) === 'new') fresh += 1;
  assert.equal(fresh, 500);
  assert.equal(t.duplicates, 500);
  assert.deepEqual(seqs(t), Array.from({ length: 500 }, (_, i) => i + 1));
  assert.equal(t.contiguousThrough, 500);
});

test('holdThrough counts older seqs as held: no hole below, acks from there', () => {
  const t = new Timeline();
  t.insert(m(44), 0);
  assert.deepEqual(t.holes(), [[1, 43]]);
  t.holdThrough(41, 5);
  assert.equal(t.contiguousThrough, 41);
  assert.deepEqual(t.holes(), [[42, 43]]);
  t.insert(m(42));
  t.insert(m(43));
  assert.equal(t.contiguousThrough, 44);
  assert.equal(t.ackDue(), 44);
  assert.equal(t.insert(m(7)), 'duplicate', 'below the held line is held');
  t.holdThrough(10);
  assert.equal(t.contiguousThrough, 44, 'never moves down');
});

test('historyStartsAt counts the expired seqs below it as held: the hole closes, the ack moves on', () => {
  const t = new Timeline();
  for (const s of [1, 2, 6, 7]) t.insert(m(s), 0);
  t.markAcked(2);
  assert.deepEqual(t.holes(), [[3, 5]]);
  t.historyStartsAt(6, 10);
  assert.equal(t.contiguousThrough, 7, 'through the gone seqs and on over 6 and 7');
  assert.deepEqual(t.holes(), []);
  assert.equal(t.holeOlderThan(0, 99_999), false, 'nothing left to ask for');
  assert.equal(t.ackDue(), 7);
  t.markAcked(7);
  t.historyStartsAt(4);
  t.historyStartsAt(8);
  assert.equal(t.contiguousThrough, 7, 'at or below the contiguous end: nothing changes');
  assert.equal(t.ackDue(), null);
});

test('historyStartsAt on an empty timeline: the prefix starts just below the first kept seq', () => {
  const t = new Timeline();
  t.historyStartsAt(40);
  assert.equal(t.contiguousThrough, 39);
  assert.equal(t.hasHole(), false);
  t.insert(m(41), 0);
  assert.deepEqual(t.holes(), [[40, 40]], 'a seq above the start still opens a hole');
  for (const bad of [0, -3, 2.5, Number.NaN, '50']) t.historyStartsAt(bad);
  assert.equal(t.contiguousThrough, 39);
});
