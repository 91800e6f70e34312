// Test helper: the story page in a real browser, Debian's Chromium, headless,
// driven by playwright-core (`npx playwright install` cannot download a
// browser here), against a courier-local of its own with a fresh profile.
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
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

/**
 * Starts courier-local, opens its page at `/` and waits until every pane is
 * connected (`#status[data-phase="ready"]`). `beforeLoad(page)` runs before
 * the page loads (to watch its sockets from the first). `problems` collects
 * page errors, HTTP errors and console errors; `close()` stops it all. On a
 * failure here, or one a test passes to `withLog`, the gateway's log is
 * added to the message.
 */
export async function openStoryPage({ beforeLoad } = {}) {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install chromium`);
  const gw = await startGateway();
  const profile = await mkdtemp(path.join(os.tmpdir(), 'courier-chromium-'));
  let context;
  const close = async () => {
    await context?.close();
    await gw.stop();
    await rm(profile, { recursive: true, force: true });
  };
  const withLog = (e) => {
    e.message += `\n--- courier-local log ---\n${gw.log()}`;
    return e;
  };
  try {
    // The gateway embeds the files at build time: a stale binary would test
    // stale files.
    for (const [route, file] of [
      ['/', 'clients/web/index.html'],
      ['/app.js', 'clients/web/app.js'],
      ['/courier.js', 'clients/js/src/courier.js'],
    ]) {
      const served = await (await fetch(gw.httpUrl + route)).text();
      if (served !== (await readFile(path.join(ROOT, file), 'utf8'))) {
        assert.fail(`courier-local serves an old ${file}: run \`cargo build -p courier-local\``);
      }
    }
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1440, height: 960 },
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
    });
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    await beforeLoad?.(page);

    // The page is served at `/`, the WebSocket API on the same `/`.
    const response = await page.goto(`${gw.httpUrl}/`);
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-type'], /^text\/html/);
    await page.waitForSelector('#status[data-phase="ready"]', { timeout: 20_000 });
    return { gw, page, problems, close, withLog };
  } catch (e) {
    await close();
    throw withLog(e);
  }
}

/** The seqs, senders and bodies of a pane's conversation with `peer`
 *  (`pane`: alice, bob-phone, bob-laptop, carol). */
export async function conversation(page, pane, peer) {
  return page.$$eval(`#pane-${pane} article.conv[data-peer="${peer}"] ol.messages li`, (items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      sender: li.dataset.sender,
      body: li.querySelector('.body').textContent,
      caughtUp: li.classList.contains('caught-up'),
      sending: li.classList.contains('sending'),
    })));
}
