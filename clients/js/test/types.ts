// Not run: `npm run typecheck` compiles it against courier.d.ts, so the
// declarations cover what an app writes.
import {
  CourierClient,
  CourierError,
  DEFAULT_TUNING,
  MAX_USER_ID_BYTES,
  Session,
  Timeline,
  backoff,
  connectUrl,
  isValidDeviceId,
  messageFrameBytes,
  newDeviceId,
  resolveDeviceId,
  type ConversationPage,
  type Device,
  type Message,
  type Sent,
} from '../src/courier.js';

declare const WS: new (url: string) => any;

export async function app(): Promise<void> {
  const client = new CourierClient({
    url: 'ws://127.0.0.1:3001',
    token: async () => 'jwt',
    WebSocket: WS,
    tuning: { heartbeat: 60_000 },
    deviceId: 'phone',
    openConversation: 'c1',
  });
  const laptop = new CourierClient({
    url: 'ws://h',
    token: 'jwt',
    user: 'alice',
    storage: null,
    tuning: { maxBodyBytes: 8192, maxMessageFrameBytes: 16_384 },
  });
  const id: string | null = laptop.deviceId;
  const unsubscribe = client.on('message', (m: Message) => {
    const line: string = `${m.conversationId} #${m.seq} ${m.senderId}: ${m.body}`;
    void line;
  });
  client.on('caughtUp', ({ conversations, messages, afterOpenMs }) => {
    const n: number = conversations + messages + (afterOpenMs ?? 0);
    void n;
  });
  client.on('receipt', (r) => void r.deliveredThroughSeq.toFixed());
  client.on('state', ({ state, delay }) => void [state === 'reconnecting', delay]);
  client.on('error', (e: CourierError) => void [e.code, e.code === 'too_many_devices' && e.limit]);
  const tooLong = await client.send('c1', 'x'.repeat(20_000)).catch((e: CourierError) =>
    e.limitName === 'maxBodyBytes' ? e.bodyBytes : e.limitName === 'maxMessageFrameBytes' ? e.messageFrameBytes : e.frameBytes,
  );
  client.on('state', ({ reason, error }) => void [reason === 'too_many_devices', error?.fatal]);
  client.restore('c1', [], { heldThrough: 41 });
  await client.connect({ timeout: 5000 });
  const { conversationId, members } = await client.createConversation(['bob']);
  await client.registerDevice('fcm', 'token');
  const sent: Sent = await client.send(conversationId, 'hello??', { clientMsgId: 'k1' });
  const timeline: Message[] = client.timeline(conversationId);
  const through: number = client.contiguousThrough(conversationId) + client.receipt(conversationId, 'bob');
  const rtt: number = await client.ping();
  const devices: Device[] = await client.listDevices();
  const other = devices.find((d) => !d.thisDevice && !d.connected);
  if (other) await client.unlinkDevice(other.deviceId);
  const page: ConversationPage = await client.listConversations({ limit: 20 });
  const more = page.next ? await client.listConversations({ after: page.next }) : null;
  const unread: number = page.conversations.reduce((n, c) => n + c.lastSeq - c.deliveredThroughSeq, 0);
  await client.connect({ openConversation: page.conversations[0]?.conversationId });
  void [id, more?.conversations.length, unread, client.fatalError?.limit, tooLong];
  void [members, sent.seq, timeline, through, rtt, client.pendingSends()[0]?.attempts, client.stats.opens];
  client.sync();
  client.goOffline();
  unsubscribe();
  client.close();
}

export function pure(): void {
  const t = new Timeline();
  const outcome: 'new' | 'duplicate' = t.insert({ conversationId: 'c1', seq: 1, messageId: 'm', senderId: 'a', body: 'b', sentAt: 0 });
  t.historyStartsAt(5, 0);
  const holes: Array<[number, number]> = t.holes();
  const s = new Session({ me: 'bob', tuning: { ackDelay: 0 } });
  const frames: string[] = [...s.onOpen(0), ...s.onText('{}', 1), ...s.onTick(2)];
  const url: string = connectUrl('ws://h', 't', { deviceId: newDeviceId(), conversationId: 'c1' });
  const kept: string | null = resolveDeviceId({ storage: { getItem: () => null, setItem: () => {} } });
  const measured: number = messageFrameBytes('c1', s.me, 'hi') + messageFrameBytes('c1', undefined, 'hi');
  const limits: number = DEFAULT_TUNING.maxBodyBytes + DEFAULT_TUNING.maxMessageFrameBytes + MAX_USER_ID_BYTES;
  void [outcome, holes, frames, backoff(DEFAULT_TUNING, 3), url, kept, isValidDeviceId('phone'), measured, limits];
}
