import { chatProtocol } from "./chat.js";
import type { Protocol } from "./protocol.js";
import { socketIoProtocol } from "./socket-io.js";

export type ProtocolName = "chat" | "socket.io";
export const PROTOCOL_NAMES: readonly ProtocolName[] = ["chat", "socket.io"];

export function protocolNamed(name: ProtocolName): Protocol {
  return name === "chat" ? chatProtocol : socketIoProtocol;
}

export * from "./protocol.js";
