// Courier's client for browsers and Node.js: an ES module with no dependencies.
//
// The server's half of the reconnect flow is only safe with a client that keeps
// its half (docs/architecture.md: the reconnect flow, step 4, and the delivery rules). This module is that half, the same rules as
// the Rust client (clients/rust) in the same three layers:
//
// - `Timeline`: one conversation in seq order, duplicates dropped by seq, the
//   contiguous prefix, the holes. Pure.
// - `Session`: the protocol rules as a state machine with no I/O and no clock
//   of its own (every method takes `now` in ms): the outbox of sends retried
//   with the same client_msg_id until `sent` (those the gateway or the server
//   would refuse for their size refused at once), coalesced acks of the contiguous
//   prefix, range syncs for holes and `more`, where history starts under
//   retention, the full sync when `caught_up` is late, receipts, replies
//   matched to requests by request_id. The unit tests drive it directly.
// - `CourierClient`: the socket. It opens `url?token=…&device=…`, feeds frames to the
//   session and sends what it answers, ticks its timers, sends a heartbeat
//   inside API Gateway's idle timeout, and reconnects with backoff and jitter.
//   It takes any WHATWG-style WebSocket constructor (the browser's, Node 22's
//   global, or the `ws` package's on Node 20).
//
// Types are in courier.d.ts beside this file.

/** Timings (ms) and sizes of the protocol rules; every one can be overridden. */
export const DEFAULT_TUNING = Object.freeze({
  /** Send a full `sync` when no `caught_up` came this long after opening. */
  caughtUpTimeout: 4000,
  /** Resend an unanswered `sendMessage` (same client_msg_id) after this long. */
  sendRetry: 3000,
  /** Ask for a hole once it has been open this long: a live message that
   *  overtook a catch-up frame opens a hole that closes by itself. */
  holeGrace: 500,
  /** `limit` of range syncs. */
  syncLimit: 200,
  /** A range sync with no `synced`/`more`/fill after this long may be resent. */
  syncTimeout: 5000,
  /** Acks are gathered this long, then sent as one frame. */
  ackDelay: 100,
  /** Send a `ping` when nothing was sent for this long (API Gateway closes a
   *  connection idle for 10 minutes). */
  heartbeat: 5 * 60 * 1000,
  /** No frame at all this long after a heartbeat: the connection is dead
   *  (a half-open mobile socket), reconnect. */
  pongTimeout: 20000,
  /** Reconnect backoff: first delay and cap, equal jitter in between. */
  backoffBase: 200,
  backoffMax: 10000,
  /** Cap of the doubling wait between repeats of one unanswered send, range
   *  sync or full sync (sendRetry, syncTimeout and caughtUpTimeout are the
   *  first waits): a server short of capacity is not answered with more of
   *  the same load. */
  retryMax: 60000,
  /** A handshake not done in this long is abandoned and retried. */
  connectTimeout: 10000,
  /** How long createConversation/registerDevice/ping wait for their reply. */
  requestTimeout: 30000,
  /** Timer resolution of the client. */
  tick: 50,
  /** The largest text frame this client sends, in UTF-8 bytes of the encoded
   *  JSON: API Gateway closes the socket with 1009 on a client frame over
   *  32 KB. A larger send or request is rejected at once with
   *  `payload_too_large`. */
  maxFrameBytes: 32 * 1024,
  /** Must equal the server's MAX_BODY_BYTES: a send whose body is over this
   *  many UTF-8 bytes is rejected at once with `payload_too_large`, as the
   *  server would reject it. Larger than the server's, the server refuses
   *  instead (a round trip); smaller, the client refuses what it accepts. */
  maxBodyBytes: 16 * 1024,
  /** Must equal the server's FRAME_BYTES: a send whose message, as the
   *  server encodes it in a `messages` frame (`messageFrameBytes`), is over
   *  this is rejected at once with `payload_too_large`, as the server would
   *  reject it. */
  maxMessageFrameBytes: 32 * 1024,
});

/** A socket closed this soon (ms) after a send went out, with nothing
 *  received since, counts against that send; twice in a row fails it. */
const QUICK_DROP = 1000;

/** The UTF-8 byte length of a text frame: what it weighs on the wire. */
export function frameBytes(text) {
  let n = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n += 4;
        i += 1;
      } else n += 3;
    } else n += 3; // a lone surrogate goes out as U+FFFD
  }
  return n;
}

/** The longest user id the server accepts (courier-core's UserId::MAX_LEN;
 *  ids are ASCII, so bytes and characters alike). */
export const MAX_USER_ID_BYTES = 128;

/** The bytes of a one-message `messages` frame besides the JSON text of the
 *  conversation id, the sender's id and the body: the frame's own keys and
 *  punctuation, and the fields the server fills when it stores the message at
 *  their widest (`seq` u64::MAX and `sent_at` i64::MIN, 20 characters each,
 *  `message_id` a 36-character UUID), as courier-core's `worst_frame_len`
 *  counts them. */
const MESSAGE_FRAME_OVERHEAD = 190;

/** Control characters JSON writes as a two-character escape (`\b \f \n \r
 *  \t`); the others below U+0020 are `\u00XX`. */
const SHORT_ESCAPES = new Set([0x08, 0x0c, 0x0a, 0x0d, 0x09]);

/** The UTF-8 bytes of `text` inside a JSON string, escaped as the server's
 *  serializer (serde_json) escapes it: `"` `\` and the short escapes 2
 *  bytes, other control characters 6, anything else its UTF-8 bytes. */
function escapedBytes(text) {
  let escapes = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c === 0x22 || c === 0x5c || SHORT_ESCAPES.has(c)) escapes += 1;
    else if (c < 0x20) escapes += 5;
  }
  return frameBytes(text) + escapes;
}

/**
 * The length the server gives the `messages` frame that would carry this
 * message alone, which it refuses over FRAME_BYTES (`maxMessageFrameBytes`).
 * `userId` undefined or null: measured with the longest user id the server
 * allows, so the measure is never below the server's.
 */
export function messageFrameBytes(conversationId, userId, body) {
  const sender = userId === undefined || userId === null ? MAX_USER_ID_BYTES : escapedBytes(userId);
  return MESSAGE_FRAME_OVERHEAD + escapedBytes(conversationId) + sender + escapedBytes(body);
}

/** `text` with each lone surrogate replaced by U+FFFD. JSON.stringify
 *  writes a lone surrogate as an escape (`\ud83d`) that the server's JSON
 *  parser refuses with a `bad_request` naming no client_msg_id, so nothing
 *  would ever answer the send and it would be resent forever; U+FFFD is
 *  what a WebSocket itself sends for one, and the server stores it. */
function wellFormed(text) {
  let out = '';
  let from = 0;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff && i + 1 < text.length) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        i += 1;
        continue;
      }
    }
    out += `${text.slice(from, i)}\ufffd`;
    from = i + 1;
  }
  return from === 0 ? text : out + text.slice(from);
}

