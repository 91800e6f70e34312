// Several devices per user, without a server: the device id (option,
// storage, validation), the connect URL's parameters, the three device and
// conversation calls matched to their replies by request_id, the fatal
// `too_many_devices`, and a device acking its own sends. The socket is a
// scripted stand-in, so each test says exactly what the server answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CourierClient,
  CourierError,
  DEVICE_ID_STORAGE_KEY,
  Session,
  checkDeviceId,
  connectUrl,
  deviceLimitOf,
  isValidDeviceId,
  newDeviceId,
  resolveDeviceId,
} from '../src/courier.js';
import { waitFor } from './gateway.js';

/** A Map with the Storage methods the client uses. */
function memoryStorage(initial = {}) {
  const m = new Map(Object.entries(initial));
  return {
    map: m,
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
  };
}

/**
 * A scripted server: every socket the client opens is recorded with its
 * URL; it opens on the next turn; `reply(fn)` answers each frame the client
 * sends (`fn(frame, socket)` returns frames to send back, or nothing).
 */
function fakeServer() {
  const server = { sockets: [], sent: [], answer: () => [] };
  server.WebSocket = class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      server.sockets.push(this);
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        this.onopen?.();
      }, 0);
    }

    send(text) {
      const frame = JSON.parse(text);
      server.sent.push(frame);
      const replies = server.answer(frame, this) ?? [];
      for (const r of replies) setTimeout(() => this.push(r), 0);
    }

    /** The server sends `frame` on this socket. */
    push(frame) {
      if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(frame) });
    }

    /** The server closes this socket. */
    drop(code = 1000) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code });
    }

    close() {
      this.readyState = 3;
    }
  };
  server.last = () => server.sockets[server.sockets.length - 1];
  server.params = (i) => new URL(server.sockets[i].url).searchParams;
  return server;
}

