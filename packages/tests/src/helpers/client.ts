import WebSocket from "ws";
import { onTestFinished } from "vitest";
import { validateServerEvent } from "@chat/protocol";

export type Frame = Record<string, unknown> & { type: string };

/** A test client: records every frame (each checked against the protocol's server schemas). */
export class TestClient {
  readonly frames: Frame[] = [];
  /** Frames that do not match their schema; a test should expect this to stay empty. */
  readonly schemaViolations: string[] = [];
  private cursor = 0;
  private waiters: (() => void)[] = [];
  closeCode: number | null = null;
  readonly closed: Promise<number>;

  constructor(readonly ws: WebSocket) {
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      const frame = JSON.parse(isBinary ? "{}" : data.toString()) as Frame;
      const check = validateServerEvent(frame);
      if (!check.ok) this.schemaViolations.push(check.message);
      this.frames.push(frame);
      this.wake();
    });
    this.closed = new Promise((resolve) =>
      ws.on("close", (code) => {
        this.closeCode = code;
        this.wake();
        resolve(code);
      }),
    );
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  /** The next frame not yet taken (optionally: of this type, skipping others). */
  async next(type?: string, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.cursor < this.frames.length) {
        const f = this.frames[this.cursor++]!;
        if (type === undefined || f.type === type) return f;
      }
      if (this.closeCode !== null) throw new Error(`socket closed (${this.closeCode}) while waiting for ${type ?? "a frame"}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no ${type ?? "frame"} within ${timeoutMs} ms; got ${JSON.stringify(this.frames.map((f) => f.type))}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits until `predicate` holds on all frames so far. */
  async until(predicate: (frames: Frame[]) => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.frames)) {
      if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms; frames: ${JSON.stringify(this.frames).slice(0, 2000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  ofType(type: string): Frame[] {
    return this.frames.filter((f) => f.type === type);
  }

  close(): Promise<number> {
    this.ws.close(1000);
    return this.closed;
  }
}

/** Opens a socket with optional request headers (Origin, Authorization); resolves once it is open. Closed when the test ends. */
export async function openSocket(url: string, headers: Record<string, string> = {}): Promise<TestClient> {
  const ws = new WebSocket(url, { headers });
  const client = new TestClient(ws);
  onTestFinished(() => {
    if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => reject(new Error(`upgrade refused with ${res.statusCode}`)));
  });
  return client;
}

/** Opens a socket with the token as `?token=`; resolves once it is open. */
export async function connect(baseUrl: string, path: string, token?: string): Promise<TestClient> {
  return openSocket(token === undefined ? `${baseUrl}${path}` : `${baseUrl}${path}${path.includes("?") ? "&" : "?"}token=${token}`);
}

/**
 * Connects and waits for the endpoint's first event, after which the socket is fully subscribed.
 * A close with 1013 ("try again later", the gateway could not set the socket up in time) is answered
 * as docs/protocol.md tells clients to: by reconnecting, once. Any other close before the first
 * event fails (a 1006 there was a fault of the server's upgrade: socket-setup.test.ts).
 */
export async function connectReady(baseUrl: string, path: string, token: string): Promise<TestClient> {
  for (let attempt = 1; ; attempt++) {
    const client = await connect(baseUrl, path, token);
    await client.until((f) => f.length > 0 || client.closeCode !== null, 12000, "first event");
    if (client.frames.length > 0) return client;
    if (client.closeCode !== 1013 || attempt >= 2) throw new Error(`socket closed (${client.closeCode}) before its first event`);
  }
}

/** Tries an upgrade that should be refused; resolves to the HTTP status and JSON body. */
export async function refusedUpgrade(
  url: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const ws = new WebSocket(url, { headers });
  return new Promise((resolve, reject) => {
    ws.once("open", () => {
      ws.terminate();
      reject(new Error(`upgrade to ${url} was accepted`));
    });
    ws.once("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => {
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(body) as Record<string, unknown>;
        } catch {
          parsed = { raw: body };
        }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    ws.once("error", (err) => {
      if (!("statusCode" in err)) reject(err);
    });
  });
}
