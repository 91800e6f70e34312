// The client against a real courier-local (its real handlers, embedded
// stores): the story, and each rule under the fault that makes it matter.
// Faults are made on the client's side of the socket: a WebSocket subclass
// that can drop a frame either way or cut the connection at a chosen moment.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import WebSocket from 'ws';
import { CourierClient, CourierError } from '../src/courier.js';
import { startGateway, waitFor } from './gateway.js';

/**
 * A `ws` WebSocket that records every frame each way and lets a test drop
 * frames (`dropOut`/`dropIn` return true to drop) or act on them.
 */
function tapped({ dropOut = () => false, dropIn = () => false } = {}) {
  const tap = { out: [], in: [], sockets: [] };
  tap.WebSocket = class TappedWebSocket extends WebSocket {
    constructor(url) {
      super(url);
      tap.sockets.push(this);
    }

    send(data) {
      tap.out.push(JSON.parse(data));
      if (dropOut(JSON.parse(data), this)) return;
      super.send(data);
    }

    set onmessage(fn) {
      super.onmessage = fn && ((ev) => {
        const frame = JSON.parse(ev.data);
        tap.in.push(frame);
        if (dropIn(frame, this)) return;
        fn(ev);
      });
    }

    get onmessage() {
      return super.onmessage;
    }
  };
  tap.sent = (action) => tap.out.filter((f) => f.action === action);
  return tap;
}

/** A test with gateways and clients that are cleaned up, and the gateway's
 *  log attached to a failure. */
function itest(name, fn) {
  test(name, { timeout: 60_000 }, async (t) => {
    const gateways = [];
    const clients = [];
    const ctx = {
      t,
      async gateway(opts = {}) {
        const g = await startGateway(opts);
        gateways.push(g);
        return g;
      },
      /** A connected client for `user` on `gw`. */
      async client(gw, user, { tuning = {}, WebSocket: Ctor = WebSocket, connect = true } = {}) {
        const c = new CourierClient({
          url: gw.wsUrl,
          token: () => gw.token(user),
          WebSocket: Ctor,
          tuning: { ackDelay: 30, caughtUpTimeout: 2000, ...tuning },
        });
        clients.push(c);
        if (connect) await c.connect();
        return c;
      },
    };
    try {
      await fn(ctx);
    } catch (e) {
      e.message += `\n--- courier-local log ---\n${gateways.map((g) => g.log()).join('\n---\n')}`;
      throw e;
    } finally {
      for (const c of clients) c.close();
      await Promise.all(gateways.map((g) => g.stop()));
    }
  });
}

const seqs = (c, id) => c.timeline(id).map((m) => m.seq);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const noPending = (gw, user) => async () => (await gw.pending(user)).length === 0;
/** The registry holds one entry per connected device: none left. */
const offlineInRegistry = (gw, user) => async () => (await gw.registry(user)).length === 0;

