// The server's size limits, measured as the server measures them: the
// client refuses a send with `payload_too_large` exactly when the server
// would (a body over MAX_BODY_BYTES, or a message whose `messages` frame is
// over FRAME_BYTES), so a refusal never costs a round trip and nothing the
// server refuses is sent. limits-gateway.test.js holds the same set against
// the real server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CourierClient,
  DEFAULT_TUNING,
  MAX_USER_ID_BYTES,
  Session,
  frameBytes,
  messageFrameBytes,
} from '../src/courier.js';

const T = DEFAULT_TUNING;

/** A small seeded PRNG (mulberry32): the same bodies on every run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What JSON escapes (quote, backslash, every control character), what it
 *  does not but is easy to miscount (DEL, 2-, 3- and 4-byte UTF-8, U+2028,
 *  lone surrogates), and plain text. */
const PIECES = [
  '"',
  '\\',
  ...Array.from({ length: 0x20 }, (_, c) => String.fromCharCode(c)),
  '\u007f',
  'é',
  '€',
  '\u2028',
  '😀',
  '\ud83d',
  '\ude00',
  '</script>',
  'a',
  ' ',
];

/** The `messages` frame the server would write for this message alone, with
 *  its widest seq, sent_at and message id: the measure built the long way,
 *  from JSON.stringify (which escapes as serde_json does a well-formed
 *  string). */
function serverFrame(conversationId, userId, body) {
  const message = `{"seq":18446744073709551615,"message_id":"${'0'.repeat(36)}","sender_id":${JSON.stringify(userId)},"body":${JSON.stringify(body.toWellFormed())},"sent_at":-9223372036854775808}`;
  return `{"type":"messages","conversation_id":${JSON.stringify(conversationId)},"messages":[${message}]}`;
}

test('the message frame measure: 190 bytes, both ids, and the body escaped as the server escapes it', () => {
  const base = 190 + 'c1'.length + 'bob'.length;
  const m = (body) => messageFrameBytes('c1', 'bob', body);
  assert.equal(m(''), base);
  assert.equal(m('a'), base + 1);
  assert.equal(m('"'), base + 2);
  assert.equal(m('\\'), base + 2);
  for (const c of ['\b', '\f', '\n', '\r', '\t']) assert.equal(m(c), base + 2, JSON.stringify(c));
  for (let c = 0; c < 0x20; c += 1) {
    if ([0x08, 0x09, 0x0a, 0x0c, 0x0d].includes(c)) continue;
    assert.equal(m(String.fromCharCode(c)), base + 6, `U+${c.toString(16).padStart(4, '0')}`);
  }
  assert.equal(m('\u007f'), base + 1, 'DEL is not escaped');
  assert.equal(m('é'), base + 2);
  assert.equal(m('€'), base + 3);
  assert.equal(m('\u2028'), base + 3, 'U+2028 is not escaped');
  assert.equal(m('😀'), base + 4, 'an astral emoji: 2 UTF-16 units, 4 UTF-8 bytes');
  // A lone surrogate goes out as U+FFFD (3 bytes); a pair in the wrong
  // order is two lone ones.
  assert.equal(m('\ud83d'), base + 3);
  assert.equal(m('\ude00'), base + 3);
  assert.equal(m('\ude00\ud83d'), base + 6);
  assert.equal(m('a"\\\u0000😀\n\u007f\ud83d'), base + 1 + 2 + 2 + 6 + 4 + 2 + 1 + 3);
  assert.equal(m('"'.repeat(16_384)), base + 32_768);
  // Without a user id, the longest the server allows.
  assert.equal(messageFrameBytes('c1', undefined, 'a'), 190 + 2 + MAX_USER_ID_BYTES + 1);
  assert.equal(messageFrameBytes('c1', null, 'a'), messageFrameBytes('c1', 'u'.repeat(128), 'a'));
});

test('the measure is the UTF-8 length of the frame the server would write, for adversarial bodies', () => {
  const random = prng(1);
  for (let i = 0; i < 2000; i += 1) {
    const body = Array.from({ length: Math.floor(random() * 40) }, () => PIECES[Math.floor(random() * PIECES.length)]).join('');
    const cid = `c_${'f'.repeat(Math.floor(random() * 40))}`;
    const uid = 'u'.repeat(1 + Math.floor(random() * 128));
    assert.equal(
      messageFrameBytes(cid, uid, body),
      new TextEncoder().encode(serverFrame(cid, uid, body)).length,
      JSON.stringify(body),
    );
  }
});

/** A conversation id as courier-local makes them. */
const CID = 'c_0123456789abcdef0123456789abcdef';

/** A session of `me` (`undefined`: not known), open, and a send of `body`
 *  through it: the frame that went out, or the error it was refused with. */
