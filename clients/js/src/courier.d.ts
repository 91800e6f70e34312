// Types of courier.js (hand-written; `npm run typecheck` holds them to a
// typed use of the module, test/types.ts).

/** Timings (ms) and sizes of the protocol rules. */
export interface Tuning {
  /** Send a full `sync` when no `caught_up` came this long after opening. */
  caughtUpTimeout: number;
  /** Resend an unanswered `sendMessage` (same client_msg_id) after this long. */
  sendRetry: number;
  /** Ask for a hole once it has been open this long. */
  holeGrace: number;
  /** `limit` of range syncs. */
  syncLimit: number;
  /** A range sync with no answer after this long may be resent. */
  syncTimeout: number;
  /** Acks are gathered this long, then sent as one frame. */
  ackDelay: number;
  /** Send a `ping` when nothing was sent for this long. */
  heartbeat: number;
  /** No frame this long after a heartbeat: reconnect. */
  pongTimeout: number;
  /** Reconnect backoff: first delay and cap, equal jitter in between. */
  backoffBase: number;
  backoffMax: number;
  /** Cap of the doubling wait between repeats of one unanswered send, range
   *  sync or full sync. */
  retryMax: number;
  /** A handshake not done in this long is abandoned and retried. */
  connectTimeout: number;
  /** How long createConversation/registerDevice/ping wait for their reply. */
  requestTimeout: number;
  /** Timer resolution of the client. */
  tick: number;
  /** The largest text frame sent, in UTF-8 bytes of the encoded JSON
   *  (32768: API Gateway closes the socket with 1009 on a larger one). A
   *  larger send or request is rejected at once with `payload_too_large`. */
  maxFrameBytes: number;
  /** Must equal the server's MAX_BODY_BYTES (16384): a send whose body is
   *  over this many UTF-8 bytes is rejected at once with `payload_too_large`. */
  maxBodyBytes: number;
  /** Must equal the server's FRAME_BYTES (32768): a send whose message, as
   *  the server encodes it in a `messages` frame (`messageFrameBytes`), is
   *  over this is rejected at once with `payload_too_large`. */
  maxMessageFrameBytes: number;
}

/** The size limits a `payload_too_large` from the client names. */
export type SizeLimit = 'maxFrameBytes' | 'maxBodyBytes' | 'maxMessageFrameBytes';

export const DEFAULT_TUNING: Readonly<Tuning>;
export const MAX_ACKS_PER_FRAME: number;

/** A protocol error code, or one of the client's own. */
export type ErrorCode =
  | 'bad_request'
  | 'unknown_action'
  | 'unauthorized'
  | 'not_a_member'
  | 'conversation_not_found'
  | 'payload_too_large'
  | 'rate_limited'
  | 'internal'
  | 'too_many_devices'
  | 'device_not_found'
  | 'device_unlinked'
  | 'timeout'
  | 'closed'
  | 'handshake_refused'
  | 'unreachable'
  | 'invalid_device_id';

export class CourierError extends Error {
  constructor(code: ErrorCode | string, message: string, details?: object);
  code: ErrorCode | string;
  clientMsgId?: string;
  requestId?: string;
  /** The HTTP status of a refused handshake. */
  status?: number;
  /** `payload_too_large` from the client: the tuning it is over… */
  limitName?: SizeLimit;
  /** …and that limit's measure: the encoded frame's UTF-8 bytes
   *  (`maxFrameBytes`), the body's (`maxBodyBytes`), or the message's
   *  `messages` frame as the server encodes it (`maxMessageFrameBytes`)… */
  frameBytes?: number;
  bodyBytes?: number;
  messageFrameBytes?: number;
  /** …and the limit it is over; for `too_many_devices`, the user's device
   *  limit (MAX_DEVICES) from the server's message, null if it named none. */
  limit?: number | null;
  /** The close code, when the socket closed on the frame (1009). */
  closeCode?: number;
  /** `too_many_devices`: the client stopped and will not reconnect by itself. */
  fatal?: boolean;
  /** `invalid_device_id`: the value refused. */
  deviceId?: unknown;
}

export function isPermanent(code: string): boolean;
export function backoff(tuning: Pick<Tuning, 'backoffBase' | 'backoffMax'>, attempt: number, random?: () => number): number;
/** The wait after the `attempt`-th (1-based) unanswered try of a send or sync. */
export function retryWait(first: number, attempt: number, tuning: Pick<Tuning, 'retryMax'>, random?: () => number): number;
export function newClientMsgId(): string;
/** The UTF-8 byte length of a text frame. */
export function frameBytes(text: string): number;
/** The longest user id the server accepts (128). */
export const MAX_USER_ID_BYTES: number;
/** The server's measure of the `messages` frame that would carry this
 *  message alone (the body JSON-escaped, + 190, + both ids); with no
 *  `userId`, measured with the longest one (MAX_USER_ID_BYTES). */
