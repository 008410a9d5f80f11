import WebSocket from "ws";

/**
 * A minimal Chrome DevTools Protocol client for a process started with --inspect: enough to run
 * the V8 sampling profiler over a chosen window. (Our gateways lose sockets whose upgrade runs
 * while the profiler samples, so the profiler starts once the load's sockets are open and
 * `--cpu-prof`, which samples from start-up, is not used for them.)
 */
export class Inspector {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(private readonly ws: WebSocket) {
    ws.on("message", (data: Buffer) => {
      const m = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: { message: string } };
      const p = m.id === undefined ? undefined : this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id!);
      if (m.error) p.reject(new Error(m.error.message));
      else p.resolve(m.result);
    });
    ws.on("close", () => {
      for (const p of this.pending.values()) p.reject(new Error("inspector closed"));
      this.pending.clear();
    });
  }

  static async connect(url: string): Promise<Inspector> {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 1 << 30 });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    return new Inspector(ws);
  }

  call<T = unknown>(method: string, params: Record<string, unknown> = {}): Promise<T> {
    const id = ++this.nextId;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Starts sampling every `intervalUs` microseconds. */
  async startProfiler(intervalUs = 1000): Promise<void> {
    await this.call("Profiler.enable");
    await this.call("Profiler.setSamplingInterval", { interval: intervalUs });
    await this.call("Profiler.start");
  }

  /** Stops sampling and returns the .cpuprofile object. */
  async stopProfiler(): Promise<unknown> {
    const { profile } = await this.call<{ profile: unknown }>("Profiler.stop");
    return profile;
  }

  close(): void {
    this.ws.close();
  }
}