itest("the seed's story: bob misses six messages, catch-up delivers them in order", async ({ gateway, client }) => {
  const gw = await gateway();
  const alice = await client(gw, 'alice');
  const bob = await client(gw, 'bob');
  const carol = await client(gw, 'carol');
  await bob.registerDevice('fcm', 'bob-phone-1');
  const withAlice = await alice.createConversation(['bob']);
  assert.deepEqual(withAlice.members, ['alice', 'bob']);
  const withCarol = await carol.createConversation(['bob']);
  const [ca, cc] = [withAlice.conversationId, withCarol.conversationId];

  for (let i = 1; i <= 41; i += 1) await alice.send(ca, `earlier message ${i}`);
  for (let i = 1; i <= 16; i += 1) await carol.send(cc, `earlier message ${i}`);
  await waitFor('bob reads the history', () => bob.contiguousThrough(ca) === 41 && bob.contiguousThrough(cc) === 16);
  await waitFor("bob's acks clear his pending rows", noPending(gw, 'bob'));
  await waitFor("alice's receipt for 41", () => alice.receipt(ca, 'bob') === 41);

  bob.goOffline();
  assert.equal(bob.state, 'offline');
  await waitFor('bob leaves the registry', offlineInRegistry(gw, 'bob'));
  const pushesBefore = (await gw.pushes()).length;
  const sent = [];
  for (const body of ['hey', 'where are you?', 'hello??']) sent.push(await alice.send(ca, body));
  for (const body of ['are we still on for tonight?', "I'm at the station", 'call me when you see this']) {
    sent.push(await carol.send(cc, body));
  }
  assert.deepEqual(sent.map((s) => s.seq), [42, 43, 44, 17, 18, 19]);
  const pushes = (await gw.pushes()).slice(pushesBefore).filter((p) => p.token === 'bob-phone-1');
  assert.deepEqual(pushes.map((p) => [p.message.conversation_id, p.message.seq, p.message.preview]), [
    [ca, 42, 'alice: hey'],
    [ca, 43, 'alice: where are you?'],
    [ca, 44, 'alice: hello??'],
    [cc, 17, 'carol: are we still on for tonight?'],
    [cc, 18, "carol: I'm at the station"],
    [cc, 19, 'carol: call me when you see this'],
  ]);

  const arrivals = [];
  bob.on('message', (m) => arrivals.push([m.conversationId, m.seq]));
  const caughtUp = new Promise((resolve) => bob.on('caughtUp', resolve));
  await bob.connect();
  const cu = await caughtUp;
  assert.deepEqual([cu.conversations, cu.messages], [2, 6]);
  assert.ok(cu.afterOpenMs >= 0 && cu.afterOpenMs < 5000, `caught up ${cu.afterOpenMs} ms after open`);
  // Each conversation's messages arrived in seq order (conversations interleave).
  assert.deepEqual(arrivals.filter(([c]) => c === ca).map(([, s]) => s), [42, 43, 44]);
  assert.deepEqual(arrivals.filter(([c]) => c === cc).map(([, s]) => s), [17, 18, 19]);
  assert.deepEqual(seqs(bob, ca), range(1, 44));
  assert.deepEqual(seqs(bob, cc), range(1, 19));
  assert.deepEqual(bob.timeline(ca).slice(-3).map((m) => `${m.senderId}: ${m.body}`), ['alice: hey', 'alice: where are you?', 'alice: hello??']);
  assert.equal(bob.stats.duplicates, 0);
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
  await waitFor('receipts to alice and carol', () => alice.receipt(ca, 'bob') === 44 && carol.receipt(cc, 'bob') === 19);
  for (const c of [alice, bob, carol]) assert.deepEqual(c.pendingSends(), []);
});

itest('a send whose frame is lost is resent with the same client_msg_id and stored once', async ({ gateway, client }) => {
  const gw = await gateway();
  let dropped = 0;
  const tap = tapped({ dropOut: (f) => f.action === 'sendMessage' && dropped++ === 0 });
  const alice = await client(gw, 'alice', { WebSocket: tap.WebSocket, tuning: { sendRetry: 300 } });
  const bob = await client(gw, 'bob');
  const { conversationId } = await alice.createConversation(['bob']);
  const sent = await alice.send(conversationId, 'hello??');
  assert.equal(sent.seq, 1);
  const attempts = tap.sent('sendMessage');
  assert.equal(attempts.length, 2, 'the first went nowhere, the retry went through');
  assert.equal(attempts[0].client_msg_id, attempts[1].client_msg_id);
  assert.equal(attempts[0].client_msg_id, sent.clientMsgId);
  await waitFor('bob gets it', () => bob.contiguousThrough(conversationId) === 1);
  assert.equal((await alice.send(conversationId, 'next')).seq, 2, 'nothing else was stored');
});

