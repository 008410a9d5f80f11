import WebSocket from "ws";
import { ConnectError } from "./protocol.js";

export interface OpenedSocket {
  ws: WebSocket;
  /** Closes with 1000 and resolves on the close event, terminating after `timeoutMs`. */
  close(timeoutMs?: number): Promise<void>;
}

/**
 * Opens a WebSocket (no compression, no UTF-8 validation: the generator trusts loopback servers
 * and spends its CPU on sending) and resolves once `onText` returns true for a frame, i.e. the
 * socket is ready by the protocol's definition. Frames keep going to `onText` afterwards.
 * `onClose` hears closes the generator did not ask for.
 */
export function openSocket(
  url: string,
  timeoutMs: number,
  onText: (text: string, ws: WebSocket) => boolean,
  onClose: (code: number) => void,
  headers?: Record<string, string>,
): Promise<OpenedSocket> {
  const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true, headers, handshakeTimeout: timeoutMs });
  let closing = false;
  let ready = false;
  const closed = new Promise<void>((resolve) => ws.once("close", () => resolve()));
  const opened: OpenedSocket = {
    ws,
    async close(ms = 5000) {
      closing = true;
      if (ws.readyState === WebSocket.CLOSED) return;
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      else ws.terminate();
      const timer = setTimeout(() => ws.terminate(), ms);
      await closed;
      clearTimeout(timer);
    },
  };
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: ConnectError) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    };
    const timer = setTimeout(() => fail(new ConnectError("timeout", `${redact(url)} not ready after ${timeoutMs} ms`)), timeoutMs);
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) return;
      if (onText(data.toString(), ws) && !ready) {
        ready = true;
        settled = true;
        clearTimeout(timer);
        resolve(opened);
      }
    });
    ws.on("close", (code) => {
      if (!ready) fail(new ConnectError("closed", `${redact(url)} closed (${code}) before it was ready`));
      else if (!closing) onClose(code);
    });
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => fail(new ConnectError("refused", `${redact(url)} refused the upgrade: ${res.statusCode} ${body.slice(0, 200)}`)));
      res.on("error", () => fail(new ConnectError("refused", `${redact(url)} refused the upgrade: ${res.statusCode}`)));
    });
    ws.on("error", (err) => {
      if (!ready) fail(new ConnectError("network", `${redact(url)}: ${err.message}`, { cause: err }));
    });
  });
}

/** The URL without its token, for error messages. */
const redact = (url: string): string => url.replace(/token=[^&]*/, "token=…");
