// Test helper: a real courier-local per test, on a port the OS picks.
//
// The binary is the one `cargo build -p courier-local` leaves in the target
// directory: CARGO_TARGET_DIR (a relative one from the root, where
// scripts/test runs cargo), else target/; COURIER_LOCAL_BIN overrides. It
// runs on its embedded in-memory stores whatever the calling shell exports
// (scripts/test exports REDIS_URL and DYNAMODB_ENDPOINT for the Rust tests),
// so only a few variables pass through. Its logs are kept and printed when a
// test fails, or always with TEST_LOG set (TEST_LOG=debug for more).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '../../..');
export const BIN =
  process.env.COURIER_LOCAL_BIN ?? path.join(path.resolve(ROOT, process.env.CARGO_TARGET_DIR || 'target'), 'debug/courier-local');

/**
 * Starts `courier-local serve --addr 127.0.0.1:0 …args` and waits for the
 * address it prints.
 */
export async function startGateway({ args = [], env = {}, t } = {}) {
  if (!existsSync(BIN)) {
    throw new Error(`${BIN} not found: run \`cargo build -p courier-local\` first`);
  }
  const child = spawn(BIN, ['serve', '--addr', '127.0.0.1:0', ...args], {
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      RUST_LOG: process.env.TEST_LOG || 'warn',
      RUST_BACKTRACE: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const keep = (chunk) => {
    log += chunk;
    if (process.env.TEST_LOG) process.stderr.write(chunk);
  };
  child.stderr.setEncoding('utf8').on('data', keep);
  child.stdout.setEncoding('utf8');
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`courier-local printed no address in 30 s:\n${log}`)), 30_000);
    child.stdout.on('data', (chunk) => {
      keep(chunk);
      const m = /ws:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`courier-local exited (${code ?? signal}) before serving:\n${log}`));
    });
  });
  const httpUrl = `http://127.0.0.1:${port}`;
  const gw = {
    port,
    wsUrl: `ws://127.0.0.1:${port}`,
    httpUrl,
    log: () => log,
    async get(p) {
      const r = await fetch(httpUrl + p);
      if (!r.ok) throw new Error(`GET ${p}: HTTP ${r.status} ${await r.text()}`);
      return r.json();
    },
    async token(user) {
      return (await gw.get(`/_local/token?user=${encodeURIComponent(user)}`)).token;
    },
    pending: (user) => gw.get(`/_local/pending/${user}`),
    /** The registry entries of `user`: one per connected device. */
    registry: (user) => gw.get(`/_local/registry/${user}`),
    pushes: () => gw.get('/_local/pushes'),
    /** The Management API's DELETE: the server drops the connection. */
    async dropConnection(id) {
      const r = await fetch(`${httpUrl}/local/@connections/${id}`, { method: 'DELETE' });
      if (r.status !== 204) throw new Error(`DELETE @connections/${id}: HTTP ${r.status}`);
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
  if (t) {
    t.after(async () => {
      await gw.stop();
    });
  }
  return gw;
}

/** Polls `check` until it holds; fails with `what` after `timeout` ms. */
export async function waitFor(what, check, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