itest('a send whose reply died with its connection is resent on the next one and keeps its seq', async ({ gateway, client }) => {
  const gw = await gateway();
  let cut = false;
  // The first `sent` never arrives: the socket dies as it comes in.
  const tap = tapped({
    dropIn: (f, ws) => {
      if (f.type !== 'sent' || cut) return false;
      cut = true;
      ws.terminate();
      return true;
    },
  });
  const states = [];
  const alice = await client(gw, 'alice', { WebSocket: tap.WebSocket, tuning: { backoffBase: 50 } });
  alice.on('state', ({ state }) => states.push(state));
  const bob = await client(gw, 'bob');
  const { conversationId } = await alice.createConversation(['bob']);
  const sent = await alice.send(conversationId, 'hello??');
  assert.equal(sent.seq, 1);
  assert.ok(cut);
  assert.deepEqual(states, ['reconnecting', 'open']);
  assert.equal(tap.sockets.length, 2);
  const attempts = tap.sent('sendMessage');
  assert.equal(attempts.length, 2);
  assert.ok(attempts.every((f) => f.client_msg_id === sent.clientMsgId), 'same id across connections');
  await waitFor('bob gets it once', () => bob.contiguousThrough(conversationId) === 1);
  assert.equal((await alice.send(conversationId, 'again')).seq, 2);
  await waitFor('bob gets the next', () => bob.contiguousThrough(conversationId) === 2);
  assert.deepEqual(bob.timeline(conversationId).map((m) => m.body), ['hello??', 'again']);
  assert.deepEqual(alice.timeline(conversationId).map((m) => m.body), ['hello??', 'again']);
});

itest('a swallowed live message leaves a hole that a range sync fills', async ({ gateway, client }) => {
  const gw = await gateway();
  let swallowed = false;
  const tap = tapped({
    dropIn: (f) => {
      const hit = !swallowed && f.type === 'messages' && f.messages.some((m) => m.seq === 2);
      if (hit) swallowed = true;
      return hit;
    },
  });
  const alice = await client(gw, 'alice');
  const bob = await client(gw, 'bob', { WebSocket: tap.WebSocket, tuning: { holeGrace: 200 } });
  const { conversationId } = await alice.createConversation(['bob']);
  for (const body of ['one', 'two', 'three']) await alice.send(conversationId, body);
  await waitFor('the hole is filled', () => bob.contiguousThrough(conversationId) === 3);
  assert.ok(swallowed);
  const syncs = tap.sent('sync').filter((f) => f.conversation_id === conversationId);
  assert.equal(syncs.length, 1);
  assert.equal(syncs[0].after_seq, 1);
  assert.deepEqual(bob.timeline(conversationId).map((m) => m.body), ['one', 'two', 'three']);
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
  // The ack stopped at the hole, then covered everything once it was filled.
  const acks = tap.sent('ack').flatMap((f) => f.acks.map((a) => a.seq));
  assert.deepEqual(acks, [1, 3]);
});

itest('a capped catch-up ends with more; range syncs pull the rest in order', async ({ gateway, client }) => {
  const gw = await gateway({ env: { CATCH_UP_CAP: '5' } });
  const tap = tapped();
  const alice = await client(gw, 'alice');
  const bob = await client(gw, 'bob', { WebSocket: tap.WebSocket, tuning: { syncLimit: 7 } });
  const { conversationId } = await alice.createConversation(['bob']);
  bob.goOffline();
  await waitFor('bob leaves the registry', offlineInRegistry(gw, 'bob'));
  for (let i = 1; i <= 23; i += 1) await alice.send(conversationId, `m${i}`);
  const arrivals = [];
  bob.on('message', (m) => arrivals.push(m.seq));
  await bob.connect();
  await waitFor('all 23', () => bob.contiguousThrough(conversationId) === 23);
  assert.deepEqual(arrivals, range(1, 23));
  assert.ok(tap.in.some((f) => f.type === 'more'), 'the server announced more');
  const afters = tap.sent('sync').filter((f) => f.conversation_id).map((f) => f.after_seq);
  assert.deepEqual(afters, [5, 12, 19]);
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
});

