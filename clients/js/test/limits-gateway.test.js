// The client's size refusals against the real server (courier-local, its
// real send handler): adversarial bodies at and around MAX_BODY_BYTES and
// FRAME_BYTES are sent by a device whose checks are off, which records what
// the server answers, and by a device with the default checks, which must
// refuse exactly the bodies the server refused, sending none of them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { CourierClient, DEFAULT_TUNING, frameBytes, messageFrameBytes } from '../src/courier.js';
import { startGateway } from './gateway.js';

/** A `ws` WebSocket that records the `client_msg_id` of every sendMessage
 *  frame that leaves. */
function tapped() {
  const tap = { sent: new Set() };
  tap.WebSocket = class TappedWebSocket extends WebSocket {
    send(data) {
      const f = JSON.parse(data);
      if (f.action === 'sendMessage') tap.sent.add(f.client_msg_id);
      super.send(data);
    }
  };
  return tap;
}

/** `prefix`, `a`s, then `tail`, with as many `a`s as bring `measure` of the
 *  body to `target` (each `a` is one byte of every measure). */
function aimed(prefix, tail, measure, target) {
  const n = target - measure(prefix + tail);
  assert.ok(n >= 0, `${JSON.stringify(tail)}: ${target} is below the prefix alone`);
  return prefix + 'a'.repeat(n) + tail;
}

/** How a send ended: `answer` is `sent`, the code it was rejected with
 *  (`error`), or `no answer` after 5 s (an error frame without its
 *  client_msg_id leaves the send waiting, resent forever). */
function settled(p) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ answer: 'no answer' }), 5000);
  });
  const done = p.then(
    () => ({ answer: 'sent' }),
    (error) => ({ answer: error.code, error }),
  );
  return Promise.race([done, late]).finally(() => clearTimeout(timer));
}

test('the client refuses exactly the bodies the server refuses as too large, and sends none of them', { timeout: 60_000 }, async () => {
  // Accepted sends take tokens from the user's bucket (burst 30); these are
  // a few dozen, back to back.
  const gw = await startGateway({ env: { RATE_LIMIT_PER_SEC: '0' } });
  const clients = [];
  const device = async (deviceId, options) => {
    const c = new CourierClient({ url: gw.wsUrl, token: () => gw.token('alice'), deviceId, storage: null, ...options });
    clients.push(c);
    await c.connect();
    return c;
  };
  try {
    const loose = await device('loose', {
      WebSocket,
      tuning: { maxBodyBytes: Infinity, maxMessageFrameBytes: Infinity },
    });
    const tap = tapped();
    // No `user` option: the id comes from the token's sub once connected.
    const strict = await device('strict', { WebSocket: tap.WebSocket });
    assert.equal(strict.user, 'alice');
    const { conversationId: cid } = await loose.createConversation(['bob']);

    const { maxBodyBytes, maxMessageFrameBytes } = DEFAULT_TUNING;
    const frame = (body) => messageFrameBytes(cid, 'alice', body);
    // Tails that escape to 2 or 6 bytes, that do not escape (DEL), that are
    // 4 bytes (an astral emoji) or become 3 (a lone surrogate).
    const tails = ['"', '\\', '\t', '\u0000', '\u007f', '😀', '\ud83d'];
    const bodies = [];
    for (const tail of tails) {
      for (const d of [-1, 0, 1]) {
        bodies.push(aimed('', tail, frameBytes, maxBodyBytes + d));
        // 4,000 control characters are 24,000 bytes escaped: the frame limit
        // is reached with the body well within its own.
        bodies.push(aimed('\u0001'.repeat(4000), tail, frame, maxMessageFrameBytes + d));
      }
    }
    // At both limits at once (16,155 quotes and the rest plain), and a byte
    // over each.
    for (const [db, df] of [[0, 0], [1, 1], [-1, 1]]) {
      const quotes = maxMessageFrameBytes + df - frame('') - (maxBodyBytes + db);
      bodies.push(aimed('"'.repeat(quotes), '', frameBytes, maxBodyBytes + db));
      assert.equal(frame(bodies.at(-1)), maxMessageFrameBytes + df);
    }
    // Blank to the server (U+0085 is White_Space), so its bad_request; not
    // blank to it (U+FEFF), so too large.
    bodies.push('\u0085'.repeat(8193), '\ufeff'.repeat(5462));

    const server = [];
    for (const body of bodies) server.push((await settled(loose.send(cid, body))).answer);
    const refused = (i) => server[i] === 'payload_too_large';
    assert.ok(bodies.some((_, i) => refused(i)) && server.includes('sent'), server.join(' '));
    assert.ok(server.includes('bad_request'), 'the blank body');

    for (const [i, body] of bodies.entries()) {
      const clientMsgId = `strict-${i}`;
      const why = `#${i} body ${frameBytes(body)} bytes, frame ${frame(body)}: the server said ${server[i]}`;
      const { answer, error } = await settled(strict.send(cid, body, { clientMsgId }));
      assert.equal(answer, server[i], why);
      assert.equal(tap.sent.has(clientMsgId), !refused(i), `${why}: on the wire`);
      if (refused(i)) {
        assert.ok(['maxBodyBytes', 'maxMessageFrameBytes'].includes(error.limitName), why);
      }
    }
    assert.deepEqual(strict.pendingSends(), []);
  } catch (e) {
    e.message += `\n--- courier-local log ---\n${gw.log()}`;
    throw e;
  } finally {
    for (const c of clients) c.close();
    await gw.stop();
  }
});