function trySend(body, options = {}) {
  const { me, cid, tuning } = { me: 'alice', cid: CID, tuning: {}, ...options };
  const s = new Session({ me, tuning });
  s.onOpen(0);
  let error = null;
  const frame = s.queueSend(cid, 'k1', body, { resolve() {}, reject: (e) => (error = e) }, 0);
  return { s, frame, error };
}

test('the session refuses exactly the bodies the server refuses, at and around both limits', () => {
  const random = prng(42);
  const pick = () => PIECES[Math.floor(random() * PIECES.length)];
  // Fillers move the two measures apart: a quote is 1 byte of body and 2 of
  // frame, a control character 1 and 6, an emoji 4 and 4. Aimed at the
  // frame limit, only those that escape: the others reach the body limit
  // first.
  const fillers = ['a', '"', '\u0001', 'é', '😀', '\n'];
  const escaping = ['"', '\u0001', '\n'];
  const limits = [
    { maxBodyBytes: T.maxBodyBytes, maxMessageFrameBytes: T.maxMessageFrameBytes },
    { maxBodyBytes: 1024, maxMessageFrameBytes: 1500 },
    { maxBodyBytes: 4096, maxMessageFrameBytes: 2048 },
  ];
  let refusedByBody = 0;
  let refusedByFrame = 0;
  let accepted = 0;
  for (let i = 0; i < 1500; i += 1) {
    const tuning = limits[i % limits.length];
    const me = random() < 0.2 ? undefined : 'u'.repeat(1 + Math.floor(random() * 128));
    const cid = `c_${'0'.repeat(Math.floor(random() * 60))}`;
    // Never blank: that is the server's bad_request (a test below).
    const head = `x${Array.from({ length: Math.floor(random() * 20) }, pick).join('')}`;
    const tail = Array.from({ length: 1 + Math.floor(random() * 3) }, pick).join('');
    // Filler so that one measure lands within a few bytes of its limit
    // (the adversarial tail straddles it), then plain text to hit it.
    const aimAtBody = random() < 0.5;
    const choice = aimAtBody ? fillers : escaping;
    const filler = choice[Math.floor(random() * choice.length)];
    const measure = (b) => (aimAtBody ? frameBytes(b) : messageFrameBytes(cid, me, b));
    const target = (aimAtBody ? tuning.maxBodyBytes : tuning.maxMessageFrameBytes) + Math.floor(random() * 9) - 4;
    const fill = filler.repeat(Math.max(0, Math.floor((target - measure(head + tail)) / measure(filler) - (aimAtBody ? 0 : 1))));
    const pad = 'a'.repeat(Math.max(0, target - measure(head + fill + tail)));
    const body = head + fill + pad + tail;

    const bodyBytes = frameBytes(body);
    const frame = messageFrameBytes(cid, me, body);
    const { s, frame: out, error } = trySend(body, { me, cid, tuning });
    const why = `#${i} ${JSON.stringify(tuning)} body ${bodyBytes} frame ${frame} me ${me?.length}`;
    if (bodyBytes > tuning.maxBodyBytes || frame > tuning.maxMessageFrameBytes) {
      if (bodyBytes > tuning.maxBodyBytes) refusedByBody += 1;
      else refusedByFrame += 1;
      assert.equal(out, null, why);
      assert.equal(s.outbox.size, 0, why);
      assert.deepEqual([error?.code, error?.clientMsgId], ['payload_too_large', 'k1'], why);
      // The first limit it is over names the refusal: the socket's own (a
      // body of control characters is over it too), then the server's in
      // the server's order.
      const sendFrameBytes = frameBytes(
        JSON.stringify({ action: 'sendMessage', conversation_id: cid, client_msg_id: 'k1', body: body.toWellFormed() }),
      );
      const [limitName, measured] =
        sendFrameBytes > T.maxFrameBytes
          ? ['maxFrameBytes', sendFrameBytes]
          : bodyBytes > tuning.maxBodyBytes
            ? ['maxBodyBytes', bodyBytes]
            : ['maxMessageFrameBytes', frame];
      assert.deepEqual([error.limitName, error.frameBytes ?? error.bodyBytes ?? error.messageFrameBytes], [limitName, measured], why);
    } else {
      accepted += 1;
      assert.equal(error, null, `${why}: ${error?.message}`);
      assert.equal(JSON.parse(out).body, body.toWellFormed(), why);
      assert.equal(s.outbox.size, 1, why);
    }
  }
  // Each outcome is well represented, so the boundary was really straddled.
  for (const [what, n] of Object.entries({ refusedByBody, refusedByFrame, accepted })) {
    assert.ok(n > 200, `${what}: ${n}`);
  }
});

