// The story page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (`npx playwright install` cannot download a browser here).
//
// It starts courier-local, opens the page at `/`, plays the story, checks
// what bob's phone showed while he was offline, flips bob's switch, and
// checks bob's panes: every message at its seq, in order, the missed ones
// delivered by catch-up, nothing still sending, nothing pending on the
// server. Screenshots go to .tmp/browser/; with UPDATE_SCREENSHOTS=1 also to
// docs/ (the ones the README shows).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, copyFile, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT, startGateway } from '../gateway.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const OUT = path.join(ROOT, '.tmp/browser');
const DOCS = path.join(ROOT, 'docs');

async function shoot(page, name) {
  await mkdir(OUT, { recursive: true });
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.UPDATE_SCREENSHOTS) await copyFile(file, path.join(DOCS, name));
  return file;
}

/** The seqs, senders and bodies of a pane's conversation with `peer`. */
async function conversation(page, user, peer) {
  return page.$$eval(`#pane-${user} article.conv[data-peer="${peer}"] ol.messages li`, (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      body: li.querySelector('.body').textContent,
      caughtUp: li.classList.contains('caught-up'),
      sending: li.classList.contains('sending'),
    })));
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('the story in headless Chromium: banners while offline, catch-up in order when online', { timeout: 180_000 }, async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install chromium`);
  const gw = await startGateway();
  // The gateway embeds the files at build time: a stale binary would test
  // stale files.
  for (const [route, file] of [
    ['/', 'clients/web/index.html'],
    ['/app.js', 'clients/web/app.js'],
    ['/courier.js', 'clients/js/src/courier.js'],
  ]) {
    const served = await (await fetch(gw.httpUrl + route)).text();
    if (served !== (await readFile(path.join(ROOT, file), 'utf8'))) {
      await gw.stop();
      assert.fail(`courier-local serves an old ${file}: run \`cargo build -p courier-local\``);
    }
  }
  const profile = await mkdtemp(path.join(os.tmpdir(), 'courier-chromium-'));
  let context;
  const problems = [];
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1440, height: 960 },
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
    });
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });

    // The page is served at `/`, the WebSocket API on the same `/`.
    const response = await page.goto(`${gw.httpUrl}/`);
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-type'], /^text\/html/);
    await page.waitForSelector('#status[data-phase="ready"]', { timeout: 20_000 });
    for (const user of ['alice', 'bob', 'carol']) {
      assert.equal(await page.getAttribute(`#pane-${user}`, 'data-state'), 'open', `${user} is online`);
    }

    await page.click('#play');
    await page.waitForSelector('#status[data-phase="offline-banners"]', { timeout: 60_000 });
    assert.equal(await page.getAttribute('#pane-bob', 'data-state'), 'offline');
    assert.equal(await page.isChecked('#bob-online'), false, "bob's switch is off");
    assert.equal(await gw.registry('bob'), null, 'bob is not connected');
    const banners = await page.$$eval('#bob-phone .banner', (els) =>
      els.map((b) => ({ seq: Number(b.dataset.seq), text: b.querySelector('.text').textContent })));
    assert.deepEqual(banners.sort((a, b) => a.seq - b.seq), [
      { seq: 19, text: 'carol: call me when you see this' },
      { seq: 44, text: 'alice: hello??' },
    ], 'one banner per conversation, the latest');
    const bobBefore = await conversation(page, 'bob', 'alice');
    assert.deepEqual(bobBefore.map((m) => m.seq), range(1, 41), 'offline bob still has only the history');
    await shoot(page, 'screenshot-offline.png');

    await page.click('#bob-switch');
    await page.waitForSelector('#status[data-phase="caught-up"]', { timeout: 30_000 });
    assert.equal(await page.getAttribute('#pane-bob', 'data-state'), 'open');

    const fromAlice = await conversation(page, 'bob', 'alice');
    const fromCarol = await conversation(page, 'bob', 'carol');
    assert.deepEqual(fromAlice.map((m) => m.seq), range(1, 44), "bob's conversation with alice: 1..44 in order");
    assert.deepEqual(fromCarol.map((m) => m.seq), range(1, 19), "bob's conversation with carol: 1..19 in order");
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
    const sending = await page.$$eval('li.sending', (els) => els.length);
    assert.equal(sending, 0, 'no send is still pending in any pane');

    const ms = Number(await page.getAttribute('#bob-timing', 'data-ms'));
    assert.ok(Number.isFinite(ms) && ms >= 0 && ms < 10_000, `socket open → caught_up took ${ms} ms`);
    const timing = await page.textContent('#bob-timing');
    assert.match(timing, /socket open → caught_up: \d+ ms/);
    assert.match(timing, /6 messages in 2 conversations/);
    assert.match(timing, /pending on the server: nothing/);
    assert.deepEqual(await gw.pending('bob'), [], 'nothing pending for bob on the server');

    // Receipts reach the senders once bob's acks are in.
    await page.waitForFunction(() =>
      document.querySelector('#pane-alice article.conv .meta')?.textContent.includes('bob has it through #44'));
    await shoot(page, 'screenshot.png');
    assert.deepEqual(problems, [], 'the page logged no errors');
  } catch (e) {
    e.message += `\n--- courier-local log ---\n${gw.log()}`;
    throw e;
  } finally {
    await context?.close();
    await gw.stop();
    await rm(profile, { recursive: true, force: true });
  }
});
