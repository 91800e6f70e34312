// The poison frame through the page, in headless Chromium. A body of 16,384
// `"` passes the server's 16 KB body limit, but its frame, JSON-escaped, is
// over API Gateway's 32 KB: sent, it would close the socket with 1009, and
// again on every resend after each reconnect. Typed into alice's composer,
// it must fail at once and show as failed, never go out on the socket, and
// leave the page's connection up; the next message goes through to bob.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tokenSubject } from '../../src/courier.js';
import { conversation, openStoryPage } from './page.js';

const POISON = '"'.repeat(16_384);
const MAX_FRAME_BYTES = 32 * 1024;

test('a poison body typed into the page fails at once, visibly; the socket stays up and the next send reaches bob', { timeout: 120_000 }, async () => {
  // Every socket the page opens: whose it is, what it sent, whether it closed.
  const sockets = [];
  const { page, problems, close, withLog } = await openStoryPage({
    beforeLoad: (p) => p.on('websocket', (ws) => {
      const url = new URL(ws.url());
      const s = {
        user: tokenSubject(url.searchParams.get('token')),
        device: url.searchParams.get('device'),
        largest: 0,
        closed: false,
      };
      ws.on('framesent', ({ payload }) => {
        s.largest = Math.max(s.largest, Buffer.byteLength(payload));
      });
      ws.on('close', () => {
        s.closed = true;
      });
      sockets.push(s);
    }),
  });
  const alices = () => sockets.filter((s) => s.user === 'alice');
  try {
    assert.equal(alices().length, 1, "alice's pane has one socket");
    const compose = '#pane-alice article.conv[data-peer="bob"] form.compose';
    await page.fill(`${compose} input`, POISON);
    const started = Date.now();
    await page.click(`${compose} button`);
    const failed = await page.waitForSelector('#pane-alice li.failed[data-failed="payload_too_large"]', { timeout: 1000 });
    assert.ok(Date.now() - started < 1000, `failed after ${Date.now() - started} ms`);
    assert.match(await failed.textContent(), /"{80}… \(not sent: too large\)$/);
    assert.equal(await page.$$eval('#pane-alice li.sending', (els) => els.length), 0, 'not queued for a resend');

    const reopened = alices().length - 1;
    assert.ok(reopened <= 1, `alice's socket came back ${reopened} times`);
    assert.equal(alices().at(-1).closed, false, "alice's socket is up");
    assert.equal(await page.getAttribute('#pane-alice', 'data-state'), 'open');

    await page.fill(`${compose} input`, 'after the poison');
    await page.click(`${compose} button`);
    for (const pane of ['bob-phone', 'bob-laptop']) {
      await page.waitForFunction(
        (sel) => [...document.querySelectorAll(sel)].some((b) => b.textContent === 'after the poison'),
        `#pane-${pane} article.conv[data-peer="alice"] li .body`,
        { timeout: 5000 },
      );
      assert.deepEqual(
        (await conversation(page, pane, 'alice')).map((m) => [m.seq, m.sender, m.body]),
        [[1, 'alice', 'after the poison']],
        `${pane} shows the next message at seq 1: the poison took no seq`,
      );
    }
    assert.deepEqual(
      sockets.filter((s) => s.largest > MAX_FRAME_BYTES).map((s) => [s.user, s.device, s.largest]),
      [],
      'no frame over 32 KB went out',
    );
    assert.deepEqual(problems, [], 'the page logged no errors');
  } catch (e) {
    throw withLog(e);
  } finally {
    await close();
  }
});