itest('no caught_up in time: the client runs catch-up again with a full sync', async ({ gateway, client }) => {
  const gw = await gateway();
  // Lose everything the first catch-up posts, as if its invocation died.
  let synced = false;
  const tap = tapped({
    dropOut: (f) => {
      if (f.action === 'sync' && f.conversation_id === undefined) synced = true;
      return false;
    },
    dropIn: (f) => !synced && (f.type === 'messages' || f.type === 'caught_up'),
  });
  const alice = await client(gw, 'alice');
  const bob = await client(gw, 'bob', { WebSocket: tap.WebSocket, connect: false, tuning: { caughtUpTimeout: 500 } });
  const { conversationId } = await alice.createConversation(['bob']);
  for (const body of ['hey', 'hello??']) await alice.send(conversationId, body);
  const caughtUp = new Promise((resolve) => bob.on('caughtUp', resolve));
  await bob.connect();
  const cu = await caughtUp;
  assert.equal(cu.messages, 2);
  assert.ok(cu.afterOpenMs >= 500, 'only after the timeout');
  assert.equal(tap.sent('sync').filter((f) => f.conversation_id === undefined).length, 1);
  assert.ok(tap.in.filter((f) => f.type === 'caught_up').length >= 2, 'the first caught_up was lost');
  assert.deepEqual(seqs(bob, conversationId), [1, 2]);
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
});

itest('the heartbeat keeps an idle connection past the idle timeout; without it, it is closed and comes back', async ({ gateway, client }) => {
  const gw = await gateway({ args: ['--idle-timeout-secs', '1'] });
  const tap = tapped();
  const beating = await client(gw, 'alice', { WebSocket: tap.WebSocket, tuning: { heartbeat: 300 } });
  const silent = await client(gw, 'bob', { tuning: { heartbeat: 3_600_000, backoffBase: 50 } });
  await new Promise((r) => setTimeout(r, 2600));
  assert.equal(beating.stats.opens, 1, 'never closed');
  assert.equal(beating.state, 'open');
  assert.ok(tap.sent('ping').length >= 5, `${tap.sent('ping').length} pings`);
  assert.ok(tap.in.some((f) => f.type === 'pong'));
  assert.ok(silent.stats.opens >= 2, 'the silent one was closed for idling and reconnected');
  assert.ok((await beating.ping()) >= 0, 'an explicit ping round trip');
});

itest('a connection dropped by the server reconnects with backoff, and nothing is lost', async ({ gateway, client }) => {
  const gw = await gateway();
  const alice = await client(gw, 'alice');
  const bob = await client(gw, 'bob', { tuning: { backoffBase: 100 } });
  const states = [];
  bob.on('state', (s) => states.push(s));
  const { conversationId } = await alice.createConversation(['bob']);
  await alice.send(conversationId, 'before');
  await waitFor('bob has it', () => bob.contiguousThrough(conversationId) === 1);
  for (let round = 0; round < 3; round += 1) {
    const opens = bob.stats.opens;
    const caughtUp = bob.session.caughtUpCount;
    const [{ connection_id: id }] = await gw.registry('bob');
    await gw.dropConnection(id);
    // Sent while bob is away or coming back: live, or by his catch-up.
    await alice.send(conversationId, `during ${round}`);
    // Back, and the connection worked (a connection dropped before it got
    // anything does not start the backoff over).
    await waitFor('bob is back', () => bob.stats.opens > opens && bob.state === 'open' && bob.session.caughtUpCount > caughtUp);
  }
  await alice.send(conversationId, 'after');
  await waitFor('bob has all five', () => bob.contiguousThrough(conversationId) === 5);
  assert.deepEqual(bob.timeline(conversationId).map((m) => m.body), ['before', 'during 0', 'during 1', 'during 2', 'after']);
  const waits = states.filter((s) => s.state === 'reconnecting').map((s) => s.delay);
  assert.equal(waits.length, 3);
  assert.ok(waits.every((d) => d >= 50 && d <= 100), `first backoff is 50–100 ms: ${waits}`);
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
});