test('exactly at each limit goes out; one byte over is refused at once and never queued', () => {
  const cid = 'c1';
  // 190 + 2 + 3 bytes of envelope; 16,189 quotes and 195 letters are
  // 16,384 bytes of body and 32,573 escaped: both limits exactly.
  const atBoth = '"'.repeat(16_189) + 'a'.repeat(195);
  assert.equal(frameBytes(atBoth), T.maxBodyBytes);
  assert.equal(messageFrameBytes(cid, 'bob', atBoth), T.maxMessageFrameBytes);
  const send = (body, me = 'bob') => trySend(body, { me, cid });
  assert.ok(send(atBoth).frame);
  assert.ok(send('a'.repeat(16_384)).frame);

  const overBody = send(`${atBoth}a`);
  assert.equal(overBody.frame, null);
  assert.equal(overBody.error.limitName, 'maxBodyBytes');
  assert.equal(overBody.error.bodyBytes, 16_385);
  assert.match(overBody.error.message, /16385 bytes, over the 16384-byte limit \(maxBodyBytes\)/);

  const overFrame = send('"'.repeat(16_190) + 'a'.repeat(194));
  assert.equal(overFrame.frame, null);
  assert.equal(overFrame.error.limitName, 'maxMessageFrameBytes');
  assert.equal(overFrame.error.messageFrameBytes, 32_769);
  assert.equal(overFrame.error.limit, 32_768);

  // Refused while offline too, and not sent on the next open.
  const s = new Session({ me: 'bob' });
  let error = null;
  assert.equal(s.queueSend(cid, 'k1', `${atBoth}\u0001`, { resolve() {}, reject: (e) => (error = e) }, 0), null);
  assert.equal(error.code, 'payload_too_large');
  assert.deepEqual(s.onOpen(0), []);
});

test('without a user id the frame is measured with the longest one: a send up to 125 bytes early is refused', () => {
  const cid = 'c1';
  const atLimit = '"'.repeat(16_189) + 'a'.repeat(195); // with `bob`: exactly 32,768
  assert.ok(trySend(atLimit, { me: 'bob', cid }).frame);
  const unknown = trySend(atLimit, { me: undefined, cid });
  assert.equal(unknown.error.limitName, 'maxMessageFrameBytes');
  assert.equal(unknown.error.messageFrameBytes, 32_768 - 3 + MAX_USER_ID_BYTES);
  assert.ok(trySend(atLimit.slice(0, -(MAX_USER_ID_BYTES - 3)), { me: undefined, cid }).frame);
});

test("the client measures with the user option, else with the longest id until the token's sub is known", async () => {
  const atLimit = '"'.repeat(16_189) + 'a'.repeat(195); // with `bob` in `c1`: exactly 32,768
  const offline = (options) =>
    new CourierClient({ url: 'ws://127.0.0.1:1', token: 'x.e30.x', storage: null, WebSocket: class {}, ...options });
  const bob = offline({ user: 'bob' });
  const pending = bob.send('c1', atLimit);
  assert.equal(bob.pendingSends().length, 1, 'queued for the next open');
  const anonymous = offline({});
  await assert.rejects(anonymous.send('c1', atLimit), (e) => e.code === 'payload_too_large' && e.limitName === 'maxMessageFrameBytes');
  assert.equal(anonymous.pendingSends().length, 0);
  bob.close();
  anonymous.close();
  await assert.rejects(pending, (e) => e.code === 'closed');
});

test("a blank body is the server's bad_request whatever its size: blank as the server trims, not as JavaScript does", () => {
  // U+0085 is White_Space to the server, not to String.prototype.trim;
  // U+FEFF the other way round.
  const nel = '\u0085'.repeat(8193);
  assert.equal(frameBytes(nel), 16_386);
  assert.ok(trySend(nel).frame, 'left for the server to refuse as empty');
  const bom = '\ufeff'.repeat(5462);
  assert.equal(bom.trim(), '');
  assert.equal(trySend(bom).error.limitName, 'maxBodyBytes');
  // Over the message frame limit (a vertical tab is 6 bytes escaped), not
  // over the socket's.
  const tabs = '\u000b'.repeat(5424);
  const { frame } = trySend(tabs);
  assert.ok(frame);
  assert.ok(messageFrameBytes('c_0123456789abcdef0123456789abcdef', 'alice', tabs) > T.maxMessageFrameBytes);
});

test('a lone surrogate goes out as U+FFFD, which the server stores; a pair is kept', () => {
  const { s, frame } = trySend('a\ud83d b\ude00 😀 \ude00\ud83d');
  assert.equal(JSON.parse(frame).body, 'a\ufffd b\ufffd 😀 \ufffd\ufffd');
  assert.doesNotMatch(frame, /\\ud/, 'no surrogate escape, which the server refuses');
  assert.equal([...s.outbox.values()][0].body, 'a\ufffd b\ufffd 😀 \ufffd\ufffd');
});
