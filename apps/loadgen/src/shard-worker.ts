import { parentPort, workerData } from "node:worker_threads";
import { LoadShard, type ShardOptions } from "./shard.js";

// A generator thread: runs one shard and reports to runLoad (run.ts) over the port:
// connected → (start) → schedule-done → result → (close) → closed. A close at any point ends it.
const port = parentPort!;
const shard = new LoadShard(workerData as ShardOptions);
const next = () => new Promise<{ type: "start"; at: number } | { type: "close" }>((resolve) => port.once("message", resolve));
try {
  await shard.connect();
  const starting = next();
  port.postMessage({ type: "connected" });
  const m = await starting;
  if (m.type === "start") {
    const result = await shard.run(m.at, () => port.postMessage({ type: "schedule-done" }));
    const closing = next();
    port.postMessage({ type: "result", result });
    await closing;
  }
  await shard.close();
  port.postMessage({ type: "closed" });
} catch (err) {
  await shard.close();
  port.postMessage({ type: "error", message: (err as Error).message });
}
port.close();
