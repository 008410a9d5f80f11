import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { Redis } from "ioredis";
import { jwtVerify } from "jose";
import { Server } from "socket.io";

/**
 * One node of the Socket.IO 4 baseline: the direct-message flow as a typical Socket.IO app writes
 * it, clustered with @socket.io/redis-adapter. Each socket authenticates with the same HS256 token
 * as ours (handshake `auth.token`), joins a room named after its user, and a `chat_message`
 * `{to, message, client_id}` is emitted to the recipient's and the sender's rooms on every node.
 * Nothing is persisted. Environment: PORT (0 = any), HOST, REDIS_URL, CHAT_JWT_SECRET,
 * BASELINE_KEY (the adapter's channel prefix). Logs one JSON line `listening` with the port.
 */
const log = (fields: Record<string, unknown>) => process.stdout.write(JSON.stringify({ level: "info", component: "baseline", ...fields }) + "\n");

const redisUrl = process.env["REDIS_URL"] ?? "redis://127.0.0.1:6379";
const secret = process.env["CHAT_JWT_SECRET"];
if (!secret) {
  process.stderr.write("CHAT_JWT_SECRET is required\n");
  process.exit(2);
}
const key = new TextEncoder().encode(secret);
const pub = new Redis(redisUrl, { connectionName: "baseline-pub" });
const sub = new Redis(redisUrl, { connectionName: "baseline-sub" });
await Promise.all([pub, sub].map((c) => (c.status === "ready" ? undefined : new Promise((r) => c.once("ready", r)))));

interface ChatMessageIn {
  to?: unknown;
  message?: unknown;
  client_id?: unknown;
}

const http = createServer();
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  adapter: createAdapter(pub, sub, { key: process.env["BASELINE_KEY"] ?? "socket.io" }),
});
io.use((socket, next) => {
  const token = (socket.handshake.auth as { token?: unknown }).token;
  jwtVerify(String(token), key, { algorithms: ["HS256"] }).then(
    ({ payload }) => {
      if (typeof payload.sub !== "string") return next(new Error("token_subject_invalid"));
      socket.data.user = payload.sub;
      next();
    },
    () => next(new Error("token_invalid")),
  );
});
io.on("connection", (socket) => {
  const user = socket.data.user as string;
  void socket.join(user);
  socket.on("chat_message", (m: ChatMessageIn) => {
    if (typeof m?.to !== "string" || typeof m.message !== "string" || m.message === "") {
      socket.emit("chat_error", { code: "invalid_frame", client_id: m?.client_id });
      return;
    }
    io.to(m.to).to(user).emit("chat_message", {
      id: randomUUID(),
      message: m.message,
      multimedia_url: null,
      date_added: new Date().toISOString(),
      from_user: { username: user },
      to_user: { username: m.to },
      room: m.to,
      client_id: m.client_id,
    });
  });
});

http.listen(Number(process.env["PORT"] ?? 0), process.env["HOST"] ?? "127.0.0.1", () => {
  const address = http.address();
  log({ msg: "listening", port: typeof address === "object" && address ? address.port : 0 });
});

const stop = () => {
  io.close();
  pub.disconnect();
  sub.disconnect();
  setTimeout(() => process.exit(0), 100).unref();
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