/** Only White_Space characters, as Rust's `char::is_whitespace` has them
 *  (the server's `trim`; JavaScript's differs on U+0085 and U+FEFF). */
const BLANK = /^[\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;

/** Each size limit: the error field of its measure, and what it measures. */
const MEASURES = {
  maxFrameBytes: ['frameBytes', 'frame'],
  maxBodyBytes: ['bodyBytes', 'body'],
  maxMessageFrameBytes: ['messageFrameBytes', 'message as encoded in its messages frame'],
};

/** A `payload_too_large` refusal: `bytes`, by the measure of the tuning
 *  `limitName`, is over its value `limit`. */
function tooLarge(limitName, bytes, limit, details = {}) {
  const [field, what] = MEASURES[limitName];
  return new CourierError('payload_too_large', `${what} is ${bytes} bytes, over the ${limit}-byte limit (${limitName})`, {
    limitName,
    [field]: bytes,
    limit,
    ...details,
  });
}

/**
 * The refusal the server would answer this send with, by its own measures
 * (courier-core's `send_message`: the decoded body, then the message's frame), or
 * null: sending it would only fetch that refusal.
 */
function sizeRefusal(tuning, conversationId, userId, body) {
  // The server's bad_request (an empty body), whatever its size.
  if (BLANK.test(body)) return null;
  const bodyBytes = frameBytes(body);
  if (bodyBytes > tuning.maxBodyBytes) return tooLarge('maxBodyBytes', bodyBytes, tuning.maxBodyBytes);
  const bytes = messageFrameBytes(conversationId, userId, body);
  if (bytes > tuning.maxMessageFrameBytes) return tooLarge('maxMessageFrameBytes', bytes, tuning.maxMessageFrameBytes);
  return null;
}

/** Most entries one `ack` frame may carry (the server refuses more). */
export const MAX_ACKS_PER_FRAME = 100;

/** Error codes after which resending the same frame cannot succeed. */
export function isPermanent(code) {
  return code !== 'internal' && code !== 'rate_limited';
}

/** An error the server answered with, or a request that got no answer. */
export class CourierError extends Error {
  /**
   * @param {string} code a protocol error code, or `timeout`, `closed`,
   *   `handshake_refused`, `unreachable`
   * @param {string} message
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'CourierError';
    this.code = code;
    Object.assign(this, details);
  }
}

/**
 * Equal jitter: half the exponential delay, plus a random part of the other
 * half, so a fleet of clients dropped at once does not come back at once.
 */
export function backoff(tuning, attempt, random = Math.random) {
  return equalJitter(Math.min(tuning.backoffBase * 2 ** Math.min(attempt, 16), tuning.backoffMax), random);
}

/** Half of `exp` fixed, plus a random part of the other half. */
function equalJitter(exp, random) {
  const half = exp / 2;
  return Math.round(half + random() * half);
}

/**
 * The wait after the `attempt`-th (1-based) unanswered try: `first` the first
 * time, doubling after, capped at `tuning.retryMax`; equal jitter from the
 * second attempt on.
 */
export function retryWait(first, attempt, tuning, random = Math.random) {
  if (attempt <= 1) return first;
  return equalJitter(Math.min(first * 2 ** Math.min(attempt - 1, 16), Math.max(tuning.retryMax, first)), random);
}

/** A v4 UUID; crypto.randomUUID exists only in secure contexts. */
export function newClientMsgId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const b = new Uint8Array(16);
  c.getRandomValues(b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The `sub` of a JWT, or undefined (the token is not checked here). */
export function tokenSubject(token) {
  try {
    const part = String(token).split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), '='));
    const json = new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
    const sub = JSON.parse(json).sub;
    return typeof sub === 'string' ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** `ws://host:port` + token → `ws://host:port/?token=…` (a handshake needs a path). */
export function withToken(url, token) {
  const rest = url.includes('://') ? url.slice(url.indexOf('://') + 3) : url;
  const slash = rest.includes('/') ? '' : '/';
  const sep = url.includes('?') ? '&' : '?';
  return `${url}${slash}${sep}token=${encodeURIComponent(token)}`;
}

/** What a device id may be (courier-core's DeviceId): 1–64 characters of
 *  `A-Z a-z 0-9 . _ -`. */
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

/** Where a browser client keeps its device id (`localStorage`). */
export const DEVICE_ID_STORAGE_KEY = 'courier.device_id';

/** Whether `id` is a device id the server accepts. */
export function isValidDeviceId(id) {
  return typeof id === 'string' && DEVICE_ID_PATTERN.test(id);
}

/** `id`, or a CourierError(`invalid_device_id`) thrown at once. */
export function checkDeviceId(id, what = 'device id') {
  if (!isValidDeviceId(id)) {
    throw new CourierError(
      'invalid_device_id',
      `${what} must be 1–64 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(String(id).slice(0, 80))})`,
      { deviceId: id },
    );
  }
  return id;
}

/** A new random device id (a v4 UUID: 36 characters, all valid). */
export function newDeviceId() {
  return newClientMsgId();
}

/** `globalThis.localStorage` where there is one and it may be used (it
 *  throws in some sandboxed frames and with storage disabled), else null. */
function defaultStorage() {
  try {
    const s = globalThis.localStorage;
    return s && typeof s.getItem === 'function' && typeof s.setItem === 'function' ? s : null;
  } catch {
    return null;
  }
}

/**
 * This client's device id: `deviceId` if given (checked, never stored);
 * else the one kept in `storage` under `key`, or a new one put there (a
 * stored value that is not a valid id is replaced); else `null`: no
 * `device=` parameter, and the server counts the connection as the user's
 * `default` device.
 */
export function resolveDeviceId({ deviceId, storage, key = DEVICE_ID_STORAGE_KEY } = {}) {
  if (deviceId !== undefined && deviceId !== null) return checkDeviceId(deviceId, 'deviceId');
  if (!storage) return null;
  let kept = null;
  try {
    kept = storage.getItem(key);
  } catch {
    kept = null;
  }
  if (isValidDeviceId(kept)) return kept;
  const fresh = newDeviceId();
  try {
    storage.setItem(key, fresh);
  } catch {
    // Storage full or denied: this id lasts as long as the client.
  }
  return fresh;
}

/**
 * The connect URL: `url` with `token=`, and `device=` and
 * `conversation_id=` when given (a handshake needs a path).
 */
export function connectUrl(url, token, { deviceId = null, conversationId = null } = {}) {
  let out = withToken(url, token);
  if (deviceId !== null && deviceId !== undefined) out += `&device=${encodeURIComponent(deviceId)}`;
  if (conversationId !== null && conversationId !== undefined) {
    out += `&conversation_id=${encodeURIComponent(conversationId)}`;
  }
  return out;
}

/** The limit a `too_many_devices` message names (`MAX_DEVICES = 8`, or
 *  `has 8 linked devices`), or null. */
export function deviceLimitOf(message) {
  const m = /MAX_DEVICES\s*=\s*(\d+)/.exec(String(message)) ?? /(\d+) linked devices/.exec(String(message));
  return m ? Number(m[1]) : null;
}

function fromWire(conversationId, m) {
  return {
    conversationId,
    seq: m.seq,
    messageId: m.message_id,
    senderId: m.sender_id,
    body: m.body,
    sentAt: m.sent_at,
  };
}

// ------------------------------------------------------------------ Timeline

/**
 * One conversation's messages in seq order.
 *
 * Messages arrive from three directions that race each other (catch-up
 * frames, live posts, range `sync` replies) and any may repeat another, so the
 * timeline is keyed by seq: a second copy of a seq is dropped, never shown
 * twice. Seqs have no holes on the server, so a hole here is a message still
 * on its way or lost in transit. Acks only ever cover the contiguous prefix:
 * acking past a hole would tell the server to forget a message the user never
 * got.
 */
export class Timeline {
  #bySeq = new Map();
  #ordered = [];
  #contiguous = 0;
  #acked = 0;
  #holeSince = null;
  #duplicates = 0;

  /**
   * Places `message` at its seq. A seq already held is a duplicate and is
   * dropped (the first copy wins: copies of one seq are the same message).
   * @returns {'new'|'duplicate'}
   */
  insert(message, now = 0) {
    const seq = message.seq;
    if (!Number.isSafeInteger(seq) || seq < 1 || seq <= this.#contiguous || this.#bySeq.has(seq)) {
      this.#duplicates += 1;
      return 'duplicate';
    }
    this.#bySeq.set(seq, message);
    // Binary insertion: arrivals are nearly always at the end.
    let lo = 0;
    let hi = this.#ordered.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#ordered[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    this.#ordered.splice(lo, 0, message);
    while (this.#bySeq.has(this.#contiguous + 1)) this.#contiguous += 1;
    if (this.hasHole()) {
      if (this.#holeSince === null) this.#holeSince = now;
    } else {
      this.#holeSince = null;
    }
    return 'new';
  }

  /**
   * Counts every seq up to `seq` as held, present here or not: an app that
   * keeps its messages in its own storage says where it stands, so a fresh
   * client does not pull the whole history to close the gap below.
   */
  holdThrough(seq, now = 0) {
    if (!Number.isSafeInteger(seq) || seq <= this.#contiguous) return;
    this.#contiguous = seq;
    while (this.#bySeq.has(this.#contiguous + 1)) this.#contiguous += 1;
    this.#holeSince = this.hasHole() ? (this.#holeSince ?? now) : null;
  }

  /**
   * The server says history starts at `seq` (`history_starts`: message
   * retention deleted every seq below it). Those seqs will never come, so
   * they count as held: otherwise the prefix could never be contiguous, never
   * be acked, and the hole below would be asked for forever.
   */
  historyStartsAt(seq, now = 0) {
    if (!Number.isSafeInteger(seq) || seq < 1) return;
    this.holdThrough(seq - 1, now);
  }

  /** Every seq in 1..=this is held. */
  get contiguousThrough() {
    return this.#contiguous;
  }

  get highest() {
    return this.#ordered.length ? this.#ordered[this.#ordered.length - 1].seq : 0;
  }

  hasHole() {
    return this.highest > this.#contiguous;
  }

  /** The missing seqs past the contiguous prefix, as inclusive [from, to] ranges. */
  holes() {
    const out = [];
    let expected = this.#contiguous + 1;
    for (const m of this.#ordered) {
      if (m.seq <= this.#contiguous) continue;
      if (m.seq > expected) out.push([expected, m.seq - 1]);
      expected = m.seq + 1;
    }
    return out;
  }

  /** A hole that has been open at least `grace` ms: time to ask for it. */
  holeOlderThan(grace, now) {
    return this.#holeSince !== null && now - this.#holeSince >= grace;
  }

  /** Restarts the grace period (a sync for the hole was just sent). */
  holeRequested(now) {
    if (this.hasHole()) this.#holeSince = now;
  }

  /** The seq to acknowledge, if the contiguous prefix grew past the last ack. */
  ackDue() {
    return this.#contiguous > this.#acked ? this.#contiguous : null;
  }

  /** The ack cursor never moves down. */
  markAcked(seq) {
    if (seq > this.#acked) this.#acked = seq;
  }

  get acked() {
    return this.#acked;
  }

  get duplicates() {
    return this.#duplicates;
  }

  get size() {
    return this.#ordered.length;
  }

  get(seq) {
    return this.#bySeq.get(seq);
  }

  /** The messages in seq order (a copy). */
  messages() {
    return this.#ordered.slice();
  }
}

// ------------------------------------------------------------------- Session

/**
 * One user's protocol state, without I/O. Methods that react to something
 * return the text frames to send; events for the app go to `emit`.
 */
export class Session {
  /**
   * @param {{me?: string, tuning?: object, emit?: (type: string, detail: object) => void}} options
   */
  constructor({ me, tuning = {}, emit = () => {}, random = Math.random } = {}) {
    /** This user's id: the sender of our own messages, and the one their
     *  `messages` frame is measured with (while undefined, the longest). */
    this.me = me;
    this.tuning = { ...DEFAULT_TUNING, ...tuning };
    this.emit = emit;
    this.random = random;
    this.timelines = new Map();
    /** client_msg_id → {conversationId, body, due, attempts, waiters} */
    this.outbox = new Map();
    /** request_id → {frame, sent, resolve, reject} */
    this.requests = new Map();
    /** conversation → {due, attempts} of its unanswered range sync */
    this.syncsInFlight = new Map();
    /** full syncs sent since the last caught_up for want of one */
    this.fullSyncs = 0;
    this.ackWanted = new Map();
    this.ackAt = null;
    this.caughtUpDeadline = null;
    this.openedAt = null;
    this.open = false;
    this.opens = 0;
    this.caughtUpCount = 0;
    this.receipts = new Map();
    /** [client_msg_id, when] of sends that went out since the last frame
     *  received: the ones to blame if the socket closes on them. */
    this.suspects = [];
    /** The error that ended this device's use of the server
     *  (`too_many_devices`): the client must not reconnect on its own. */
    this.fatal = null;
  }

  timeline(conversationId) {
    let t = this.timelines.get(conversationId);
    if (!t) {
      t = new Timeline();
      this.timelines.set(conversationId, t);
    }
    return t;
  }

  receipt(conversationId, userId) {
    return this.receipts.get(`${conversationId}\u0000${userId}`) ?? 0;
  }

  get duplicates() {
    let n = 0;
    for (const t of this.timelines.values()) n += t.duplicates;
    return n;
  }

  // ---------------------------------------------------------- requests

  /** Queues a message; the frame to send now, if open. */
  queueSend(conversationId, clientMsgId, body, waiter, now) {
    let o = this.outbox.get(clientMsgId);
    if (!o) {
      const text = wellFormed(body);
      const bytes = frameBytes(sendFrame(conversationId, clientMsgId, text));
      // The socket's limit first: over it, the frame would close the socket
      // (1009) instead of being answered, and again on every resend. Then
      // the server's measures. Either way: fail it now, never queue it.
      const refused =
        bytes > this.tuning.maxFrameBytes
          ? tooLarge('maxFrameBytes', bytes, this.tuning.maxFrameBytes)
          : sizeRefusal(this.tuning, conversationId, this.me, text);
      if (refused) {
        refused.clientMsgId = clientMsgId;
        waiter?.reject(refused);
        return null;
      }
      o = { conversationId, body: text, due: null, attempts: 0, waiters: [], bytes, quickDrops: 0 };
      this.outbox.set(clientMsgId, o);
    }
    if (waiter) o.waiters.push(waiter);
    if (!this.open) return null;
    this.attempted(o, now);
    this.suspects.push([clientMsgId, now]);
    return sendFrame(o.conversationId, clientMsgId, o.body);
  }

  /** Counts a send attempt and schedules its repeat. */
  attempted(o, now) {
    o.attempts += 1;
    o.due = now + retryWait(this.tuning.sendRetry, o.attempts, this.tuning, this.random);
  }

  /** Registers a request answered by a frame echoing `request_id`; the frame
   *  to send now, if open (else it goes out on the next open). */
  queueRequest(requestId, frame, waiter) {
    const text = JSON.stringify({ ...frame, request_id: requestId });
    const bytes = frameBytes(text);
    if (bytes > this.tuning.maxFrameBytes) {
      waiter.reject(tooLarge('maxFrameBytes', bytes, this.tuning.maxFrameBytes, { requestId }));
      return null;
    }
    this.requests.set(requestId, { text, sent: this.open, ...waiter });
    return this.open ? text : null;
  }

  /** Forgets a request (its caller stopped waiting). */
  dropRequest(requestId) {
    this.requests.delete(requestId);
  }

  /** A full `sync` frame; restarts the wait for `caught_up`. */
  fullSync(now) {
    this.caughtUpDeadline = now + this.tuning.caughtUpTimeout;
    return JSON.stringify({ action: 'sync' });
  }

  // ------------------------------------------------------ socket events

  /** The socket opened: resend what is unanswered, wait for `caught_up`. */
  onOpen(now) {
    this.open = true;
    this.opens += 1;
    this.openedAt = now;
    this.fatal = null;
    this.syncsInFlight.clear();
    this.caughtUpDeadline = now + this.tuning.caughtUpTimeout;
    this.fullSyncs = 0;
    const out = [];
    this.suspects = [];
    for (const [cmid, o] of this.outbox) {
      this.attempted(o, now);
      this.suspects.push([cmid, now]);
      out.push(sendFrame(o.conversationId, cmid, o.body));
    }
    for (const r of this.requests.values()) {
      if (!r.sent) {
        r.sent = true;
        out.push(r.text);
      }
    }
    return out;
  }

  /**
   * The socket closed with `code` at `now` (call before `onClose`). A close
   * with 1009 (message too big) fails the largest send that went out since
   * the last frame received: resending it would close the socket again,
   * forever. So does a second close in a row right after it was sent, with
   * nothing received in between.
   */
  onDropped(code, now) {
    const suspects = this.suspects;
    this.suspects = [];
    let worst = null;
    for (const [cmid, at] of suspects) {
      const o = this.outbox.get(cmid);
      if (o && (worst === null || o.bytes > worst.o.bytes)) worst = { cmid, at, o };
    }
    if (worst === null) return;
    const { cmid, at, o } = worst;
    if (now - at <= QUICK_DROP) o.quickDrops += 1;
    if (code === 1009 || (now - at <= QUICK_DROP && o.quickDrops >= 2)) {
      this.outbox.delete(cmid);
      const err = tooLarge('maxFrameBytes', o.bytes, this.tuning.maxFrameBytes, { clientMsgId: cmid, closeCode: code });
      for (const w of o.waiters) w.reject(err);
    }
  }

  /** The socket closed: requests sent on it will get no reply. Sends stay
   *  in the outbox (their retry is safe); unsent requests wait for the next
   *  open. */
  onClose() {
    this.open = false;
    this.caughtUpDeadline = null;
    for (const [id, r] of this.requests) {
      if (r.sent) {
        this.requests.delete(id);
        r.reject(new CourierError('closed', 'the connection closed before the reply'));
      }
    }
  }

  /**
   * The server refused this device for good (`too_many_devices`): every
   * request fails with `err`, which the app hears as an `error` event.
   * Sends keep their place in the outbox: after a device is unlinked (from
   * another device) a later `connect()` sends them.
   */
  onFatal(err) {
    this.fatal = err;
    for (const r of this.requests.values()) r.reject(err);
    this.requests.clear();
    this.emit('error', err);
  }

  /** Fails every waiter: the client is shutting down. */
  closeAll() {
    this.onClose();
    const closed = () => new CourierError('closed', 'the client is closed');
    for (const r of this.requests.values()) r.reject(closed());
    this.requests.clear();
    for (const o of this.outbox.values()) for (const w of o.waiters) w.reject(closed());
    this.outbox.clear();
  }

  /** One text frame from the server; the frames to send in answer. */
  onText(raw, now) {
    // Something came back: the connection works, so the sends that went out
    // before are not to blame for a later close.
    this.suspects = [];
    for (const o of this.outbox.values()) o.quickDrops = 0;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return [];
    }
    // API Gateway's own frames ({"message":"Internal server error",…}) and
    // anything newer than this client: the retries cover what they were about.
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return [];
    return this.onFrame(frame, now);
  }

  onFrame(f, now) {
    const out = [];
    switch (f.type) {
      case 'messages': {
        if (typeof f.conversation_id !== 'string' || !Array.isArray(f.messages)) break;
        const cid = f.conversation_id;
        const t = this.timeline(cid);
        let redelivered = false;
        for (const m of f.messages) {
          if (!m || typeof m !== 'object') continue;
          const msg = fromWire(cid, m);
          if (t.insert(msg, now) === 'new') this.emit('message', msg);
          else redelivered ||= msg.seq <= t.acked;
        }
        if (t.ackDue() !== null || (redelivered && t.contiguousThrough > 0)) {
          // A redelivery of what we acked means the ack was lost with its
          // connection and the pending row is still there: ack again.
          this.wantAck(cid, redelivered, now);
        }
        if (!t.hasHole()) this.syncsInFlight.delete(cid);
        if (this.tuning.ackDelay <= 0) out.push(...this.flushAcks());
        break;
      }
      case 'history_starts': {
        // Retention deleted the seqs below first_available_seq; it comes
        // before the conversation's messages, so a timeline is made for a
        // conversation not seen yet.
        const first = f.first_available_seq;
        if (typeof f.conversation_id !== 'string' || !Number.isSafeInteger(first) || first < 1) break;
        const cid = f.conversation_id;
        const t = this.timeline(cid);
        t.historyStartsAt(first, now);
        if (t.ackDue() !== null) this.wantAck(cid, false, now);
        if (!t.hasHole()) this.syncsInFlight.delete(cid);
        if (this.tuning.ackDelay <= 0) out.push(...this.flushAcks());
        break;
      }
      case 'more':
        // The catch-up cap (or a range limit) cut this conversation short.
        // An answer: the repeats of the last sync start over. The next sync
        // goes on from next_seq, not from the contiguous end: below a hole
        // that never fills (expired messages) that would fetch this same
        // page again, and get this same `more`, forever. The hole is the
        // hole-fill timer's.
        if (typeof f.conversation_id === 'string') {
          const cid = f.conversation_id;
          const from = Number.isSafeInteger(f.next_seq) && f.next_seq >= 1 ? f.next_seq - 1 : 0;
          this.syncsInFlight.delete(cid);
          out.push(this.rangeSync(cid, now, Math.max(this.timeline(cid).contiguousThrough, from)));
        }
        break;
      case 'synced':
        this.syncsInFlight.delete(f.conversation_id);
        break;
      case 'caught_up': {
        this.caughtUpCount += 1;
        // `unreached`: the catch-up ran out of time for that many
        // conversations (nothing was cleared for them). Sync again soon,
        // later each time in a row it is cut short.
        const unreached = Number.isSafeInteger(f.unreached) && f.unreached > 0 ? f.unreached : 0;
        if (unreached === 0) {
          this.caughtUpDeadline = null;
          this.fullSyncs = 0;
        } else {
          const wait = retryWait(this.tuning.holeGrace, Math.max(this.fullSyncs, 1), this.tuning, this.random);
          this.caughtUpDeadline = now + wait;
        }
        this.emit('caughtUp', {
          conversations: f.conversations,
          messages: f.messages,
          unreached,
          afterOpenMs: this.openedAt === null ? null : now - this.openedAt,
        });
        break;
      }
      case 'sent':
        this.onSent(f, now);
        if (this.tuning.ackDelay <= 0 && this.ackAt !== null) out.push(...this.flushAcks());
        break;
      case 'receipt': {
        const key = `${f.conversation_id}\u0000${f.user_id}`;
        this.receipts.set(key, Math.max(this.receipts.get(key) ?? 0, f.delivered_through_seq));
        this.emit('receipt', {
          conversationId: f.conversation_id,
          userId: f.user_id,
          deliveredThroughSeq: f.delivered_through_seq,
        });
        break;
      }
      case 'conversation':
        if (typeof f.conversation_id === 'string') this.timeline(f.conversation_id);
        this.answer(f.request_id, f);
        break;
      case 'device_registered':
      case 'pong':
      case 'devices':
      case 'device_unlinked':
      case 'conversations':
        this.answer(f.request_id, f);
        break;
      case 'error':
        this.onError(f);
        break;
      default:
        break;
    }
    return out;
  }

  answer(requestId, frame) {
    const r = requestId === undefined ? undefined : this.requests.get(requestId);
    if (!r) return;
    this.requests.delete(requestId);
    r.resolve(frame);
  }

  onSent(f, now) {
    const o = this.outbox.get(f.client_msg_id);
    if (!o) return; // a repeated `sent` for a retry already answered
    this.outbox.delete(f.client_msg_id);
    const sent = {
      conversationId: f.conversation_id,
      clientMsgId: f.client_msg_id,
      seq: f.seq,
      sentAt: f.sent_at,
    };
    // Our own message takes its place at its seq. The server keeps a pending
    // row for the sender too (so the user's other devices get the message),
    // and only this device's ack clears it for this device: the message
    // counts as held here, and the contiguous prefix through it is acked like
    // any other. (A copy that arrived first, by catch-up, is the same seq.)
    const t = this.timeline(f.conversation_id);
    const mine = {
      conversationId: f.conversation_id,
      seq: f.seq,
      messageId: f.client_msg_id,
      senderId: this.me,
      body: o.body,
      sentAt: f.sent_at,
    };
    if (t.insert(mine, now) === 'new') this.emit('message', mine);
    if (t.ackDue() !== null) this.wantAck(f.conversation_id, false, now);
    for (const w of o.waiters) w.resolve(sent);
  }

  onError(f) {
    if (f.code === 'too_many_devices') {
      this.onFatal(
        new CourierError('too_many_devices', f.message, {
          limit: deviceLimitOf(f.message),
          fatal: true,
          requestId: f.request_id,
        }),
      );
      return;
    }
    if (f.code === 'device_unlinked') {
      // Another device of the user unlinked this one; the server closes
      // the socket next. Reconnecting would link it again.
      this.onFatal(new CourierError('device_unlinked', f.message, { fatal: true }));
      return;
    }
    const err = new CourierError(f.code, f.message, {
      clientMsgId: f.client_msg_id,
      requestId: f.request_id,
    });
    if (typeof f.client_msg_id === 'string' && this.outbox.has(f.client_msg_id)) {
      if (isPermanent(f.code)) {
        const o = this.outbox.get(f.client_msg_id);
        this.outbox.delete(f.client_msg_id);
        for (const w of o.waiters) w.reject(err);
      }
      // A transient one (internal, rate_limited): the retry timer resends.
      return;
    }
    if (f.request_id !== undefined && this.requests.has(f.request_id)) {
      const r = this.requests.get(f.request_id);
      this.requests.delete(f.request_id);
      r.reject(err);
      return;
    }
    this.emit('error', err);
  }

  /** A range sync from `afterSeq` (default: the contiguous end). Only one
   *  from the contiguous end asks for the hole above it, so only that one
   *  restarts the hole's grace. */
  rangeSync(conversationId, now, afterSeq = this.timeline(conversationId).contiguousThrough) {
    const attempts = (this.syncsInFlight.get(conversationId)?.attempts ?? 0) + 1;
    const due = now + retryWait(this.tuning.syncTimeout, attempts, this.tuning, this.random);
    this.syncsInFlight.set(conversationId, { due, attempts });
    const t = this.timeline(conversationId);
    if (afterSeq === t.contiguousThrough) t.holeRequested(now);
    return JSON.stringify({
      action: 'sync',
      conversation_id: conversationId,
      after_seq: afterSeq,
      limit: this.tuning.syncLimit,
    });
  }

  /** Gathers an ack of the conversation's contiguous end (`force`: even if
   *  acked already), sent after `ackDelay` with the others. */
  wantAck(conversationId, force, now) {
    this.ackWanted.set(conversationId, this.ackWanted.get(conversationId) || force);
    if (this.ackAt === null) this.ackAt = now + this.tuning.ackDelay;
  }

  /** The gathered acks, at most MAX_ACKS_PER_FRAME per frame. */
  flushAcks() {
    this.ackAt = null;
    const acks = [];
    for (const [cid, force] of this.ackWanted) {
      const t = this.timeline(cid);
      const seq = t.contiguousThrough;
      if (seq > 0 && (seq > t.acked || force)) {
        t.markAcked(seq);
        acks.push({ conversation_id: cid, seq });
      }
    }
    this.ackWanted.clear();
    const out = [];
    for (let i = 0; i < acks.length; i += MAX_ACKS_PER_FRAME) {
      out.push(JSON.stringify({ action: 'ack', acks: acks.slice(i, i + MAX_ACKS_PER_FRAME) }));
    }
    return out;
  }

  /** Time passed: coalesced acks, send retries, the caught_up fallback, hole fills. */
  onTick(now) {
    const out = [];
    if (!this.open) return out;
    if (this.ackAt !== null && now >= this.ackAt) out.push(...this.flushAcks());
    for (const [cmid, o] of this.outbox) {
      if (o.due === null || now >= o.due) {
        this.attempted(o, now);
        this.suspects.push([cmid, now]);
        out.push(sendFrame(o.conversationId, cmid, o.body));
      }
    }
    if (this.caughtUpDeadline !== null && now >= this.caughtUpDeadline) {
      out.push(JSON.stringify({ action: 'sync' }));
      this.fullSyncs += 1;
      this.caughtUpDeadline =
        now + retryWait(this.tuning.caughtUpTimeout, this.fullSyncs, this.tuning, this.random);
    }
    for (const [cid, t] of this.timelines) {
      if (!t.holeOlderThan(this.tuning.holeGrace, now)) continue;
      const inFlight = this.syncsInFlight.get(cid);
      if (inFlight === undefined || now >= inFlight.due) {
        out.push(this.rangeSync(cid, now));
      }
    }
    return out;
  }
}

function sendFrame(conversationId, clientMsgId, body) {
  return JSON.stringify({
    action: 'sendMessage',
    conversation_id: conversationId,
    client_msg_id: clientMsgId,
    body,
  });
}

// -------------------------------------------------------------- the client

const OPEN = 1;

/**
 * A Courier connection for one user, kept open until `close()`.
 *
 * Events (`on(type, fn)`): `message` (a message new to this client, in any
 * order across conversations, each conversation's in seq order once holes
 * fill: render from `timeline()`), `caughtUp`, `receipt`, `error` (an error
 * frame no request owns, or a refused handshake; `too_many_devices` is
 * fatal: the client goes offline and does not reconnect by itself), `state`
 * (`connecting`, `open`, `reconnecting`, `offline`, `closed`).
 *
 * Each client is one device of its user: it connects with `device=<id>`
 * (see `resolveDeviceId` for where the id comes from).
 */
export class CourierClient {
  #url;
  #token;
  #WebSocket;
  #random;
  #now;
  #listeners = new Map();
  #ws = null;
  #state = 'idle';
  #wanted = false;
  #attempt = 0;
  /** When the current socket opened, and whether it has worked (received a
   *  frame): only a connection that worked starts the backoff over. */
  #openedAt = 0;
  #healthy = false;
  #reconnectTimer = null;
  #opening = false;
  #connectTimer = null;
  #ticker = null;
  #lastSent = 0;
  #lastReceived = 0;
  #pingSentAt = null;
  #openWaiters = [];
  #nextRequest = 1;
  #deviceId;
  /** The app passed `deviceId`: never replaced by the client. */
  #deviceIdGiven;
  #storage;
  #deviceIdKey;
  /** The conversation the app was opened on, for the next socket only. */
  #openConversation = null;

  /**
   * @param {object} options
   * @param {string} options.url `ws://127.0.0.1:3001` or `wss://…/prod`
   * @param {string | (() => string | Promise<string>)} options.token a JWT, or a
   *   function called on every (re)connect for a fresh one
   * @param {string} [options.user] this user's id (default: the token's `sub`,
   *   once a token is fetched; pass it when the deployment's USER_ID_CLAIM is
   *   not `sub`). A message's frame is measured with it (`maxMessageFrameBytes`);
   *   before it is known, with the longest id the server allows
   *   (MAX_USER_ID_BYTES), so a send within that many bytes of the limit is
   *   refused a little early rather than sent to be refused.
   * @param {Function} [options.WebSocket] a WebSocket constructor (default:
   *   globalThis.WebSocket; on Node 20 pass the `ws` package's)
   * @param {object} [options.tuning] overrides of DEFAULT_TUNING
   * @param {string} [options.deviceId] this device's id (1–64 of
   *   `A-Z a-z 0-9 . _ -`); wins over the stored one, and is not stored.
   *   A bad one throws CourierError `invalid_device_id`.
   * @param {{getItem(k: string): string | null, setItem(k: string, v: string): void} | null} [options.storage]
   *   where the device id is kept when `deviceId` is not given (default:
   *   `localStorage` where there is one; `null` for none)
   * @param {string} [options.deviceIdKey] its key (`courier.device_id`)
   * @param {string} [options.openConversation] the conversation the app was
   *   opened on (a tapped notification): sent as `conversation_id=` on the
   *   first connection, so its catch-up goes first
   */
  constructor({
    url,
    token,
    user,
    WebSocket: Ctor,
    tuning,
    random = Math.random,
    now,
    deviceId,
    storage = defaultStorage(),
    deviceIdKey = DEVICE_ID_STORAGE_KEY,
    openConversation,
  } = {}) {
    if (typeof url !== 'string' || !url) throw new TypeError('url is required');
    if (token === undefined) throw new TypeError('token is required');
    this.#deviceId = resolveDeviceId({ deviceId, storage, key: deviceIdKey });
    this.#deviceIdGiven = deviceId !== undefined && deviceId !== null;
    this.#storage = storage;
    this.#deviceIdKey = deviceIdKey;
    this.#openConversation = openConversation ?? null;
    this.#url = url;
    this.#token = token;
    this.#WebSocket = Ctor ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== 'function') {
      throw new TypeError('no WebSocket: pass options.WebSocket (on Node 20, the ws package)');
    }
    this.#random = random;
    this.#now = now ?? (() => (globalThis.performance ? performance.now() : Date.now()));
    this.session = new Session({
      me: user,
      tuning,
      emit: (t, d) => this.#emit(t, d),
      random: this.#random,
    });
    this.tuning = this.session.tuning;
    /** The last handshake refusal's HTTP status, where the platform says it. */
    this.refusedStatus = null;
  }

  // ------------------------------------------------------------ events

  /** Subscribes; returns the function that unsubscribes. */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  #emit(type, detail) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        fn(detail);
      } catch (e) {
        // An app's listener must not break the protocol loop.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  #setState(state, detail = {}) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit('state', { state, ...detail });
  }

  get state() {
    return this.#state;
  }

  get user() {
    return this.session.me;
  }

  /** This device's id, or null when it names none (the server's `default`). */
  get deviceId() {
    return this.#deviceId;
  }

  /** The `too_many_devices` error that stopped this client, until the next
   *  `connect()`; else null. */
  get fatalError() {
    return this.session.fatal;
  }

  // ------------------------------------------------------- connection

  /**
   * Opens the connection, keeps it open from then on (reconnecting after any
   * drop), and resolves once a socket is open. Rejects on timeout, or at once
   * when the handshake is refused with 401/403 where the platform reports it
   * (Node; browsers hide the status); the client is then offline until the
   * next `connect()`. `openConversation`: as the constructor's option, for
   * the next socket that opens.
   */
  async connect({ timeout = this.tuning.connectTimeout, openConversation } = {}) {
    if (this.#state === 'closed') throw new CourierError('closed', 'the client is closed');
    if (openConversation !== undefined) this.#openConversation = openConversation;
    this.#wanted = true;
    if (this.#state === 'open') return;
    if (!this.#ws && !this.#opening && this.#reconnectTimer === null) {
      this.#attempt = 0;
      this.#open();
    }
    try {
      await this.#waitOpen(timeout);
    } catch (e) {
      if (this.#state !== 'open') this.goOffline();
      throw e;
    }
  }

  /** Closes the socket and stays offline until `connect()`. Sends keep their
   *  place in the outbox and go out on the next open. */
  goOffline() {
    if (this.#state === 'closed') return;
    this.#wanted = false;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#dropSocket(1000, 'offline');
    this.#setState('offline');
  }

  /** Stops for good: pending sends and requests are rejected. */
  close() {
    this.#wanted = false;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#dropSocket(1000, 'bye');
    this.session.closeAll();
    for (const w of this.#openWaiters.splice(0)) w.reject(new CourierError('closed', 'the client is closed'));
    this.#setState('closed');
  }

  #waitOpen(timeout) {
    return new Promise((resolve, reject) => {
      const w = { resolve, reject, timer: null };
      w.timer = setTimeout(() => {
        this.#openWaiters = this.#openWaiters.filter((x) => x !== w);
        reject(new CourierError('unreachable', `no open socket within ${timeout} ms`));
      }, timeout);
      const done = (fn) => (v) => {
        clearTimeout(w.timer);
        fn(v);
      };
      w.resolve = done(resolve);
      w.reject = done(reject);
      this.#openWaiters.push(w);
    });
  }

  async #open() {
    this.#setState(this.session.opens === 0 ? 'connecting' : 'reconnecting');
    this.#opening = true;
    let token;
    try {
      token = typeof this.#token === 'function' ? await this.#token() : this.#token;
    } catch (e) {
      this.#emit('error', new CourierError('unreachable', `token: ${e?.message ?? e}`));
      this.#scheduleReconnect();
      return;
    } finally {
      this.#opening = false;
    }
    if (!this.#wanted || this.#ws) return;
    if (this.session.me === undefined) this.session.me = tokenSubject(token);
    let ws;
    try {
      ws = new this.#WebSocket(
        connectUrl(this.#url, token, { deviceId: this.#deviceId, conversationId: this.#openConversation }),
      );
    } catch (e) {
      this.#emit('error', new CourierError('unreachable', String(e?.message ?? e)));
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#openedAt = 0;
    this.#healthy = false;
    this.#connectTimer = setTimeout(() => {
      if (this.#ws === ws && ws.readyState !== OPEN) {
        this.#dropSocket(4000, 'handshake timeout');
        this.#scheduleReconnect();
      }
    }, this.tuning.connectTimeout);
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      clearTimeout(this.#connectTimer);
      this.refusedStatus = null;
      // Opened on it: later connections are not "opened from a notification".
      this.#openConversation = null;
      const now = this.#now();
      // The backoff starts over once this connection proves it works (a
      // frame arrives, or it stays up a second), not on open: a connection
      // that dies at once (a frame the gateway refuses) keeps backing off.
      this.#openedAt = now;
      this.#healthy = false;
      this.#lastSent = now;
      this.#lastReceived = now;
      this.#pingSentAt = null;
      this.#setState('open');
      this.#sendAll(this.session.onOpen(now));
      this.#ticker = setInterval(() => this.#tick(), this.tuning.tick);
      for (const w of this.#openWaiters.splice(0)) w.resolve();
    };
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      const now = this.#now();
      this.#lastReceived = now;
      this.#pingSentAt = null;
      if (!this.#healthy) {
        this.#healthy = true;
        this.#attempt = 0;
      }
      if (typeof ev.data !== 'string') return; // the protocol is text frames only
      this.#sendAll(this.session.onText(ev.data, now));
      if (this.session.fatal && this.#ws === ws) this.#stopFatal(this.session.fatal);
    };
    ws.onerror = (ev) => {
      if (this.#ws !== ws) return;
      // Browsers hide why a handshake failed; the ws package says it.
      const text = String(ev?.message ?? ev?.error?.message ?? '');
      const m = /Unexpected server response: (\d{3})/.exec(text);
      if (m) {
        this.refusedStatus = Number(m[1]);
        const err = new CourierError('handshake_refused', `handshake refused with HTTP ${m[1]}`, {
          status: this.refusedStatus,
        });
        this.#emit('error', err);
        if (this.refusedStatus === 401 || this.refusedStatus === 403) {
          for (const w of this.#openWaiters.splice(0)) w.reject(err);
        }
      }
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      const now = this.#now();
      if (this.#openedAt > 0 && !this.#healthy && now - this.#openedAt >= QUICK_DROP) {
        this.#attempt = 0;
      }
      this.session.onDropped(ev?.code, now);
      this.#socketGone();
      if (this.#wanted) this.#scheduleReconnect({ code: ev?.code });
    };
  }

  /** `too_many_devices`: the server closes this socket and would refuse
   *  every reconnect the same way. Stop here, offline, until the app calls
   *  `connect()` again (after unlinking a device from another one).
   *  `device_unlinked`: the same, and the kept device id is forgotten, so a
   *  later `connect()` links this installation as a new device. */
  #stopFatal(err) {
    if (err.code === 'device_unlinked' && !this.#deviceIdGiven) {
      const fresh = newDeviceId();
      try {
        this.#storage?.setItem(this.#deviceIdKey, fresh);
      } catch {
        // Storage full or denied: this id lasts as long as the client.
      }
      this.#deviceId = fresh;
    }
    this.#wanted = false;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#dropSocket(1000, err.code);
    this.#setState('offline', { reason: err.code, error: err });
  }

  /** Closes the current socket without waiting for its close event. */
  #dropSocket(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    this.#socketGone();
    try {
      if (ws.readyState === OPEN) ws.close(code, reason);
      else ws.close();
    } catch {
      // closing a socket that never opened may throw; it is gone either way
    }
  }

  #socketGone() {
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      // No-ops rather than null: the ws package throws an 'error' emitted
      // with no listener, as closing a socket mid-handshake does.
      const ignore = () => {};
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = ignore;
    }
    clearTimeout(this.#connectTimer);
    clearInterval(this.#ticker);
    this.#ticker = null;
    this.session.onClose();
  }

  #scheduleReconnect(detail = {}) {
    if (!this.#wanted || this.#reconnectTimer !== null) return;
    const delay = backoff(this.tuning, this.#attempt, this.#random);
    this.#attempt += 1;
    this.#setState('reconnecting', { delay, ...detail });
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      if (this.#wanted) this.#open();
    }, delay);
  }

  #tick() {
    const now = this.#now();
    const out = this.session.onTick(now);
    if (this.#pingSentAt !== null && now - this.#pingSentAt >= this.tuning.pongTimeout) {
      // No answer to a heartbeat: a half-open socket. Start over.
      this.#dropSocket(4000, 'no pong');
      this.#scheduleReconnect({ reason: 'no pong' });
      return;
    }
    if (out.length === 0 && now - this.#lastSent >= this.tuning.heartbeat) {
      out.push(JSON.stringify({ action: 'ping' }));
      if (this.#pingSentAt === null) this.#pingSentAt = now;
    }
    this.#sendAll(out);
  }

  #sendAll(frames) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== OPEN) return;
    for (const f of frames) {
      // Sends and requests over the limit are refused before they get here;
      // never let one frame close the socket.
      if (frameBytes(f) > this.tuning.maxFrameBytes) continue;
      ws.send(f);
      this.#lastSent = this.#now();
    }
  }

  // ---------------------------------------------------------- requests

  /**
   * Sends a message and resolves with its `sent` once the server accepted it.
   * It is resent with the same client_msg_id until then, across reconnects
   * (the server's idempotency makes the repeats harmless); it rejects only on
   * a permanent error (not_a_member, …) or close().
   */
  send(conversationId, body, { clientMsgId = newClientMsgId() } = {}) {
    if (this.#state === 'closed') {
      return Promise.reject(new CourierError('closed', 'the client is closed'));
    }
    return new Promise((resolve, reject) => {
      const frame = this.session.queueSend(conversationId, clientMsgId, body, { resolve, reject }, this.#now());
      if (frame) this.#sendAll([frame]);
    });
  }

  #request(frame, timeout = this.tuning.requestTimeout) {
    if (this.#state === 'closed') {
      return Promise.reject(new CourierError('closed', 'the client is closed'));
    }
    if (this.session.fatal && !this.#wanted) return Promise.reject(this.session.fatal);
    const requestId = `r${this.#nextRequest++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.session.dropRequest(requestId);
        reject(new CourierError('timeout', `no reply to ${frame.action} within ${timeout} ms`));
      }, timeout);
      const text = this.session.queueRequest(requestId, frame, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      if (text) this.#sendAll([text]);
    });
  }

  /** Creates a conversation of `members` (this user is added by the server). */
  async createConversation(members) {
    const f = await this.#request({ action: 'createConversation', members });
    return { conversationId: f.conversation_id, members: f.members };
  }

  /** Registers a push token (`apns`, `apns_sandbox` or `fcm`) for this user. */
  async registerDevice(platform, token) {
    await this.#request({ action: 'registerDevice', platform, token });
  }

  /**
   * This user's linked devices: `[{deviceId, linkedAt, lastSeenAt,
   * connected, thisDevice}]`.
   */
  async listDevices() {
    const f = await this.#request({ action: 'listDevices' });
    return (Array.isArray(f.devices) ? f.devices : []).map((d) => ({
      deviceId: d.device_id,
      linkedAt: d.linked_at,
      lastSeenAt: d.last_seen_at,
      connected: d.connected,
      thisDevice: d.this_device,
    }));
  }

  /**
   * Unlinks another device of this user (the server closes its connection);
   * resolves with `{deviceId}` on `device_unlinked`. Rejects with
   * `device_not_found` (not linked) or `bad_request` from the server, and at
   * once with `invalid_device_id` for an id the server would refuse.
   */
  async unlinkDevice(deviceId) {
    checkDeviceId(deviceId);
    const f = await this.#request({ action: 'unlinkDevice', device_id: deviceId });
    return { deviceId: f.device_id };
  }

  /**
   * One page of this user's conversations, after `after` (a conversation
   * id; the previous page's `next`), at most `limit` (1–100; the server's
   * default is 50). Resolves with `{conversations: [{conversationId,
   * members, lastSeq, deliveredThroughSeq}], next}`, `next` null on the
   * last page. `deliveredThroughSeq` is this device's: unread is `lastSeq -
   * deliveredThroughSeq`.
   */
  async listConversations({ after, limit } = {}) {
    const frame = { action: 'listConversations' };
    if (after !== undefined && after !== null) frame.after = after;
    if (limit !== undefined && limit !== null) frame.limit = limit;
    const f = await this.#request(frame);
    return {
      conversations: (Array.isArray(f.conversations) ? f.conversations : []).map((c) => ({
        conversationId: c.conversation_id,
        members: c.members,
        lastSeq: c.last_seq,
        deliveredThroughSeq: c.delivered_through_seq,
      })),
      next: typeof f.next === 'string' ? f.next : null,
    };
  }

  /** A heartbeat round trip; resolves with its time in ms. */
  async ping() {
    const started = this.#now();
    await this.#request({ action: 'ping' });
    return this.#now() - started;
  }

  /** Asks for a full catch-up now. */
  sync() {
    if (this.#state === 'open') this.#sendAll([this.session.fullSync(this.#now())]);
  }

  /**
   * Puts back what the app kept from an earlier run (its own storage):
   * `messages` in any order, and `heldThrough`, the seq through which it holds
   * everything (default: the contiguous end of `messages` from seq 1). No
   * events are emitted for them. Call before `connect()`.
   */
  restore(conversationId, messages = [], { heldThrough } = {}) {
    const t = this.session.timeline(conversationId);
    const now = this.#now();
    for (const m of messages) t.insert({ ...m, conversationId }, now);
    if (heldThrough !== undefined) t.holdThrough(heldThrough, now);
  }

  // ------------------------------------------------------------- reads

  /** The conversation's messages in seq order. */
  timeline(conversationId) {
    return this.session.timelines.get(conversationId)?.messages() ?? [];
  }

  /** Every seq up to this one is held. */
  contiguousThrough(conversationId) {
    return this.session.timelines.get(conversationId)?.contiguousThrough ?? 0;
  }

  conversations() {
    return [...this.session.timelines.keys()];
  }

  /** Sends not yet answered with `sent`. */
  pendingSends() {
    return [...this.session.outbox].map(([clientMsgId, o]) => ({
      clientMsgId,
      conversationId: o.conversationId,
      body: o.body,
      attempts: o.attempts,
    }));
  }

  /** The highest seq `userId` has acknowledged in the conversation, as receipts said. */
  receipt(conversationId, userId) {
    return this.session.receipt(conversationId, userId);
  }

  get stats() {
    return {
      opens: this.session.opens,
      caughtUp: this.session.caughtUpCount,
      duplicates: this.session.duplicates,
    };
  }
}
