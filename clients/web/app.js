// The story page: alice, bob and carol side by side on the local gateway,
// each a CourierClient of their own (the same module apps use), with bob's
// connection on a switch.
//
// While bob is offline his pane shows what his phone would: the push
// notifications the gateway recorded for his device (/_local/pushes), one
// banner per conversation, the latest, as the OS collapses them. Switching him
// online opens his socket; catch-up fills his conversations in seq order and
// the pane shows how long it took from socket open to `caught_up`.
//
// The story (the Play button) is the seed's: 41 and 16 earlier messages bob
// has read, bob closes the app, alice and carol send three each (seqs 42–44
// and 17–19), bob opens the app. `?history=5,3` shortens the earlier part.
//
// Every step sets #status's data-phase, which the browser test waits on:
// loading → ready → history → offline → offline-banners → catching-up →
// caught-up (or error).

import { CourierClient } from '/courier.js';

const USERS = ['alice', 'bob', 'carol'];
const ALICE_SAYS = ['hey', 'where are you?', 'hello??'];
const CAROL_SAYS = ['are we still on for tonight?', "I'm at the station", 'call me when you see this'];

const params = new URLSearchParams(location.search);
const HISTORY = (() => {
  const [a, c] = (params.get('history') ?? '41,16').split(',').map(Number);
  const ok = (n) => Number.isInteger(n) && n >= 0 && n <= 1000;
  return ok(a) && ok(c) ? [a, c] : [41, 16];
})();

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`;
const bobPhone = `bob-browser-${Math.random().toString(16).slice(2, 10)}`;

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

const clients = {};
/** conversation id → {members, label} as the page created them */
const conversations = new Map();
const bob = {
  offline: false,
  /** contiguous seq per conversation when he went offline: what came later
   *  arrived by catch-up and is highlighted */
  floor: new Map(),
  pushesBefore: 0,
  banners: new Map(),
  phoneShown: false,
  pushTimer: null,
  switchedAt: null,
  openedAt: null,
  timing: null,
  pending: null,
};
let story = null;
/** Sends the client rejected (too large for a frame, refused by the
 *  server): user → [{conversationId, body, reason}], shown as failed. */
const failedSends = new Map();

for (const user of USERS) {
  const c = new CourierClient({
    url: wsUrl,
    user,
    token: () => fetchToken(user),
    tuning: { caughtUpTimeout: 3000 },
  });
  clients[user] = c;
  c.on('message', scheduleRender);
  c.on('receipt', scheduleRender);
  c.on('state', ({ state }) => {
    if (user === 'bob' && state === 'open') bob.openedAt = performance.now();
    scheduleRender();
  });
  c.on('error', (e) => console.warn(`${user}:`, e.code, e.message));
}

clients.bob.on('caughtUp', (detail) => {
  if (bob.switchedAt === null) return;
  bob.timing = {
    ...detail,
    afterSwitchMs: performance.now() - bob.switchedAt,
  };
  bob.switchedAt = null;
  scheduleRender();
  afterCatchUp().catch(fail);
});

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
  for (const user of USERS) {
    const header = el('header', {}, el('h2', {}, user), el('span', { class: 'dot', dataset: { role: 'state' } }));
    const pane = el('section', { class: 'pane', id: `pane-${user}`, dataset: { user } }, header);
    if (user === 'bob') {
      const input = el('input', { type: 'checkbox', id: 'bob-online', 'aria-label': 'bob online' });
      input.checked = true;
      input.addEventListener('change', () => setBobOnline(input.checked).catch(fail));
      header.append(el('label', { class: 'switch', id: 'bob-switch' }, input, el('span', { class: 'track' }), el('span', { class: 'label' }, 'online')));
      pane.append(
        el('div', { class: 'phone', id: 'bob-phone', hidden: '' },
          el('h3', {}, el('span', { class: 'title' }, "bob's phone: app closed"), el('span', { class: 'clock' }, '')),
          el('div', { class: 'banners' })),
        el('div', { class: 'timing', id: 'bob-timing', hidden: '' }),
      );
    }
    pane.append(el('div', { class: 'convs' }));
    main.append(pane);
  }
}

function convIdsFor(user) {
  const ids = [...conversations].filter(([, c]) => c.members.includes(user)).map(([id]) => id);
  for (const id of clients[user].conversations()) if (!ids.includes(id)) ids.push(id);
  return ids;
}

function convBox(user, pane, id) {
  let box = pane.querySelector(`article[data-conversation="${id}"]`);
  if (box) return box;
  const meta = conversations.get(id);
  const others = meta ? meta.members.filter((m) => m !== user) : [];
  const input = el('input', { placeholder: `message as ${user}`, 'aria-label': `message as ${user}` });
  const form = el('form', { class: 'compose' }, input, el('button', { type: 'submit' }, 'Send'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    clients[user].send(id, body).then(scheduleRender, (e) => {
      console.warn(e);
      if (!failedSends.has(user)) failedSends.set(user, []);
      failedSends.get(user).push({ conversationId: id, body, reason: e?.code ?? String(e) });
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

function renderConversation(user, box, id) {
  const c = clients[user];
  const list = box.querySelector('ol.messages');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  const floor = user === 'bob' ? bob.floor.get(id) : undefined;
  const items = c.timeline(id).map((m) => el('li', {
    class: [m.senderId === user ? 'mine' : 'theirs', floor !== undefined && m.seq > floor ? 'caught-up' : ''].join(' ').trim(),
    dataset: { seq: String(m.seq), sender: m.senderId },
  }, el('span', { class: 'seq' }, `#${m.seq}`), el('span', { class: 'from' }, `${m.senderId}:`), el('span', { class: 'body' }, m.body)));
  for (const p of c.pendingSends().filter((p) => p.conversationId === id)) {
    items.push(el('li', { class: 'mine sending', dataset: { pending: p.clientMsgId } },
      el('span', { class: 'seq' }, '…'), el('span', { class: 'from' }, `${user}:`), el('span', { class: 'body' }, `${p.body} (sending)`)));
  }
  for (const f of failedSends.get(user) ?? []) {
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

function renderBob(pane) {
  const phone = $('#bob-phone', pane);
  phone.hidden = !bob.phoneShown;
  phone.classList.toggle('opened', !bob.offline);
  $('.title', phone).textContent = bob.offline ? "bob's phone: app closed" : "bob's phone: shown while the app was closed";
  const banners = [...bob.banners.values()].sort((x, y) => y.at - x.at);
  const list = $('.banners', phone);
  list.replaceChildren(...(banners.length
    ? banners.map((b) => el('div', { class: 'banner', dataset: { conversation: b.conversation_id, seq: String(b.seq) } },
      el('div', { class: 'app' }, el('span', {}, 'COURIER'), el('span', {}, `#${b.seq}`)),
      el('div', { class: 'text' }, b.preview ?? 'New message')))
    : [el('div', { class: 'empty' }, 'no notifications')]));
  const timing = $('#bob-timing', pane);
  timing.hidden = bob.timing === null;
  if (bob.timing) {
    const t = bob.timing;
    timing.dataset.ms = String(Math.round(t.afterOpenMs));
    timing.replaceChildren(
      el('div', {}, 'socket open → caught_up: ', el('b', {}, `${Math.round(t.afterOpenMs)} ms`)),
      el('div', {}, `${t.messages} messages in ${t.conversations} conversations; switch → caught_up ${Math.round(t.afterSwitchMs)} ms`),
      el('div', {}, bob.pending === null ? 'pending on the server: checking…' : `pending on the server: ${bob.pending === 0 ? 'nothing' : `${bob.pending} rows`}`),
    );
  }
  const sw = $('#bob-switch', pane);
  $('.label', sw).textContent = $('#bob-online').checked ? 'online' : 'offline';
}

function render() {
  for (const user of USERS) {
    const pane = $(`#pane-${user}`);
    const c = clients[user];
    const dot = $('[data-role="state"]', pane);
    dot.dataset.state = c.state;
    dot.textContent = c.state === 'open' ? 'online' : c.state;
    pane.dataset.state = c.state;
    for (const id of convIdsFor(user)) renderConversation(user, convBox(user, pane, id), id);
    if (user === 'bob') renderBob(pane);
  }
}

// ------------------------------------------------------------- bob's switch

async function pollPushes() {
  const all = await getJson('/_local/pushes');
  // The OS collapses a conversation's pushes into one banner: the latest.
  for (const p of all.slice(bob.pushesBefore)) {
    if (p.token !== bobPhone) continue;
    const m = p.message;
    const seen = bob.banners.get(m.conversation_id);
    if (!seen || m.seq > seen.seq) bob.banners.set(m.conversation_id, { ...m, at: p.at });
  }
  scheduleRender();
}

async function setBobOnline(online) {
  const input = $('#bob-online');
  input.checked = online;
  $('#bob-switch').classList.remove('nudge');
  if (!online) {
    bob.offline = true;
    bob.phoneShown = true;
    bob.banners.clear();
    bob.timing = null;
    bob.pending = null;
    bob.pushesBefore = (await getJson('/_local/pushes')).length;
    for (const id of convIdsFor('bob')) bob.floor.set(id, clients.bob.contiguousThrough(id));
    clients.bob.goOffline();
    clearInterval(bob.pushTimer);
    bob.pushTimer = setInterval(() => pollPushes().catch(fail), 250);
    scheduleRender();
    return;
  }
  clearInterval(bob.pushTimer);
  bob.pushTimer = null;
  await pollPushes();
  bob.offline = false;
  bob.switchedAt = performance.now();
  if (story?.phase === 'offline-banners') setStatus('catching-up', 'bob opens the app: catch-up is delivering…');
  scheduleRender();
  await clients.bob.connect();
}

async function pendingForBob() {
  return (await getJson('/_local/pending/bob')).length;
}

async function afterCatchUp() {
  // Acks go out coalesced; the pending rows go once the server has them.
  try {
    await waitFor('bob has nothing pending', async () => (bob.pending = await pendingForBob()) === 0, 5000);
  } catch {
    // shown as the row count
  }
  scheduleRender();
  if (story?.phase !== 'offline-banners') return;
  const [ca, cc] = story.ids;
  const [ha, hc] = HISTORY;
  await waitFor('bob holds every message', () =>
    clients.bob.contiguousThrough(ca) >= ha + ALICE_SAYS.length
    && clients.bob.contiguousThrough(cc) >= hc + CAROL_SAYS.length);
  story.phase = 'done';
  const t = bob.timing;
  setStatus('caught-up', `bob caught up: ${t.messages} messages in ${t.conversations} conversations, `
    + `${Math.round(t.afterOpenMs)} ms after his socket opened; `
    + `${bob.pending === 0 ? 'nothing pending on the server' : `${bob.pending} pending rows left`}.`);
}

// ------------------------------------------------------------------- story

async function setup() {
  buildPanes();
  render();
  await Promise.all(USERS.map((u) => clients[u].connect()));
  await clients.bob.registerDevice('fcm', bobPhone);
  for (const [user, peer] of [['alice', 'bob'], ['carol', 'bob']]) {
    const { conversationId, members } = await clients[user].createConversation([peer]);
    conversations.set(conversationId, { members });
  }
  render();
  $('#play').disabled = false;
  $('#play').addEventListener('click', () => playStory().catch(fail));
  setStatus('ready', 'Ready. Press play, or chat: every pane is a live client.');
}

async function playStory() {
  $('#play').disabled = true;
  if (!$('#bob-online').checked) await setBobOnline(true);
  const ids = [...conversations.keys()];
  story = { phase: 'history', ids };
  const [ca, cc] = ids;
  const [ha, hc] = HISTORY;
  setStatus('history', `alice and carol have been chatting with bob: ${ha} and ${hc} earlier messages…`);
  const base = [clients.alice.contiguousThrough(ca), clients.carol.contiguousThrough(cc)];
  // One at a time: each waits for its `sent`, so bodies and seqs line up.
  for (let i = 1; i <= ha; i += 1) await clients.alice.send(ca, `earlier message ${i}`);
  for (let i = 1; i <= hc; i += 1) await clients.carol.send(cc, `earlier message ${i}`);
  await waitFor('bob reads the earlier messages', () =>
    clients.bob.contiguousThrough(ca) >= base[0] + ha && clients.bob.contiguousThrough(cc) >= base[1] + hc);
  await waitFor("bob's acks clear his pending rows", async () => (await pendingForBob()) === 0);

  story.phase = 'offline';
  setStatus('offline', 'bob closes the app. alice and carol keep writing…');
  await setBobOnline(false);
  // Until the pushes are in, the story needs bob offline.
  $('#bob-online').disabled = true;
  await waitFor('bob leaves the registry', async () => (await getJson('/_local/registry/bob')) === null);
  for (const body of ALICE_SAYS) {
    await clients.alice.send(ca, body);
    await sleep(120);
  }
  for (const body of CAROL_SAYS) {
    await clients.carol.send(cc, body);
    await sleep(120);
  }
  const last = new Map([[ca, clients.alice.contiguousThrough(ca)], [cc, clients.carol.contiguousThrough(cc)]]);
  await waitFor('the pushes reach bob\'s phone', async () => {
    await pollPushes();
    return [...last].every(([id, seq]) => bob.banners.get(id)?.seq === seq);
  });
  story.phase = 'offline-banners';
  $('#bob-online').disabled = false;
  setStatus('offline-banners', "bob's phone shows one banner per conversation, the latest. Flip bob's switch to open the app.");
  $('#bob-switch').classList.add('nudge');
}

function fail(e) {
  console.error(e);
  setStatus('error', `error: ${e?.message ?? e}`);
}

setup().catch(fail);
