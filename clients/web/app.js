// The story page: alice, bob's phone, bob's laptop and carol side by side on
// the local gateway, each a CourierClient of its own (the same module apps
// use). bob is one user with two devices (`device=phone`, `device=laptop`):
// each device has its own connection, its own catch-up and its own acks, so
// an ack on one never empties the other. Each bob device is on a switch.
//
// While bob's phone is offline its pane shows what the phone would: the
// push notifications the gateway recorded for its push token
// (/_local/pushes), one banner per conversation, the latest, as the OS
// collapses them. Switching a device online opens its socket; catch-up fills
// its conversations in seq order and the pane shows how long it took from
// socket open to `caught_up`, and what is still waiting on the server for
// that device.
//
// The story (the Play button) is the seed's: 41 and 16 earlier messages bob
// has read, bob closes the app on both devices, alice and carol send three
// each (seqs 42–44 and 17–19), bob opens the app on his phone; his laptop
// still has all six waiting, until it is opened too. `?history=5,3` shortens
// the earlier part. Every play starts clean: fresh conversations (so seqs
// start at 1 again), and the panes show only the current play's.
//
// Every step sets #status's data-phase, which the browser test waits on:
// loading → ready → history → offline → offline-banners → catching-up →
// caught-up → laptop-catching-up → all-caught-up (or error).

import { CourierClient } from '/courier.js';

/** The panes: a user, and for bob which of his devices. */
const VIEWS = [
  { key: 'alice', user: 'alice', device: 'browser' },
  { key: 'bob-phone', user: 'bob', device: 'phone', label: 'phone' },
  { key: 'bob-laptop', user: 'bob', device: 'laptop', label: 'laptop' },
  { key: 'carol', user: 'carol', device: 'browser' },
];
const BOB_DEVICES = VIEWS.filter((v) => v.user === 'bob');
const ALICE_SAYS = ['hey', 'where are you?', 'hello??'];
const CAROL_SAYS = ['are we still on for tonight?', "I'm at the station", 'call me when you see this'];

const params = new URLSearchParams(location.search);
const HISTORY = (() => {
  const [a, c] = (params.get('history') ?? '41,16').split(',').map(Number);
  const ok = (n) => Number.isInteger(n) && n >= 0 && n <= 1000;
  return ok(a) && ok(c) ? [a, c] : [41, 16];
})();

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
/** The push token of bob's phone (its registerDevice). */
const phonePushToken = `bob-phone-${Math.random().toString(16).slice(2, 10)}`;

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
};

