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
}

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
  | 'timeout'
  | 'closed'
  | 'handshake_refused'
  | 'unreachable';

export class CourierError extends Error {
  constructor(code: ErrorCode | string, message: string, details?: object);
  code: ErrorCode | string;
  clientMsgId?: string;
  requestId?: string;
  /** The HTTP status of a refused handshake. */
  status?: number;
  /** `payload_too_large` from the client: the encoded frame's UTF-8 bytes… */
  frameBytes?: number;
  /** …and the limit it is over. */
  limit?: number;
  /** The close code, when the socket closed on the frame (1009). */
  closeCode?: number;
}

export function isPermanent(code: string): boolean;
export function backoff(tuning: Pick<Tuning, 'backoffBase' | 'backoffMax'>, attempt: number, random?: () => number): number;
/** The wait after the `attempt`-th (1-based) unanswered try of a send or sync. */
export function retryWait(first: number, attempt: number, tuning: Pick<Tuning, 'retryMax'>, random?: () => number): number;
export function newClientMsgId(): string;
/** The UTF-8 byte length of a text frame. */
export function frameBytes(text: string): number;
export function tokenSubject(token: string): string | undefined;
export function withToken(url: string, token: string): string;

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
  /** Time from this socket's open to its `caught_up`, by the client's clock. */
  afterOpenMs: number | null;
}

export interface Receipt {
  conversationId: string;
  userId: string;
  deliveredThroughSeq: number;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'offline' | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** The backoff before the next attempt (`reconnecting`). */
  delay?: number;
  /** The close code that ended the last socket. */
  code?: number;
  reason?: string;
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
  /** This user's id (default: the token's `sub`). */
  user?: string;
  /** Default: globalThis.WebSocket. On Node 20, the `ws` package's. */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  tuning?: Partial<Tuning>;
  /** Source of jitter, in [0, 1). */
  random?: () => number;
  /** Clock in ms (default: performance.now). */
  now?: () => number;
}

export class CourierClient {
  constructor(options: ClientOptions);
  readonly tuning: Tuning;
  readonly session: Session;
  /** The last handshake refusal's HTTP status, where the platform reports it. */
  refusedStatus: number | null;
  readonly state: ConnectionState;
  readonly user: string | undefined;

  on<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (detail: ClientEvents[K]) => void): void;

  /** Opens (and keeps open) the connection; resolves once a socket is open. */
  connect(options?: { timeout?: number }): Promise<void>;
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
  closeAll(): void;
  onText(raw: string, now: number): string[];
  onFrame(frame: { type: string; [key: string]: unknown }, now: number): string[];
  flushAcks(): string[];
  onTick(now: number): string[];
}
