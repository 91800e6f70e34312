// Several devices of one user against a real courier-local: each device has
// its own connection, its own catch-up and its own acks (an ack on one never
// empties the other), a device acks its own sends and its other devices get
// them, the device and conversation lists, unlinking, and the device limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { CourierClient } from '../src/courier.js';
import { startGateway, waitFor } from './gateway.js';

/** A test with a gateway (env: its extra variables) and clients cleaned up. */
function dtest(name, fn, { env = {} } = {}) {
  test(name, { timeout: 60_000 }, async (t) => {
    const gw = await startGateway({ env });
    const clients = [];
    /** A client of `user` as `deviceId`, connected unless told not to. */
    const device = async (user, deviceId, { connect = true, WebSocket: Ctor = WebSocket, ...rest } = {}) => {
      const c = new CourierClient({
        url: gw.wsUrl,
        token: () => gw.token(user),
        deviceId,
        storage: null,
        WebSocket: Ctor,
        tuning: { ackDelay: 30, caughtUpTimeout: 2000, backoffBase: 20, backoffMax: 100 },
        ...rest,
      });
      clients.push(c);
      if (connect) await c.connect();
      return c;
    };
    try {
      await fn({ t, gw, device });
    } catch (e) {
      e.message += `\n--- courier-local log ---\n${gw.log()}`;
      throw e;
    } finally {
      for (const c of clients) c.close();
      await gw.stop();
    }
  });
}