itest('refused handshakes and refused requests reject with the reason', async ({ gateway, client }) => {
  const gw = await gateway();
  const intruder = new CourierClient({ url: gw.wsUrl, token: 'not-a-jwt', WebSocket });
  const errors = [];
  intruder.on('error', (e) => errors.push(e));
  await assert.rejects(intruder.connect({ timeout: 5000 }), (e) => e instanceof CourierError && e.code === 'handshake_refused' && e.status === 401);
  assert.equal(intruder.state, 'offline', 'a refused connect does not keep hammering');
  assert.equal(errors[0].status, 401);
  intruder.close();

  const alice = await client(gw, 'alice');
  assert.equal(alice.user, 'alice', "the user is the token's sub");
  await assert.rejects(alice.send('c_00000000000000000000000000000000', 'hi'), (e) => e.code === 'conversation_not_found');
  await assert.rejects(alice.registerDevice('pager', 'tok'), (e) => e.code === 'bad_request');
  await assert.rejects(alice.createConversation([]), (e) => e.code === 'bad_request');
  const { conversationId } = await (await client(gw, 'carol')).createConversation(['bob']);
  await assert.rejects(alice.send(conversationId, 'let me in'), (e) => e.code === 'not_a_member');
  assert.deepEqual(alice.pendingSends(), [], 'refused sends leave the outbox');
  alice.close();
  await assert.rejects(alice.send(conversationId, 'x'), (e) => e.code === 'closed');
});

itest("a fresh client restored from the app's storage fetches only what it lacks", async ({ gateway, client }) => {
  const gw = await gateway();
  const alice = await client(gw, 'alice');
  const first = await client(gw, 'bob');
  const { conversationId } = await alice.createConversation(['bob']);
  for (let i = 1; i <= 30; i += 1) await alice.send(conversationId, `m${i}`);
  await waitFor('bob reads them', () => first.contiguousThrough(conversationId) === 30);
  await waitFor('and acks them', noPending(gw, 'bob'));
  // The app keeps the last ten and closes.
  const kept = first.timeline(conversationId).slice(-10);
  first.close();
  await waitFor('bob leaves the registry', offlineInRegistry(gw, 'bob'));
  for (let i = 31; i <= 33; i += 1) await alice.send(conversationId, `m${i}`);

  const tap = tapped();
  const bob = await client(gw, 'bob', { WebSocket: tap.WebSocket, connect: false, tuning: { holeGrace: 100 } });
  const events = [];
  bob.on('message', (m) => events.push(m.seq));
  bob.restore(conversationId, kept, { heldThrough: 30 });
  assert.deepEqual(seqs(bob, conversationId), range(21, 30));
  await bob.connect();
  await waitFor('the three new ones', () => bob.contiguousThrough(conversationId) === 33);
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(events, [31, 32, 33], 'restored messages are not events');
  assert.deepEqual(seqs(bob, conversationId), range(21, 33));
  assert.deepEqual(tap.sent('sync').filter((f) => f.conversation_id), [], 'no history pulled');
  await waitFor('nothing pending for bob', noPending(gw, 'bob'));
});

test('a handshake that never completes is abandoned and retried; connect gives up at its timeout', { timeout: 20_000 }, async () => {
  // A listener that accepts the TCP connection and never answers the upgrade.
  const sockets = [];
  const server = net.createServer((sock) => sockets.push(sock));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const tap = tapped();
  const c = new CourierClient({
    url: `ws://127.0.0.1:${server.address().port}`,
    token: 'any',
    WebSocket: tap.WebSocket,
    tuning: { connectTimeout: 200, backoffBase: 40 },
  });
  const states = [];
  c.on('state', (s) => states.push(s.state));
  try {
    await assert.rejects(c.connect({ timeout: 1000 }), (e) => e.code === 'unreachable');
    assert.ok(tap.sockets.length >= 3, `${tap.sockets.length} handshakes tried`);
    assert.ok(states.includes('reconnecting'));
    assert.equal(c.state, 'offline', 'the client stops after a failed connect');
    const tried = tap.sockets.length;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(tap.sockets.length, tried, 'and tries no more');
  } finally {
    c.close();
    for (const s of sockets) s.destroy();
    server.close();
  }
});