function client(server, options = {}) {
  return new CourierClient({
    url: 'ws://127.0.0.1:1',
    token: 'x.e30.x',
    user: 'bob',
    WebSocket: server.WebSocket,
    storage: null,
    tuning: { backoffBase: 5, backoffMax: 20, requestTimeout: 2000, ackDelay: 0 },
    ...options,
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const caughtUp = { type: 'caught_up', conversations: 0, messages: 0 };

// ------------------------------------------------------------ device id

test('a device id is 1–64 characters of A-Z a-z 0-9 . _ -, as the server checks', () => {
  for (const ok of ['phone', 'laptop', 'a', 'A.b_c-9', 'x'.repeat(64), newDeviceId()]) {
    assert.equal(isValidDeviceId(ok), true, ok);
    assert.equal(checkDeviceId(ok), ok);
  }
  for (const bad of ['', 'x'.repeat(65), 'has space', 'é', 'a/b', 'a?b', 'a&b', 'a=b', null, undefined, 7]) {
    assert.equal(isValidDeviceId(bad), false, String(bad));
    assert.throws(() => checkDeviceId(bad), (e) => e instanceof CourierError && e.code === 'invalid_device_id');
  }
  assert.notEqual(newDeviceId(), newDeviceId());
});

test('the device id option wins, is checked at once, and is not stored', () => {
  const storage = memoryStorage({ [DEVICE_ID_STORAGE_KEY]: 'kept' });
  const server = fakeServer();
  assert.equal(client(server, { deviceId: 'phone', storage }).deviceId, 'phone');
  assert.equal(storage.getItem(DEVICE_ID_STORAGE_KEY), 'kept');
  assert.throws(
    () => client(server, { deviceId: 'my phone' }),
    (e) => e instanceof CourierError && e.code === 'invalid_device_id' && /deviceId/.test(e.message),
  );
  assert.throws(() => client(server, { deviceId: '' }), (e) => e.code === 'invalid_device_id');
  assert.equal(server.sockets.length, 0, 'nothing was opened');
});

test('without the option, the id is generated once and kept in storage', () => {
  const storage = memoryStorage();
  const first = resolveDeviceId({ storage });
  assert.ok(isValidDeviceId(first));
  assert.equal(storage.getItem(DEVICE_ID_STORAGE_KEY), first, 'stored under courier.device_id');
  assert.equal(resolveDeviceId({ storage }), first, 'the next start finds it');
  const server = fakeServer();
  assert.equal(client(server, { storage }).deviceId, first, 'a client reads the same one');
  assert.equal(client(server, { storage, deviceIdKey: 'other' }).deviceId, storage.getItem('other'));
  assert.notEqual(storage.getItem('other'), first);

  // A stored value the server would refuse is replaced, never sent.
  const broken = memoryStorage({ [DEVICE_ID_STORAGE_KEY]: 'not valid!' });
  const replaced = resolveDeviceId({ storage: broken });
  assert.ok(isValidDeviceId(replaced));
  assert.equal(broken.getItem(DEVICE_ID_STORAGE_KEY), replaced);

  // Storage that throws (disabled, full): an id for this client's life.
  const throwing = {
    getItem() {
      throw new Error('denied');
    },
    setItem() {
      throw new Error('denied');
    },
  };
  assert.ok(isValidDeviceId(resolveDeviceId({ storage: throwing })));

  // No storage and no option: no id (the server's `default` device).
  assert.equal(resolveDeviceId({ storage: null }), null);
  assert.equal(client(server).deviceId, null);
});

test('localStorage is the default storage where there is one', () => {
  const had = Object.getOwnPropertyDescriptor(globalThis, 'localStorage');
  const storage = memoryStorage();
  Object.defineProperty(globalThis, 'localStorage', { value: storage, configurable: true, writable: true });
  try {
    const c = new CourierClient({ url: 'ws://h', token: 't', WebSocket: fakeServer().WebSocket });
    assert.ok(isValidDeviceId(c.deviceId));
    assert.equal(storage.getItem('courier.device_id'), c.deviceId);
    const again = new CourierClient({ url: 'ws://h', token: 't', WebSocket: fakeServer().WebSocket });
    assert.equal(again.deviceId, c.deviceId, 'kept across page loads');
  } finally {
    if (had) Object.defineProperty(globalThis, 'localStorage', had);
    else delete globalThis.localStorage;
  }
});

// --------------------------------------------------------- connect URL

test('the connect URL carries token, device and the opened conversation', () => {
  assert.equal(connectUrl('ws://h:1', 't'), 'ws://h:1/?token=t');
  assert.equal(connectUrl('ws://h:1', 't', { deviceId: 'phone' }), 'ws://h:1/?token=t&device=phone');
  assert.equal(
    connectUrl('wss://h/prod', 't.k', { deviceId: 'lap-1', conversationId: 'c:1@x=' }),
    'wss://h/prod?token=t.k&device=lap-1&conversation_id=c%3A1%40x%3D',
  );
  assert.equal(connectUrl('ws://h/?x=1', 't', { conversationId: 'c1' }), 'ws://h/?x=1&token=t&conversation_id=c1');
});

test('device= goes on every connection, conversation_id= on the first one only', async () => {
  const server = fakeServer();
  server.answer = () => [];
  const c = client(server, { deviceId: 'phone', openConversation: 'c7' });
  try {
    await c.connect();
    assert.equal(server.params(0).get('device'), 'phone');
    assert.equal(server.params(0).get('conversation_id'), 'c7');
    assert.equal(server.params(0).get('token'), 'x.e30.x');
    server.last().push(caughtUp);
    server.last().drop(1006);
    await waitFor('a reconnect', () => server.sockets.length === 2 && c.state === 'open');
    assert.equal(server.params(1).get('device'), 'phone');
    assert.equal(server.params(1).get('conversation_id'), null, 'a reconnect is not a tap on a notification');

    // connect({openConversation}) after going offline: the next socket names it.
    c.goOffline();
    await c.connect({ openConversation: 'c9' });
    assert.equal(server.params(2).get('conversation_id'), 'c9');
  } finally {
    c.close();
  }
});

test('a client with no device id sends no device= (the default device)', async () => {
  const server = fakeServer();
  const c = client(server);
  try {
    await c.connect();
    assert.equal(server.params(0).has('device'), false);
    assert.equal(server.params(0).has('conversation_id'), false);
  } finally {
    c.close();
  }
});

// --------------------------------------------------------- the new calls

test('listDevices resolves with the devices frame, matched by request_id', async () => {
  const server = fakeServer();
  server.answer = (f) => {
    if (f.action !== 'listDevices') return [];
    return [
      // Another request's reply first: it must not resolve this one.
      { type: 'devices', devices: [], request_id: 'someone-else' },
      {
        type: 'devices',
        request_id: f.request_id,
        devices: [
          { device_id: 'phone', linked_at: 1, last_seen_at: 5, connected: true, this_device: true },
          { device_id: 'laptop', linked_at: 2, last_seen_at: 3, connected: false, this_device: false },
        ],
      },
    ];
  };
  const c = client(server, { deviceId: 'phone' });
  try {
    await c.connect();
    assert.deepEqual(await c.listDevices(), [
      { deviceId: 'phone', linkedAt: 1, lastSeenAt: 5, connected: true, thisDevice: true },
      { deviceId: 'laptop', linkedAt: 2, lastSeenAt: 3, connected: false, thisDevice: false },
    ]);
    const sent = server.sent.filter((f) => f.action === 'listDevices');
    assert.equal(sent.length, 1);
    assert.equal(typeof sent[0].request_id, 'string');
  } finally {
    c.close();
  }
});

test('unlinkDevice resolves on device_unlinked; device_not_found and bad_request reject; a bad id never leaves', async () => {
  const server = fakeServer();
  server.answer = (f) => {
    if (f.action !== 'unlinkDevice') return [];
    if (f.device_id === 'laptop') return [{ type: 'device_unlinked', device_id: 'laptop', request_id: f.request_id }];
    if (f.device_id === 'phone') {
      return [{ type: 'error', code: 'bad_request', message: 'cannot unlink this device', request_id: f.request_id }];
    }
    return [{ type: 'error', code: 'device_not_found', message: 'no such device', request_id: f.request_id }];
  };
  const c = client(server, { deviceId: 'phone' });
  const unowned = [];
  c.on('error', (e) => unowned.push(e));
  try {
    await c.connect();
    assert.deepEqual(await c.unlinkDevice('laptop'), { deviceId: 'laptop' });
    await assert.rejects(
      c.unlinkDevice('tablet'),
      (e) => e instanceof CourierError && e.code === 'device_not_found' && typeof e.requestId === 'string',
    );
    await assert.rejects(c.unlinkDevice('phone'), (e) => e.code === 'bad_request');
    const before = server.sent.length;
    await assert.rejects(c.unlinkDevice('not valid'), (e) => e.code === 'invalid_device_id');
    assert.equal(server.sent.length, before, 'an invalid id is refused before it is sent');
    assert.deepEqual(unowned, [], 'the errors went to their requests, not to the error event');
  } finally {
    c.close();
  }
});

test('listConversations pages with after and limit and resolves {conversations, next}', async () => {
  const server = fakeServer();
  const all = ['c1', 'c2', 'c3'];
  server.answer = (f) => {
    if (f.action !== 'listConversations') return [];
    const from = f.after === undefined ? 0 : all.indexOf(f.after) + 1;
    const page = all.slice(from, from + (f.limit ?? 50));
    const next = from + page.length < all.length ? page[page.length - 1] : undefined;
    return [{
      type: 'conversations',
      request_id: f.request_id,
      conversations: page.map((id, i) => ({
        conversation_id: id,
        members: ['alice', 'bob'],
        last_seq: 10 + i,
        delivered_through_seq: 4,
      })),
      ...(next ? { next } : {}),
    }];
  };
  const c = client(server, { deviceId: 'phone' });
  try {
    await c.connect();
    const first = await c.listConversations({ limit: 2 });
    assert.deepEqual(first, {
      conversations: [
        { conversationId: 'c1', members: ['alice', 'bob'], lastSeq: 10, deliveredThroughSeq: 4 },
        { conversationId: 'c2', members: ['alice', 'bob'], lastSeq: 11, deliveredThroughSeq: 4 },
      ],
      next: 'c2',
    });
    const second = await c.listConversations({ after: first.next, limit: 2 });
    assert.deepEqual(second.conversations.map((x) => x.conversationId), ['c3']);
    assert.equal(second.next, null, 'the last page has no next');
    await c.listConversations();
    const frames = server.sent.filter((f) => f.action === 'listConversations');
    assert.deepEqual(frames.map(({ after, limit }) => ({ after, limit })), [
      { after: undefined, limit: 2 },
      { after: 'c2', limit: 2 },
      { after: undefined, limit: undefined },
    ], 'absent options are left out of the frame');
  } finally {
    c.close();
  }
});

test('the Session answers the new frames by request_id and leaves unmatched ones alone', async () => {
  const s = new Session({ me: 'bob' });
  s.onOpen(0);
  const got = [];
  for (const [id, action] of [['r1', 'listDevices'], ['r2', 'unlinkDevice'], ['r3', 'listConversations']]) {
    s.queueRequest(id, { action }, { resolve: (f) => got.push([id, f.type]), reject: assert.fail });
  }
  s.onText(JSON.stringify({ type: 'conversations', conversations: [], request_id: 'r3' }), 1);
  s.onText(JSON.stringify({ type: 'device_unlinked', device_id: 'x', request_id: 'r2' }), 1);
  s.onText(JSON.stringify({ type: 'devices', devices: [], request_id: 'nobody' }), 1);
  s.onText(JSON.stringify({ type: 'devices', devices: [], request_id: 'r1' }), 1);
  assert.deepEqual(got, [['r3', 'conversations'], ['r2', 'device_unlinked'], ['r1', 'devices']]);
  assert.equal(s.requests.size, 0);
});

// ---------------------------------------------------- too_many_devices

const refusal = {
  type: 'error',
  code: 'too_many_devices',
  message:
    'bob already has 8 linked devices (MAX_DEVICES = 8); unlink one from another device (unlinkDevice) to use this one',
};

test('the limit is read from the too_many_devices message', () => {
  assert.equal(deviceLimitOf(refusal.message), 8);
  assert.equal(deviceLimitOf('bob already has 3 linked devices'), 3);
  assert.equal(deviceLimitOf('no number here'), null);
});

test('too_many_devices is fatal: a typed error naming the limit, offline, no reconnect', async () => {
  const server = fakeServer();
  const c = client(server, { deviceId: 'ninth', tuning: { backoffBase: 5, backoffMax: 10, requestTimeout: 5000 } });
  const errors = [];
  const states = [];
  c.on('error', (e) => errors.push(e));
  c.on('state', (s) => states.push(s));
  try {
    await c.connect();
    const pending = c.ping();
    // As the server does: the error frame right after connect, then the close.
    server.last().push(refusal);
    server.last().drop(1000);
    await assert.rejects(pending, (e) => e.code === 'too_many_devices');
    assert.equal(errors.length, 1);
    const [err] = errors;
    assert.ok(err instanceof CourierError);
    assert.equal(err.code, 'too_many_devices');
    assert.equal(err.limit, 8);
    assert.equal(err.fatal, true);
    assert.match(err.message, /MAX_DEVICES = 8/);
    assert.equal(c.state, 'offline');
    assert.deepEqual(
      states.filter((s) => s.reason).map(({ state, reason }) => [state, reason]),
      [['offline', 'too_many_devices']],
    );
    assert.equal(c.fatalError, err);
    // Many backoff periods later: still one socket, no loop.
    await sleep(200);
    assert.equal(server.sockets.length, 1, 'no reconnect after too_many_devices');
    assert.equal(c.state, 'offline');
    await assert.rejects(c.listDevices(), (e) => e.code === 'too_many_devices', 'a request fails at once');

    // Once a device is unlinked (elsewhere), the app may try again.
    await c.connect();
    assert.equal(server.sockets.length, 2);
    assert.equal(c.fatalError, null);
    server.last().push(caughtUp);
    await waitFor('caught up', () => c.stats.caughtUp === 1);
  } finally {
    c.close();
  }
});

test('a too_many_devices refusal on every connect stops after one connect each time', async () => {
  const server = fakeServer();
  const c = client(server, { deviceId: 'ninth' });
  try {
    for (let i = 1; i <= 3; i += 1) {
      await c.connect();
      server.last().push(refusal);
      server.last().drop(1000);
      await sleep(60);
      assert.equal(server.sockets.length, i);
      assert.equal(c.state, 'offline');
    }
  } finally {
    c.close();
  }
});

test('device_unlinked is fatal and the kept device id is forgotten', async () => {
  const server = fakeServer();
  const storage = memoryStorage({ [DEVICE_ID_STORAGE_KEY]: 'phone' });
  const c = client(server, { storage, tuning: { backoffBase: 5, backoffMax: 10, requestTimeout: 5000 } });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  try {
    assert.equal(c.deviceId, 'phone');
    await c.connect();
    assert.match(server.last().url, /device=phone/);
    // As the server does when another device unlinks this one.
    server.last().push({ type: 'error', code: 'device_unlinked', message: 'device phone was unlinked' });
    server.last().drop(1000);
    await waitFor('offline', () => c.state === 'offline');
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'device_unlinked');
    assert.equal(errors[0].fatal, true);
    await sleep(100);
    assert.equal(server.sockets.length, 1, 'no reconnect after device_unlinked');
    // A later connect is a new device, with a new kept id.
    assert.notEqual(c.deviceId, 'phone');
    assert.equal(storage.getItem(DEVICE_ID_STORAGE_KEY), c.deviceId);
    await c.connect();
    assert.match(server.last().url, new RegExp(`device=${c.deviceId}`));
  } finally {
    c.close();
  }
});

test('device_unlinked keeps a device id the app passed in', async () => {
  const server = fakeServer();
  const c = client(server, { deviceId: 'laptop' });
  try {
    await c.connect();
    server.last().push({ type: 'error', code: 'device_unlinked', message: 'device laptop was unlinked' });
    server.last().drop(1000);
    await waitFor('offline', () => c.state === 'offline');
    assert.equal(c.deviceId, 'laptop');
  } finally {
    c.close();
  }
});

// ------------------------------------------------ acking our own sends

test('a sent message counts as held at its seq, so the ack covers it', async () => {
  const s = new Session({ me: 'bob', tuning: { ackDelay: 0 } });
  s.onOpen(0);
  const ack = (out) => out.map((f) => JSON.parse(f)).filter((f) => f.action === 'ack').flatMap((f) => f.acks);

  // alice's 1, bob's own 2 (sent from this device), alice's 3.
  assert.deepEqual(
    ack(s.onText(JSON.stringify({ type: 'messages', conversation_id: 'c1', messages: [
      { seq: 1, message_id: 'm1', sender_id: 'alice', body: 'a', sent_at: 1 },
    ] }), 1)),
    [{ conversation_id: 'c1', seq: 1 }],
  );
  s.queueSend('c1', 'k2', 'mine', null, 2);
  assert.deepEqual(
    ack(s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: 'k2', seq: 2, sent_at: 2 }), 3)),
    [{ conversation_id: 'c1', seq: 2 }],
    'the ack moves over our own message',
  );
  assert.equal(s.timeline('c1').contiguousThrough, 2);

  // Only our own messages in a fresh conversation: acked too (the server
  // keeps a pending row for the sending device).
  s.queueSend('c2', 'k1', 'first', null, 4);
  assert.deepEqual(
    ack(s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c2', client_msg_id: 'k1', seq: 1, sent_at: 4 }), 5)),
    [{ conversation_id: 'c2', seq: 1 }],
  );

  // Our message came back by catch-up (the pending row) before its `sent`:
  // one copy, acked once.
  s.queueSend('c1', 'k3', 'again', null, 6);
  s.onText(JSON.stringify({ type: 'messages', conversation_id: 'c1', messages: [
    { seq: 3, message_id: 'm3', sender_id: 'bob', body: 'again', sent_at: 6 },
  ] }), 7);
  assert.deepEqual(
    ack(s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: 'k3', seq: 3, sent_at: 6 }), 8)),
    [],
    'already acked with the catch-up copy',
  );
  assert.equal(s.timeline('c1').size, 3);
  assert.equal(s.timeline('c1').acked, 3);
});

test('with a hole below our own message, the ack stops at the hole', () => {
  const s = new Session({ me: 'bob', tuning: { ackDelay: 0 } });
  s.onOpen(0);
  s.queueSend('c1', 'k5', 'late', null, 0);
  const out = s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: 'k5', seq: 5, sent_at: 1 }), 1);
  assert.deepEqual(out, [], 'seqs 1–4 are not held: nothing to ack yet');
  assert.deepEqual(s.timeline('c1').holes(), [[1, 4]]);
});

test('coalesced acks of own sends go out after ackDelay', () => {
  const s = new Session({ me: 'bob', tuning: { ackDelay: 100 } });
  s.onOpen(0);
  for (let i = 1; i <= 3; i += 1) {
    s.queueSend('c1', `k${i}`, `m${i}`, null, i);
    assert.deepEqual(
      s.onText(JSON.stringify({ type: 'sent', conversation_id: 'c1', client_msg_id: `k${i}`, seq: i, sent_at: i }), i),
      [],
    );
  }
  const acks = s.onTick(150).map((f) => JSON.parse(f)).filter((f) => f.action === 'ack');
  assert.deepEqual(acks, [{ action: 'ack', acks: [{ conversation_id: 'c1', seq: 3 }] }]);
});