export function messageFrameBytes(conversationId: string, userId: string | null | undefined, body: string): number;
export function tokenSubject(token: string): string | undefined;
export function withToken(url: string, token: string): string;

/** 1–64 characters of `A-Z a-z 0-9 . _ -` (the server's DeviceId). */
export const DEVICE_ID_PATTERN: RegExp;
/** `courier.device_id`: where a browser client keeps its device id. */
export const DEVICE_ID_STORAGE_KEY: string;
export function isValidDeviceId(id: unknown): id is string;
/** Returns `id`, or throws CourierError `invalid_device_id`. */
export function checkDeviceId(id: unknown, what?: string): string;
/** A new random, valid device id. */
export function newDeviceId(): string;

/** What the client needs of a Storage (localStorage fits). */
export interface DeviceIdStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** The option if given (checked); else the stored id, or a new one stored;
 *  else null (no `device=`: the server's `default` device). */
export function resolveDeviceId(options?: {
  deviceId?: string | null;
  storage?: DeviceIdStorage | null;
  key?: string;
}): string | null;
/** `url` with `token=`, and `device=` / `conversation_id=` when given. */
export function connectUrl(
  url: string,
  token: string,
  options?: { deviceId?: string | null; conversationId?: string | null },
): string;
/** The device limit a `too_many_devices` message names, or null. */
export function deviceLimitOf(message: string): number | null;

/** A message as the app sees it. */
export interface Message {
  conversationId: string;
  seq: number;
  messageId: string;
  senderId: string;
  body: string;
  /** Server time, ms since the epoch. */
  sentAt: number;
}

/** A message the server accepted. */
export interface Sent {
  conversationId: string;
  clientMsgId: string;
  seq: number;
  sentAt: number;
}

export interface CaughtUp {
  conversations: number;
  messages: number;
  /** Conversations the catch-up ran out of time for: the client syncs again
   *  on its own, and another `caughtUp` follows. 0 when complete. */
  unreached: number;
  /** Time from this socket's open to its `caught_up`, by the client's clock. */
  afterOpenMs: number | null;
}

export interface Receipt {
  conversationId: string;
  userId: string;
  deliveredThroughSeq: number;
}

/** A linked device of this user (`listDevices`). */
export interface Device {
  deviceId: string;
  /** ms since the epoch */
  linkedAt: number;
  lastSeenAt: number;
  /** It has a live connection. */
  connected: boolean;
  /** It is the device that asked. */
  thisDevice: boolean;
}

/** A conversation as `listConversations` shows it to this device. */
export interface ConversationSummary {
  conversationId: string;
  members: string[];
  lastSeq: number;
  /** This device holds every message through this seq (unread = lastSeq - this). */
  deliveredThroughSeq: number;
}

export interface ConversationPage {
  conversations: ConversationSummary[];
  /** `after` of the next page; null on the last page. */
  next: string | null;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** The backoff before the next attempt (`reconnecting`). */
  delay?: number;
  /** The close code that ended the last socket. */
  code?: number;
  /** Why the client went offline by itself: `too_many_devices`. */
  reason?: string;
  /** The error that stopped it (`reason` set). */
  error?: CourierError;
}

export interface ClientEvents {
  message: Message;
  caughtUp: CaughtUp;
  receipt: Receipt;
  error: CourierError;
  state: StateChange;
}

export interface PendingSend {
  clientMsgId: string;
  conversationId: string;
  body: string;
  attempts: number;
}

/** What the client needs of a WebSocket: the WHATWG interface. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code?: number }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** `ws://127.0.0.1:3001` or `wss://{api}.execute-api.{region}.amazonaws.com/{stage}`. */
  url: string;
  /** A JWT, or a function called on every (re)connect for a fresh one. */
  token: string | (() => string | Promise<string>);
  /** This user's id (default: the token's `sub`; pass it when the
   *  deployment's USER_ID_CLAIM is not `sub`). A message's frame is measured
   *  with it; until it is known, with the longest id the server allows, so a
   *  send within 128 bytes of `maxMessageFrameBytes` may be refused early. */
  user?: string;
  /** Default: globalThis.WebSocket. On Node 20, the `ws` package's. */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  tuning?: Partial<Tuning>;
  /** Source of jitter, in [0, 1). */
  random?: () => number;
  /** Clock in ms (default: performance.now). */
  now?: () => number;
  /** This device's id; wins over the stored one and is not stored. A bad one
   *  throws CourierError `invalid_device_id`. */
  deviceId?: string;
  /** Where the device id is kept when `deviceId` is not given (default:
   *  localStorage where there is one; null: none, and no `device=`). */
  storage?: DeviceIdStorage | null;
  /** The storage key (default `courier.device_id`). */
  deviceIdKey?: string;
  /** The conversation the app was opened on (a tapped notification): sent as
   *  `conversation_id=` on the first connection. */
  openConversation?: string;
}