itest('a poison frame (16,384 quotes) is rejected at once; the socket stays up and the next send goes through', async ({ gateway, client }) => {
  const gw = await gateway();
  const alice = await client(gw, 'alice');
  const { conversationId } = await alice.createConversation(['bob']);
  const states = [];
  alice.on('state', (s) => states.push(s.state));
  await assert.rejects(
    withTimeout(alice.send(conversationId, '"'.repeat(16_384)), 1000),
    (e) => e instanceof CourierError && e.code === 'payload_too_large' && e.frameBytes > 32_768 && e.limit === 32_768,
  );
  assert.equal(alice.pendingSends().length, 0);
  const sent = await withTimeout(alice.send(conversationId, 'hello'), 5000);
  assert.equal(sent.seq, 1);
  assert.deepEqual(states, [], 'the socket never closed');
  assert.equal(alice.stats.opens, 1);
});

itest('a frame the gateway closes with 1009 is rejected and never resent', async ({ gateway, client }) => {
  const gw = await gateway();
  // The client's own checks are loosened, so the frame reaches the gateway.
  const alice = await client(gw, 'alice', {
    tuning: { maxFrameBytes: 1 << 20, maxMessageFrameBytes: Infinity, backoffBase: 20 },
  });
  const { conversationId } = await alice.createConversation(['bob']);
  await assert.rejects(
    withTimeout(alice.send(conversationId, '"'.repeat(16_384)), 5000),
    (e) => e instanceof CourierError && e.code === 'payload_too_large' && e.closeCode === 1009,
  );
  assert.equal(alice.pendingSends().length, 0);
  const sent = await withTimeout(alice.send(conversationId, 'hello'), 5000);
  assert.equal(sent.seq, 1);
  assert.equal(alice.stats.opens, 2, 'the socket came back once');
});

/** `p`, or a rejection once `ms` pass. */
function withTimeout(p, ms) {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not settled within ${ms} ms`)), ms);
    }),
  ]);
}

/** A WebSocket stand-in (no network) that opens, delivers `greeting` if
 *  given, then closes with 1006: a connection that dies at once. */
function dyingSocket(greeting) {
  return class DyingWebSocket {
    constructor() {
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.();
        if (greeting) this.onmessage?.({ data: greeting });
        setTimeout(() => {
          this.readyState = 3;
          this.onclose?.({ code: 1006 });
        }, 0);
      }, 0);
    }

    send() {}

    close() {
      this.readyState = 3;
    }
  };
}

async function reconnectDelays(WebSocket, n) {
  const c = new CourierClient({
    url: 'ws://127.0.0.1:1',
    token: 'x.e30.x',
    user: 'bob',
    WebSocket,
    random: () => 0,
    tuning: { backoffBase: 4, backoffMax: 1000 },
  });
  const delays = [];
  c.on('state', (s) => s.state === 'reconnecting' && s.delay !== undefined && delays.push(s.delay));
  await c.connect();
  await waitFor(`${n} reconnects`, () => delays.length >= n);
  c.close();
  return delays.slice(0, n);
}

test('a connection that dies at once does not start the backoff over; one that worked does', async () => {
  // random 0: each delay is half of min(4 ms × 2^attempt, 1 s).
  assert.deepEqual(await reconnectDelays(dyingSocket(null), 5), [2, 4, 8, 16, 32]);
  const caughtUp = JSON.stringify({ type: 'caught_up', conversations: 0, messages: 0 });
  assert.deepEqual(await reconnectDelays(dyingSocket(caughtUp), 5), [2, 2, 2, 2, 2]);
});