const seqs = (c, id) => c.timeline(id).map((m) => m.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const nothingPending = (gw, user) => async () => (await gw.pending(user)).length === 0;

dtest('two devices of one user each get every message live and each acks its own share', async ({ gw, device }) => {
  const alice = await device('alice', 'a1');
  const phone = await device('bob', 'phone');
  const laptop = await device('bob', 'laptop');
  assert.deepEqual((await gw.registry('bob')).map((e) => e.device_id).sort(), ['laptop', 'phone']);
  const { conversationId } = await alice.createConversation(['bob']);
  for (const body of ['one', 'two', 'three']) await alice.send(conversationId, body);
  await waitFor('both devices hold 1..3', () =>
    phone.contiguousThrough(conversationId) === 3 && laptop.contiguousThrough(conversationId) === 3);
  await waitFor('nothing pending for bob once both acked', nothingPending(gw, 'bob'));

  const listed = await phone.listDevices();
  assert.deepEqual(
    listed.map(({ deviceId, connected, thisDevice }) => ({ deviceId, connected, thisDevice }))
      .sort((a, b) => a.deviceId.localeCompare(b.deviceId)),
    [
      { deviceId: 'laptop', connected: true, thisDevice: false },
      { deviceId: 'phone', connected: true, thisDevice: true },
    ],
  );
  assert.ok(listed.every((d) => d.linkedAt > 0 && d.lastSeenAt >= d.linkedAt));
});

dtest("an ack on one device never empties the other's pending messages", async ({ gw, device }) => {
  const alice = await device('alice', 'a1');
  const phone = await device('bob', 'phone');
  const laptop = await device('bob', 'laptop');
  const { conversationId } = await alice.createConversation(['bob']);
  await alice.send(conversationId, 'before');
  await waitFor('both hold it', () => phone.contiguousThrough(conversationId) === 1 && laptop.contiguousThrough(conversationId) === 1);
  await waitFor('nothing pending', nothingPending(gw, 'bob'));

  laptop.goOffline();
  await waitFor('the laptop leaves the registry', async () =>
    (await gw.registry('bob')).every((e) => e.device_id !== 'laptop'));
  for (const body of ['while the laptop sleeps 1', 'while the laptop sleeps 2']) await alice.send(conversationId, body);
  await waitFor('the phone holds 1..3', () => phone.contiguousThrough(conversationId) === 3);
  // The phone's ack is in (its cursor), and the rows are still there for the laptop.
  await waitFor("the phone's cursor is at 3", async () =>
    (await gw.pending('bob')).some((r) => r.cursors?.phone === 3));
  const rows = await gw.pending('bob');
  assert.equal(rows.length, 1, "the laptop's share waits");
  assert.equal(rows[0].last_seq, 3);
  const page = await phone.listConversations();
  assert.deepEqual(page.conversations.map((c) => [c.conversationId, c.lastSeq, c.deliveredThroughSeq]), [[conversationId, 3, 3]]);

  const caughtUp = new Promise((resolve) => laptop.on('caughtUp', resolve));
  await laptop.connect();
  const cu = await caughtUp;
  assert.equal(cu.messages, 2, 'the laptop catches up on the two it missed');
  assert.deepEqual(seqs(laptop, conversationId), range(1, 3));
  await waitFor('nothing pending once the laptop acked', nothingPending(gw, 'bob'));
});

dtest('a device acks its own sends; its other device gets them', async ({ gw, device }) => {
  const alice = await device('alice', 'a1');
  const phone = await device('bob', 'phone');
  const laptop = await device('bob', 'laptop');
  const { conversationId } = await alice.createConversation(['bob']);
  const sent = await phone.send(conversationId, 'from my phone');
  assert.equal(sent.seq, 1);
  await waitFor('the laptop gets the phone’s message', () => laptop.contiguousThrough(conversationId) === 1);
  assert.deepEqual(laptop.timeline(conversationId).map((m) => [m.seq, m.senderId, m.body]), [[1, 'bob', 'from my phone']]);
  assert.deepEqual(phone.timeline(conversationId).map((m) => [m.seq, m.senderId]), [[1, 'bob']]);
  await waitFor('alice holds it', () => alice.contiguousThrough(conversationId) === 1);
  // The sender's pending row goes once the sending device acked its own
  // message, and the other device acked its copy.
  await waitFor('nothing pending for bob', nothingPending(gw, 'bob'));
  // alice's own sends: acked by her device too.
  await alice.send(conversationId, 'and from alice');
  await waitFor('nothing pending for alice', nothingPending(gw, 'alice'));
});

dtest('listConversations pages; unlinkDevice unlinks another device or says device_not_found', async ({ gw, device }) => {
  const alice = await device('alice', 'a1');
  const phone = await device('bob', 'phone');
  const ids = [];
  for (let i = 0; i < 3; i += 1) ids.push((await alice.createConversation(['bob'])).conversationId);
  const seen = [];
  let after;
  for (let pages = 0; pages < 5; pages += 1) {
    const page = await phone.listConversations({ after, limit: 2 });
    assert.ok(page.conversations.length <= 2);
    seen.push(...page.conversations.map((c) => c.conversationId));
    if (page.next === null) break;
    after = page.next;
  }
  assert.deepEqual([...seen].sort(), [...ids].sort(), 'every conversation, once');
  await assert.rejects(phone.listConversations({ limit: 0 }), (e) => e.code === 'bad_request');

  const laptop = await device('bob', 'laptop');
  laptop.goOffline();
  await assert.rejects(phone.unlinkDevice('tablet'), (e) => e.code === 'device_not_found');
  assert.deepEqual(await phone.unlinkDevice('laptop'), { deviceId: 'laptop' });
  assert.deepEqual((await phone.listDevices()).map((d) => d.deviceId), ['phone']);
});

dtest('over the device limit: too_many_devices naming it, offline, no reconnect', async ({ device }) => {
  await device('bob', 'phone');
  await device('bob', 'laptop');
  let sockets = 0;
  class Counted extends WebSocket {
    constructor(url) {
      super(url);
      sockets += 1;
    }
  }
  const tablet = await device('bob', 'tablet', { connect: false, WebSocket: Counted });
  const refused = new Promise((resolve) => tablet.on('error', (e) => e.code === 'too_many_devices' && resolve(e)));
  await tablet.connect();
  const e = await refused;
  assert.equal(e.limit, 2);
  assert.equal(e.fatal, true);
  await waitFor('the tablet is offline', () => tablet.state === 'offline');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(sockets, 1, 'no reconnect loop');
  assert.equal(tablet.state, 'offline');
}, { env: { MAX_DEVICES: '2' } });

dtest('opened from a notification: conversation_id on the connect URL, catch-up as usual', async ({ gw, device }) => {
  const alice = await device('alice', 'a1');
  const phone = await device('bob', 'phone');
  const { conversationId } = await alice.createConversation(['bob']);
  phone.goOffline();
  await waitFor('bob offline', async () => (await gw.registry('bob')).length === 0);
  await alice.send(conversationId, 'tap me');
  const caughtUp = new Promise((resolve) => phone.on('caughtUp', resolve));
  await phone.connect({ openConversation: conversationId });
  await caughtUp;
  assert.deepEqual(phone.timeline(conversationId).map((m) => m.body), ['tap me']);
});