export class CourierClient {
  constructor(options: ClientOptions);
  readonly tuning: Tuning;
  readonly session: Session;
  /** The last handshake refusal's HTTP status, where the platform reports it. */
  refusedStatus: number | null;
  readonly state: ConnectionState;
  readonly user: string | undefined;
  /** This device's id, or null (the server's `default` device). */
  readonly deviceId: string | null;
  /** The `too_many_devices` error that stopped the client, until the next connect(). */
  readonly fatalError: CourierError | null;

  on<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): void;

  /** Opens (and keeps open) the connection; resolves once a socket is open. */
  connect(options?: { timeout?: number; openConversation?: string }): Promise<void>;
  /** Closes the socket and stays offline until `connect()`. */
  goOffline(): void;
  /** Stops for good; pending sends and requests reject with `closed`. */
  close(): void;

  /** Resolves with `sent`; retried with the same client_msg_id until then. */
  send(conversationId: string, body: string, options?: { clientMsgId?: string }): Promise<Sent>;
  createConversation(members: string[]): Promise<{ conversationId: string; members: string[] }>;
  registerDevice(platform: 'apns' | 'apns_sandbox' | 'fcm', token: string): Promise<void>;
  /** A heartbeat round trip, in ms. */
  ping(): Promise<number>;
  /** This user's linked devices. */
  listDevices(): Promise<Device[]>;
  /** Unlinks another device of this user; rejects with `device_not_found`,
   *  `bad_request`, or at once `invalid_device_id`. */
  unlinkDevice(deviceId: string): Promise<{ deviceId: string }>;
  /** One page of this user's conversations. */
  listConversations(options?: { after?: string; limit?: number }): Promise<ConversationPage>;
  /** Asks for a full catch-up now. */
  sync(): void;

  /** Puts back messages the app kept; `heldThrough`: all seqs up to it are held. */
  restore(conversationId: string, messages?: Message[], options?: { heldThrough?: number }): void;
  timeline(conversationId: string): Message[];
  contiguousThrough(conversationId: string): number;
  conversations(): string[];
  pendingSends(): PendingSend[];
  receipt(conversationId: string, userId: string): number;
  readonly stats: { opens: number; caughtUp: number; duplicates: number };
}

/** One conversation in seq order (pure). */
export class Timeline {
  insert(message: Message, now?: number): 'new' | 'duplicate';
  /** Counts every seq up to `seq` as held, present or not. */
  holdThrough(seq: number, now?: number): void;
  /** `history_starts`: retention deleted every seq below `seq`, so they count
   *  as held (as `holdThrough(seq - 1)`) and the hole they left is never asked
   *  for again. A seq at or below the contiguous end changes nothing. */
  historyStartsAt(seq: number, now?: number): void;
  readonly contiguousThrough: number;
  readonly highest: number;
  hasHole(): boolean;
  holes(): Array<[number, number]>;
  holeOlderThan(grace: number, now: number): boolean;
  holeRequested(now: number): void;
  ackDue(): number | null;
  markAcked(seq: number): void;
  readonly acked: number;
  readonly duplicates: number;
  readonly size: number;
  get(seq: number): Message | undefined;
  messages(): Message[];
}

export interface Waiter<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

/** The protocol rules without I/O: methods return the text frames to send. */
export class Session {
  constructor(options?: {
    /** This user's id; see ClientOptions.user. */
    me?: string;
    tuning?: Partial<Tuning>;
    emit?: (type: keyof ClientEvents, detail: unknown) => void;
    /** Jitter source of the retry waits (tests pass a fixed one). */
    random?: () => number;
  });
  me: string | undefined;
  readonly tuning: Tuning;
  readonly open: boolean;
  readonly opens: number;
  readonly caughtUpCount: number;
  readonly duplicates: number;
  /** Set by `too_many_devices`; cleared on the next open. */
  readonly fatal: CourierError | null;
  readonly timelines: Map<string, Timeline>;
  timeline(conversationId: string): Timeline;
  receipt(conversationId: string, userId: string): number;
  queueSend(conversationId: string, clientMsgId: string, body: string, waiter: Waiter<Sent> | null, now: number): string | null;
  queueRequest(requestId: string, frame: object, waiter: Waiter<any>): string | null;
  dropRequest(requestId: string): void;
  fullSync(now: number): string;
  onOpen(now: number): string[];
  /** The socket closed with `code`; call before `onClose`. Fails a send the
   *  socket closed on (1009, or twice in a row right after it went out). */
  onDropped(code: number | undefined, now: number): void;
  onClose(): void;
  /** Fails every request with `err` and emits it (`too_many_devices`). */
  onFatal(err: CourierError): void;
  closeAll(): void;
  onText(raw: string, now: number): string[];
  onFrame(frame: { type: string; [key: string]: unknown }, now: number): string[];
  flushAcks(): string[];
  onTick(now: number): string[];
}
