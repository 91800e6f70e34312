// The story page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (`npx playwright install` cannot download a browser here).
//
// It starts courier-local, opens the page at `/`, plays the story, checks
// what bob's phone showed while he was offline, flips his phone's switch,
// and checks the phone's pane: every message at its seq, in order, the
// missed ones delivered by catch-up, nothing still sending. bob's laptop, a
// second device of the same user, still has all six waiting on the server
// (the phone's acks did not empty it); flipping it delivers them there too,
// and then nothing is pending. A second play starts clean: fresh
// conversations from seq 1, none of the first play's shown. Screenshots go
// to .tmp/browser/; with UPDATE_SCREENSHOTS=1 also to docs/ (the ones the
// README shows).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, copyFile } from 'node:fs/promises';
import path from 'node:path';
import { ROOT } from '../gateway.js';
import { conversation, openStoryPage } from './page.js';

const OUT = path.join(ROOT, '.tmp/browser');
const DOCS = path.join(ROOT, 'docs');

async function shoot(page, name) {
  await mkdir(OUT, { recursive: true });
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.UPDATE_SCREENSHOTS) await copyFile(file, path.join(DOCS, name));
  return file;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('the story in headless Chromium: banners while offline, catch-up in order when online', { timeout: 180_000 }, async () => {
  const { gw, page, problems, close, withLog } = await openStoryPage();
  try {
    for (const pane of ['alice', 'bob-phone', 'bob-laptop', 'carol']) {
      assert.equal(await page.getAttribute(`#pane-${pane}`, 'data-state'), 'open', `${pane} is online`);
    }
    const registry = await gw.registry('bob');
    assert.deepEqual(registry.map((e) => e.device_id).sort(), ['laptop', 'phone'], 'bob is connected on two devices');

    await page.click('#play');
    await page.waitForSelector('#status[data-phase="offline-banners"]', { timeout: 60_000 });
    for (const pane of ['bob-phone', 'bob-laptop']) {
      assert.equal(await page.getAttribute(`#pane-${pane}`, 'data-state'), 'offline');
      assert.equal(await page.isChecked(`#${pane}-online`), false, `${pane}'s switch is off`);
    }
    assert.deepEqual(await gw.registry('bob'), [], 'bob is not connected');
    const banners = await page.$$eval('#bob-phone-screen .banner', (els) =>
      els.map((b) => ({ seq: Number(b.dataset.seq), text: b.querySelector('.text').textContent })));
    assert.deepEqual(banners.sort((a, b) => a.seq - b.seq), [
      { seq: 19, text: 'carol: call me when you see this' },
      { seq: 44, text: 'alice: hello??' },
    ], 'one banner per conversation, the latest');
    const bobBefore = await conversation(page, 'bob-phone', 'alice');
    assert.deepEqual(bobBefore.map((m) => m.seq), range(1, 41), 'offline bob still has only the history');
    await shoot(page, 'screenshot-offline.png');

    await page.click('#bob-phone-switch');
    await page.waitForSelector('#status[data-phase="caught-up"]', { timeout: 30_000 });
    assert.equal(await page.getAttribute('#pane-bob-phone', 'data-state'), 'open');
    assert.equal(await page.getAttribute('#pane-bob-laptop', 'data-state'), 'offline');

    const checkCaughtUp = async (pane) => {
      const fromAlice = await conversation(page, pane, 'alice');
      const fromCarol = await conversation(page, pane, 'carol');
      assert.deepEqual(fromAlice.map((m) => m.seq), range(1, 44), `${pane}'s conversation with alice: 1..44 in order`);
      assert.deepEqual(fromCarol.map((m) => m.seq), range(1, 19), `${pane}'s conversation with carol: 1..19 in order`);
      assert.deepEqual(fromAlice.filter((m) => m.caughtUp).map((m) => [m.seq, m.sender, m.body]), [
        [42, 'alice', 'hey'],
        [43, 'alice', 'where are you?'],
        [44, 'alice', 'hello??'],
      ]);
      assert.deepEqual(fromCarol.filter((m) => m.caughtUp).map((m) => [m.seq, m.sender, m.body]), [
        [17, 'carol', 'are we still on for tonight?'],
        [18, 'carol', "I'm at the station"],
        [19, 'carol', 'call me when you see this'],
      ]);
      assert.deepEqual(
        fromAlice.slice(0, 41).map((m) => m.body),
        range(1, 41).map((i) => `earlier message ${i}`),
      );
      const ms = Number(await page.getAttribute(`#${pane}-timing`, 'data-ms'));
      assert.ok(Number.isFinite(ms) && ms >= 0 && ms < 10_000, `${pane}: socket open → caught_up took ${ms} ms`);
      const timing = await page.textContent(`#${pane}-timing`);
      assert.match(timing, /socket open → caught_up: \d+ ms/);
      assert.match(timing, /6 messages in 2 conversations/);
    };
    await checkCaughtUp('bob-phone');
    assert.match(await page.textContent('#bob-phone-waiting'), /waiting on the server for this phone: nothing/);
    // The phone's acks did not empty the laptop's share.
    assert.equal(await page.getAttribute('#bob-laptop-waiting', 'data-count'), '6');
    assert.ok((await gw.pending('bob')).length > 0, "the laptop's messages still wait on the server");
    assert.deepEqual((await conversation(page, 'bob-laptop', 'alice')).map((m) => m.seq), range(1, 41));

    await page.click('#bob-laptop-switch');
    await page.waitForSelector('#status[data-phase="all-caught-up"]', { timeout: 30_000 });
    await checkCaughtUp('bob-laptop');
    assert.match(await page.textContent('#bob-laptop-waiting'), /waiting on the server for this laptop: nothing/);
    assert.deepEqual(await gw.pending('bob'), [], 'nothing pending for bob on the server');
    const sending = await page.$$eval('li.sending', (els) => els.length);
    assert.equal(sending, 0, 'no send is still pending in any pane');

    // Receipts reach the senders once bob's acks are in.
    await page.waitForFunction(() =>
      document.querySelector('#pane-alice article.conv .meta')?.textContent.includes('bob has it through #44'));
    await shoot(page, 'screenshot.png');

    // A second play starts clean: fresh conversations, the first play's gone.
    const firstIds = await page.$$eval('#pane-alice article.conv', (els) => els.map((e) => e.dataset.conversation));
    await page.click('#play');
    await page.waitForSelector('#status[data-phase="offline-banners"]', { timeout: 60_000 });
    const secondIds = await page.$$eval('#pane-alice article.conv', (els) => els.map((e) => e.dataset.conversation));
    assert.equal(secondIds.length, 1, 'alice shows one conversation');
    assert.ok(!firstIds.includes(secondIds[0]), 'a new conversation');
    for (const pane of ['alice', 'bob-phone', 'bob-laptop', 'carol']) {
      const shown = await page.$$eval(`#pane-${pane} article.conv`, (els) => els.map((e) => e.dataset.conversation));
      assert.ok(shown.every((id) => !firstIds.includes(id)), `${pane} shows nothing of the first play`);
    }
    assert.deepEqual((await conversation(page, 'bob-phone', 'alice')).map((m) => m.seq), range(1, 41), 'seqs start at 1 again');
    const banners2 = await page.$$eval('#bob-phone-screen .banner', (els) => els.map((b) => Number(b.dataset.seq)));
    assert.deepEqual(banners2.sort((a, b) => a - b), [19, 44]);
    await page.click('#bob-phone-switch');
    await page.waitForSelector('#status[data-phase="caught-up"]', { timeout: 30_000 });
    await checkCaughtUp('bob-phone');
    assert.deepEqual(problems, [], 'the page logged no errors');
  } catch (e) {
    throw withLog(e);
  } finally {
    await close();
  }
});