async function getJson(path) {
  const r = await fetch(path, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function fetchToken(user) {
  return (await getJson(`/_local/token?user=${encodeURIComponent(user)}`)).token;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, check, timeout = 20000) {
  const deadline = performance.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (performance.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(50);
  }
}

function setStatus(phase, text) {
  const s = $('#status');
  s.dataset.phase = phase;
  s.textContent = text;
}

// ------------------------------------------------------------------- state

/** view key → CourierClient */
const clients = {};
/** The current play's conversations: id → {members}. Only these are shown;
 *  a new play replaces them (the old ones stay on the server). */
const conversations = new Map();
/** Per bob device: what its pane shows about going offline and back. */
const devices = Object.fromEntries(BOB_DEVICES.map((v) => [v.key, {
  offline: false,
  /** contiguous seq per conversation when it went offline: what came later
   *  arrived by catch-up and is highlighted */
  floor: new Map(),
  switchedAt: null,
  timing: null,
  /** messages still waiting on the server for this device (null: unknown) */
  waiting: null,
}]));
/** The phone's lock screen while it is offline. */
const phone = {
  pushesBefore: 0,
  banners: new Map(),
  shown: false,
  pushTimer: null,
};
let story = null;
/** Sends the client rejected (too large for a frame, refused by the
 *  server): view → [{conversationId, body, reason}], shown as failed. */
const failedSends = new Map();

for (const view of VIEWS) {
  const c = new CourierClient({
    url: wsUrl,
    user: view.user,
    deviceId: view.device,
    token: () => fetchToken(view.user),
    tuning: { caughtUpTimeout: 3000 },
  });
  clients[view.key] = c;
  c.on('message', scheduleRender);
  c.on('receipt', scheduleRender);
  c.on('state', scheduleRender);
  c.on('error', (e) => {
    console.warn(`${view.key}:`, e.code, e.message);
    if (e.code === 'too_many_devices') fail(new Error(`${view.key}: ${e.message}`));
  });
  if (devices[view.key]) {
    c.on('caughtUp', (detail) => {
      const d = devices[view.key];
      if (d.switchedAt === null) return;
      d.timing = { ...detail, afterSwitchMs: performance.now() - d.switchedAt };
      d.switchedAt = null;
      scheduleRender();
      afterCatchUp(view).catch(fail);
    });
  }
}

// ------------------------------------------------------------------ render

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function buildPanes() {
  const main = $('#panes');
  for (const view of VIEWS) {
    const title = el('h2', {}, view.user);
    if (view.label) title.append(el('small', {}, ` · ${view.label}`));
    const header = el('header', {}, title, el('span', { class: 'dot', dataset: { role: 'state' } }));
    const pane = el('section', {
      class: 'pane',
      id: `pane-${view.key}`,
      dataset: { user: view.user, device: view.device },
    }, header);
    if (devices[view.key]) {
      const input = el('input', { type: 'checkbox', id: `${view.key}-online`, 'aria-label': `${view.key} online` });
      input.checked = true;
      input.addEventListener('change', () => setOnline(view, input.checked).catch(fail));
      header.append(el('label', { class: 'switch', id: `${view.key}-switch` }, input, el('span', { class: 'track' }), el('span', { class: 'label' }, 'online')));
      if (view.device === 'phone') {
        pane.append(el('div', { class: 'phone', id: 'bob-phone-screen', hidden: '' },
          el('h3', {}, el('span', { class: 'title' }, "bob's phone: app closed"), el('span', { class: 'clock' }, '')),
          el('div', { class: 'banners' })));
      }
      pane.append(
        el('div', { class: 'timing', id: `${view.key}-timing`, hidden: '' }),
        el('div', { class: 'waiting', id: `${view.key}-waiting`, hidden: '' }),
      );
    }
    pane.append(el('div', { class: 'convs' }));
    main.append(pane);
  }
}

function convIdsFor(view) {
  return [...conversations].filter(([, c]) => c.members.includes(view.user)).map(([id]) => id);
}

function convBox(view, pane, id) {
  let box = pane.querySelector(`article[data-conversation="${id}"]`);
  if (box) return box;
  const meta = conversations.get(id);
  const others = meta ? meta.members.filter((m) => m !== view.user) : [];
  const input = el('input', { placeholder: `message as ${view.user}`, 'aria-label': `message as ${view.key}` });
  const form = el('form', { class: 'compose' }, input, el('button', { type: 'submit' }, 'Send'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    clients[view.key].send(id, body).then(scheduleRender, (e) => {
      console.warn(e);
      if (!failedSends.has(view.key)) failedSends.set(view.key, []);
      failedSends.get(view.key).push({ conversationId: id, body, reason: e?.code ?? String(e) });
      scheduleRender();
    });
    scheduleRender();
  });
  box = el('article', { class: 'conv', dataset: { conversation: id, peer: others.join(',') } },
    el('h3', {}, el('span', {}, others.length ? `with ${others.join(', ')}` : 'conversation'), el('span', { class: 'id' }, id.slice(0, 10) + '…')),
    el('ol', { class: 'messages' }),
    el('div', { class: 'meta' }),
    form);
  pane.querySelector('.convs').append(box);
  return box;
}

function renderConversation(view, box, id) {
  const c = clients[view.key];
  const user = view.user;
  const list = box.querySelector('ol.messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const floor = devices[view.key]?.floor.get(id);
  const items = c.timeline(id).map((m) => el('li', {
    class: [m.senderId === user ? 'mine' : 'theirs', floor !== undefined && m.seq > floor ? 'caught-up' : ''].join(' ').trim(),
    dataset: { seq: String(m.seq), sender: m.senderId },
  }, el('span', { class: 'seq' }, `#${m.seq}`), el('span', { class: 'from' }, `${m.senderId}:`), el('span', { class: 'body' }, m.body)));
  for (const p of c.pendingSends().filter((p) => p.conversationId === id)) {
    items.push(el('li', { class: 'mine sending', dataset: { pending: p.clientMsgId } },
      el('span', { class: 'seq' }, '…'), el('span', { class: 'from' }, `${user}:`), el('span', { class: 'body' }, `${p.body} (sending)`)));
  }
  for (const f of failedSends.get(view.key) ?? []) {
    if (f.conversationId !== id) continue;
    const shown = f.body.length > 80 ? `${f.body.slice(0, 80)}…` : f.body;
    items.push(el('li', { class: 'mine failed', dataset: { failed: f.reason } },
      el('span', { class: 'seq' }, '✗'), el('span', { class: 'from' }, `${user}:`),
      el('span', { class: 'body' }, `${shown} (not sent: ${f.reason === 'payload_too_large' ? 'too large' : f.reason})`)));
  }
  list.replaceChildren(...items);
  if (atBottom || !list.dataset.scrolled) {
    list.scrollTop = list.scrollHeight;
    list.dataset.scrolled = '1';
  }
  const meta = box.querySelector('.meta');
  const others = (box.dataset.peer || '').split(',').filter(Boolean);
  const receipts = others
    .map((o) => [o, c.receipt(id, o)])
    .filter(([, seq]) => seq > 0)
    .map(([o, seq]) => `${o} has it through #${seq}`);
  const through = c.contiguousThrough(id);
  meta.textContent = receipts.length
    ? `✓ ${receipts.join(', ')}`
    : through > 0 ? `holds #1–#${through}, in order` : '';
}

function renderPhone(pane, d) {
  const screen = $('#bob-phone-screen', pane);
  screen.hidden = !phone.shown;
  screen.classList.toggle('opened', !d.offline);
  $('.title', screen).textContent = d.offline ? "bob's phone: app closed" : "bob's phone: shown while the app was closed";
  const banners = [...phone.banners.values()].sort((x, y) => y.at - x.at);
  const list = $('.banners', screen);
  list.replaceChildren(...(banners.length
    ? banners.map((b) => el('div', { class: 'banner', dataset: { conversation: b.conversation_id, seq: String(b.seq) } },
      el('div', { class: 'app' }, el('span', {}, 'COURIER'), el('span', {}, `#${b.seq}`)),
      el('div', { class: 'text' }, b.preview ?? 'New message')))
    : [el('div', { class: 'empty' }, 'no notifications')]));
}

function renderDevice(view, pane) {
  const d = devices[view.key];
  if (view.device === 'phone') renderPhone(pane, d);
  const timing = $(`#${view.key}-timing`, pane);
  timing.hidden = d.timing === null;
  if (d.timing) {
    const t = d.timing;
    timing.dataset.ms = String(Math.round(t.afterOpenMs));
    timing.replaceChildren(
      el('div', {}, 'socket open → caught_up: ', el('b', {}, `${Math.round(t.afterOpenMs)} ms`)),
      el('div', {}, `${t.messages} messages in ${t.conversations} conversations; switch → caught_up ${Math.round(t.afterSwitchMs)} ms`),
    );
  }
  const waiting = $(`#${view.key}-waiting`, pane);
  waiting.hidden = d.waiting === null;
  waiting.dataset.count = String(d.waiting ?? '');
  waiting.textContent = d.waiting === null
    ? ''
    : `waiting on the server for this ${view.label}: ${d.waiting === 0 ? 'nothing' : `${d.waiting} messages`}`;
  const sw = $(`#${view.key}-switch`, pane);
  $('.label', sw).textContent = $(`#${view.key}-online`).checked ? 'online' : 'offline';
}

function render() {
  for (const view of VIEWS) {
    const pane = $(`#pane-${view.key}`);
    const c = clients[view.key];
    const dot = $('[data-role="state"]', pane);
    dot.dataset.state = c.state;
    dot.textContent = c.state === 'open' ? 'online' : c.state;
    pane.dataset.state = c.state;
    const ids = convIdsFor(view);
    // A new play's conversations replace the last one's.
    for (const box of pane.querySelectorAll('article.conv')) {
      if (!ids.includes(box.dataset.conversation)) box.remove();
    }
    for (const id of ids) renderConversation(view, convBox(view, pane, id), id);
    if (devices[view.key]) renderDevice(view, pane);
  }
}

// ----------------------------------------------------- the server's view

/** bob's pending rows on the server (every device's). */
const pendingRows = () => getJson('/_local/pending/bob');

/**
 * How many messages of `rows` `device` may still lack: a row covers
 * `first_undelivered_seq..=last_seq`, and a device's cursor says what it
 * acked since (courier-core's PendingDelivery::held_by).
 */
function waitingFor(rows, device) {
  let n = 0;
  for (const r of rows) {
    const cursor = r.cursors?.[device];
    const start = cursor === undefined ? r.first_undelivered_seq : Math.max(r.first_undelivered_seq, cursor + 1);
    n += Math.max(0, r.last_seq - start + 1);
  }
  return n;
}

/** Whether any of bob's devices is in the registry (one entry per device). */
async function bobConnected(device) {
  const entries = await getJson('/_local/registry/bob');
  if (entries === null) return false;
  const list = Array.isArray(entries) ? entries : [entries];
  return list.some((e) => device === undefined || (e.device_id ?? 'default') === device);
}

async function refreshWaiting() {
  const rows = await pendingRows();
  for (const v of BOB_DEVICES) devices[v.key].waiting = waitingFor(rows, v.device);
  scheduleRender();
  return rows;
}

// ---------------------------------------------------------- bob's switches

async function pollPushes() {
  const all = await getJson('/_local/pushes');
  // The OS collapses a conversation's pushes into one banner: the latest.
  for (const p of all.slice(phone.pushesBefore)) {
    if (p.token !== phonePushToken) continue;
    const m = p.message;
    const seen = phone.banners.get(m.conversation_id);
    if (!seen || m.seq > seen.seq) phone.banners.set(m.conversation_id, { ...m, at: p.at });
  }
  scheduleRender();
}

async function setOnline(view, online) {
  const d = devices[view.key];
  const c = clients[view.key];
  const input = $(`#${view.key}-online`);
  input.checked = online;
  $(`#${view.key}-switch`).classList.remove('nudge');
  if (!online) {
    d.offline = true;
    d.timing = null;
    for (const id of convIdsFor(view)) d.floor.set(id, c.contiguousThrough(id));
    if (view.device === 'phone') {
      phone.shown = true;
      phone.banners.clear();
      phone.pushesBefore = (await getJson('/_local/pushes')).length;
      clearInterval(phone.pushTimer);
      phone.pushTimer = setInterval(() => pollPushes().catch(fail), 250);
    }
    c.goOffline();
    scheduleRender();
    return;
  }
  if (view.device === 'phone') {
    clearInterval(phone.pushTimer);
    phone.pushTimer = null;
    await pollPushes();
  }
  d.offline = false;
  d.switchedAt = performance.now();
  if (story?.phase === 'offline-banners' && view.device === 'phone') {
    setStatus('catching-up', "bob opens the app on his phone: catch-up is delivering…");
  } else if (story?.phase === 'caught-up' && view.device === 'laptop') {
    story.phase = 'laptop-catching-up';
    setStatus('laptop-catching-up', 'bob opens his laptop: its own catch-up is delivering…');
  }
  scheduleRender();
  await c.connect();
}

async function afterCatchUp(view) {
  // Acks go out coalesced; this device's share of the pending rows goes
  // once the server has them. The other device's share stays.
  try {
    await waitFor(`nothing waiting for bob's ${view.label}`, async () => {
      const rows = await refreshWaiting();
      return waitingFor(rows, view.device) === 0;
    }, 5000);
  } catch {
    // shown as the count
  }
  scheduleRender();
  if (!story) return;
  const [ca, cc] = story.ids;
  const [ha, hc] = HISTORY;
  const holdsAll = (key) =>
    clients[key].contiguousThrough(ca) >= ha + ALICE_SAYS.length
    && clients[key].contiguousThrough(cc) >= hc + CAROL_SAYS.length;
  const ms = (key) => Math.round(devices[key].timing.afterOpenMs);
  if (story.phase === 'offline-banners' && view.device === 'phone') {
    await waitFor("bob's phone holds every message", () => holdsAll('bob-phone'));
    const rows = await refreshWaiting();
    story.phase = 'caught-up';
    const laptop = waitingFor(rows, 'laptop');
    setStatus('caught-up', `bob's phone caught up: ${devices['bob-phone'].timing.messages} messages in `
      + `${devices['bob-phone'].timing.conversations} conversations, ${ms('bob-phone')} ms after its socket opened; `
      + `nothing waiting for it. His laptop's copies are still waiting (${laptop} messages): flip the laptop.`);
    $('#bob-laptop-switch').classList.add('nudge');
  } else if (story.phase === 'laptop-catching-up' && view.device === 'laptop') {
    await waitFor("bob's laptop holds every message", () => holdsAll('bob-laptop'));
    await waitFor('nothing pending for bob', async () => (await refreshWaiting()).length === 0, 5000).catch(() => {});
    const rows = await refreshWaiting();
    story.phase = 'done';
    setStatus('all-caught-up', `bob's laptop caught up too: ${devices['bob-laptop'].timing.messages} messages, `
      + `${ms('bob-laptop')} ms after its socket opened; `
      + `${rows.length === 0 ? 'nothing pending for bob on the server' : `${rows.length} pending rows left`}.`);
  }
}

// ------------------------------------------------------------------- story

/** Fresh conversations alice–bob and carol–bob: a play starts from seq 1
 *  and shows nothing of an earlier one. */
async function freshConversations() {
  conversations.clear();
  for (const [key, peer] of [['alice', 'bob'], ['carol', 'bob']]) {
    const { conversationId, members } = await clients[key].createConversation([peer]);
    conversations.set(conversationId, { members });
  }
  for (const v of BOB_DEVICES) {
    devices[v.key].floor.clear();
    devices[v.key].timing = null;
    devices[v.key].waiting = null;
  }
  phone.banners.clear();
  phone.shown = false;
  failedSends.clear();
  render();
  return [...conversations.keys()];
}

async function setup() {
  buildPanes();
  render();
  await Promise.all(VIEWS.map((v) => clients[v.key].connect()));
  await clients['bob-phone'].registerDevice('fcm', phonePushToken);
  await freshConversations();
  $('#play').disabled = false;
  $('#play').addEventListener('click', () => playStory().catch(fail));
  setStatus('ready', "Ready. Press play, or chat: every pane is a live client (bob's two are two devices of one user).");
}

async function playStory() {
  $('#play').disabled = true;
  for (const v of BOB_DEVICES) {
    $(`#${v.key}-switch`).classList.remove('nudge');
    if (!$(`#${v.key}-online`).checked) await setOnline(v, true);
  }
  story = { phase: 'history', ids: [] };
  const ids = await freshConversations();
  story.ids = ids;
  const [ca, cc] = ids;
  const [ha, hc] = HISTORY;
  setStatus('history', `alice and carol have been chatting with bob: ${ha} and ${hc} earlier messages…`);
  // One at a time: each waits for its `sent`, so bodies and seqs line up.
  for (let i = 1; i <= ha; i += 1) await clients.alice.send(ca, `earlier message ${i}`);
  for (let i = 1; i <= hc; i += 1) await clients.carol.send(cc, `earlier message ${i}`);
  for (const v of BOB_DEVICES) {
    await waitFor(`bob's ${v.label} reads the earlier messages`, () =>
      clients[v.key].contiguousThrough(ca) >= ha && clients[v.key].contiguousThrough(cc) >= hc);
  }
  await waitFor("the acks of both of bob's devices clear his pending rows", async () => (await pendingRows()).length === 0);

  story.phase = 'offline';
  setStatus('offline', 'bob closes the app on his phone and his laptop. alice and carol keep writing…');
  for (const v of BOB_DEVICES) {
    await setOnline(v, false);
    // Until the pushes are in, the story needs bob offline.
    $(`#${v.key}-online`).disabled = true;
  }
  await waitFor('bob leaves the registry', async () => !(await bobConnected()));
  for (const body of ALICE_SAYS) {
    await clients.alice.send(ca, body);
    await sleep(120);
  }
  for (const body of CAROL_SAYS) {
    await clients.carol.send(cc, body);
    await sleep(120);
  }
  const last = new Map([[ca, clients.alice.contiguousThrough(ca)], [cc, clients.carol.contiguousThrough(cc)]]);
  await waitFor("the pushes reach bob's phone", async () => {
    await pollPushes();
    return [...last].every(([id, seq]) => phone.banners.get(id)?.seq === seq);
  });
  await refreshWaiting();
  story.phase = 'offline-banners';
  for (const v of BOB_DEVICES) $(`#${v.key}-online`).disabled = false;
  $('#play').disabled = false;
  setStatus('offline-banners', "bob's phone shows one banner per conversation, the latest. Flip his phone's switch to open the app.");
  $('#bob-phone-switch').classList.add('nudge');
}

function fail(e) {
  console.error(e);
  setStatus('error', `error: ${e?.message ?? e}`);
}

setup().catch(fail);
