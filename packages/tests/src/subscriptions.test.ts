import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { redisNames } from "@chat/bus";
import {
  connect,
  connectReady,
  freshPrefix,
  startGateway,
  startWorker,
  testRedis,
  tokenFor,
  uniqueUser,
  waitFor,
  type Gateway,
} from "./helpers/index.js";

/** Channel names as packages/bus/src/names.ts builds them (shard channels: the gateways SSUBSCRIBE). */
const roomChannel = (prefix: string, a: string, b: string): string => {
  const names = redisNames(prefix);
  return names.roomChannel(names.roomId(a, b));
};
const userChannel = (prefix: string, user: string): string => redisNames(prefix).userChannel(user);

/**
 * Every shard channel of this prefix with at least one subscriber anywhere, sorted. On a single Redis
 * a gateway holds no probe channel (partition-probe.ts runs on a cluster only), so these are all the
 * sockets' channels.
 */
async function channelsOf(prefix: string): Promise<string[]> {
  const list = (await testRedis().pubsub("SHARDCHANNELS", `${prefix}*`)) as string[];
  return list.sort();
}

/** How many connections (i.e. nodes: each has one subscriber connection) are subscribed to shard channel `channel`. */
async function numsub(channel: string): Promise<number> {
  const reply = (await testRedis().pubsub("SHARDNUMSUB", channel)) as [string, number | string];
  return Number(reply[1]);
}

/**
 * How many channels one node's subscriber connection (named `<node id>:subscriber`) is subscribed
 * to: shard channels (ssub), and none the plain way (sub, psub), which nothing publishes to any more.
 */
async function nodeSubscriptions(nodeId: string): Promise<number> {
  const list = (await testRedis().client("LIST")) as string;
  const line = list.split("\n").find((l) => l.includes(` name=${nodeId}:subscriber `));
  if (!line) throw new Error(`no subscriber connection of node ${nodeId}`);
  expect(Number(/ sub=(\d+) /.exec(line)![1]), `plain channels of ${nodeId}:subscriber`).toBe(0);
  expect(Number(/ psub=(\d+) /.exec(line)![1]), `patterns of ${nodeId}:subscriber`).toBe(0);
  return Number(/ ssub=(\d+) /.exec(line)![1]);
}

interface Node {
  g: Gateway;
  id: string;
}

/**
 * A grace delay shorter than the default 2 s, so the waits for unsubscribes are short, and still far
 * longer than a reconnect takes here (tens of ms), so "reopens during the grace delay" stays true.
 */
const UNSUBSCRIBE_DELAY_MS = "600";

/** Two gateways with known node ids, so their subscriber connections can be told apart. */
async function twoNodes(prefix: string): Promise<[Node, Node]> {
  const ids = [1, 2].map((n) => `subs-g${n}-${randomBytes(4).toString("hex")}`);
  const [g1, g2] = await Promise.all(ids.map((id) => startGateway(prefix, { CHAT_NODE_ID: id, CHAT_UNSUBSCRIBE_DELAY_MS: UNSUBSCRIBE_DELAY_MS })));
  return [
    { g: g1!, id: ids[0]! },
    { g: g2!, id: ids[1]! },
  ];
}

/**
 * Opens and closes a notifications socket of a throwaway user on `node` and waits until that node has
 * unsubscribed its user channel. Unsubscribe timers of one node run in order, so every socket closed
 * on that node before the probe has had its grace delay expire by the time this returns.
 */
async function probeGraceElapsed(prefix: string, node: Node): Promise<void> {
  const probe = uniqueUser("probe");
  const s = await connectReady(node.g.url, "/ws/notifications/", await tokenFor(probe));
  await waitFor(async () => expect(await numsub(userChannel(prefix, probe))).toBe(1));
  await s.close();
  await waitFor(async () => expect(await numsub(userChannel(prefix, probe))).toBe(0), 10_000);
}

describe("subscriptions", () => {
  it("subscribes nothing without sockets, exactly the room channel on the node of a chat socket, and unsubscribes after it closes", async () => {
    const prefix = freshPrefix("subs-room");
    const [n1, n2] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const room = roomChannel(prefix, alice, bob);

    expect(await channelsOf(prefix)).toEqual([]);
    expect(await nodeSubscriptions(n1.id)).toBe(0);
    expect(await nodeSubscriptions(n2.id)).toBe(0);

    const a = await connectReady(n1.g.url, `/ws/${bob}/`, await tokenFor(alice));
    expect(await channelsOf(prefix)).toEqual([room]);
    expect(await numsub(room)).toBe(1);
    expect(await nodeSubscriptions(n1.id)).toBe(1);
    expect(await nodeSubscriptions(n2.id)).toBe(0);

    await a.close();
    await waitFor(async () => expect(await channelsOf(prefix)).toEqual([]), 10_000);
    expect(await nodeSubscriptions(n1.id)).toBe(0);
  });

  it("names the room channel by the two usernames in JS string order, whoever connects", async () => {
    const prefix = freshPrefix("subs-order");
    const [n1, n2] = await twoNodes(prefix);
    // Upper case sorts before lower case in JS string order (not in a locale-aware one).
    const zoe = uniqueUser("Zoe");
    const amy = uniqueUser("amy");
    const expected = roomChannel(prefix, zoe, amy);
    expect(expected.endsWith(`:room:${zoe}:${amy}`)).toBe(true);

    const z = await connectReady(n1.g.url, `/ws/${amy}/`, await tokenFor(zoe));
    expect(await channelsOf(prefix)).toEqual([expected]);
    const a = await connectReady(n2.g.url, `/ws/${zoe}/`, await tokenFor(amy));
    expect(await channelsOf(prefix)).toEqual([expected]);
    expect(await numsub(expected)).toBe(2);
    expect(z.schemaViolations).toEqual([]);
    expect(a.schemaViolations).toEqual([]);
  });

  it("subscribes a room channel only on nodes that have a socket for the conversation", async () => {
    const prefix = freshPrefix("subs-nodes");
    const [n1, n2] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const room = roomChannel(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    // Both users on node 1: node 2 does not get the conversation's events.
    const a = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
    const b1 = await connectReady(n1.g.url, `/ws/${alice}/`, tb);
    a.send({ type: "chat_message", message: "one node" });
    expect(await b1.next("chat_message")).toMatchObject({ message: "one node" });
    expect(await numsub(room)).toBe(1);
    expect(await nodeSubscriptions(n2.id)).toBe(0);

    // Bob opens a socket on node 2: now both nodes receive them.
    const b2 = await connectReady(n2.g.url, `/ws/${alice}/`, tb);
    expect(await numsub(room)).toBe(2);
    expect(await nodeSubscriptions(n2.id)).toBe(1);
    a.send({ type: "chat_message", message: "two nodes" });
    expect(await b2.next("chat_message")).toMatchObject({ message: "two nodes" });
    expect(await b1.next("chat_message")).toMatchObject({ message: "two nodes" });

    // His node-2 socket closes: node 2 unsubscribes, node 1 keeps delivering.
    await b2.close();
    await waitFor(async () => expect(await numsub(room)).toBe(1), 10_000);
    expect(await nodeSubscriptions(n2.id)).toBe(0);
    expect(await nodeSubscriptions(n1.id)).toBe(1);
    a.send({ type: "chat_message", message: "back to one" });
    expect(await b1.next("chat_message")).toMatchObject({ message: "back to one" });
    expect(await channelsOf(prefix)).toEqual([room]);
  });

  it("keeps a room channel while another local socket needs it, and drops it after the last one closes", async () => {
    const prefix = freshPrefix("subs-last");
    const [n1, n2] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const room = roomChannel(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);

    const a1 = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
    const a2 = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
    const b = await connectReady(n2.g.url, `/ws/${alice}/`, tb);
    expect(await numsub(room)).toBe(2);
    expect(await nodeSubscriptions(n1.id)).toBe(1);

    await a1.close();
    // Past the grace delay of that close, node 1 is still subscribed for a2, which still gets events.
    await probeGraceElapsed(prefix, n1);
    expect(await numsub(room)).toBe(2);
    expect(await nodeSubscriptions(n1.id)).toBe(1);
    b.send({ type: "chat_message", message: "still here?" });
    expect(await a2.next("chat_message")).toMatchObject({ message: "still here?" });

    await a2.close();
    await waitFor(async () => expect(await numsub(room)).toBe(1), 10_000);
    expect(await nodeSubscriptions(n1.id)).toBe(0);
    expect(await channelsOf(prefix)).toEqual([room]);
  });

  it("keeps delivering to a socket that reopens during the grace delay, past that delay", async () => {
    const prefix = freshPrefix("subs-reopen");
    const [n1, n2] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const room = roomChannel(prefix, alice, bob);
    const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
    const b = await connectReady(n2.g.url, `/ws/${alice}/`, tb);

    const a1 = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
    await a1.close();
    const a2 = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
    await probeGraceElapsed(prefix, n1);
    expect(await numsub(room)).toBe(2);
    b.send({ type: "chat_message", message: "after the grace delay" });
    expect(await a2.next("chat_message")).toMatchObject({ message: "after the grace delay" });
  });

  it("subscribes the user channel for notification sockets of both kinds, once per node, until the last closes", async () => {
    const prefix = freshPrefix("subs-user");
    const [n1, n2] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const channel = userChannel(prefix, alice);
    const ta = await tokenFor(alice);

    const all1 = await connectReady(n1.g.url, "/ws/notifications/", ta);
    expect(all1.frames[0]).toMatchObject({ type: "unread_count" });
    expect(await channelsOf(prefix)).toEqual([channel]);
    expect(await nodeSubscriptions(n1.id)).toBe(1);
    expect(await nodeSubscriptions(n2.id)).toBe(0);

    const conv1 = await connectReady(n1.g.url, `/ws/notifications/${bob}/`, ta);
    expect(conv1.frames[0]).toMatchObject({ type: "single_conversation_unread_count" });
    expect(await channelsOf(prefix)).toEqual([channel]);
    expect(await nodeSubscriptions(n1.id)).toBe(1);

    const conv2 = await connectReady(n2.g.url, `/ws/notifications/${bob}`, ta);
    expect(await numsub(channel)).toBe(2);
    expect(await nodeSubscriptions(n2.id)).toBe(1);

    await all1.close();
    await probeGraceElapsed(prefix, n1);
    expect(await numsub(channel)).toBe(2);

    await conv1.close();
    await waitFor(async () => expect(await numsub(channel)).toBe(1), 10_000);
    expect(await nodeSubscriptions(n1.id)).toBe(0);

    await conv2.close();
    await waitFor(async () => expect(await channelsOf(prefix)).toEqual([]), 10_000);
    expect(await nodeSubscriptions(n2.id)).toBe(0);
  });

  it("delivers to a chat socket a message sent the moment its first event arrives, on a node that had no subscription", async () => {
    const prefix = freshPrefix("subs-ready");
    const [n1, n2] = await twoNodes(prefix);
    for (let round = 0; round < 10; round++) {
      // Fresh users each round: node 2 must subscribe a new room channel every time.
      const alice = uniqueUser("alice");
      const bob = uniqueUser("bob");
      const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
      const a = await connectReady(n1.g.url, `/ws/${bob}/`, ta);
      expect(await numsub(roomChannel(prefix, alice, bob))).toBe(1);

      const b = await connect(n2.g.url, `/ws/${alice}/`, tb);
      const first = await b.next();
      a.send({ type: "chat_message", message: `right away ${round}` });
      expect(first.type).toBe("online_user_list");
      expect(await b.next("chat_message")).toMatchObject({ message: `right away ${round}`, from_user: { username: alice } });
    }
  });

  it("delivers notifications to sockets whose first event has just arrived, on a node that had no subscription", async () => {
    const prefix = freshPrefix("subs-ready-notif");
    const [n1, n2] = await twoNodes(prefix);
    await startWorker(prefix);
    for (let round = 0; round < 3; round++) {
      const alice = uniqueUser("alice");
      const bob = uniqueUser("bob");
      const [ta, tb] = await Promise.all([tokenFor(alice), tokenFor(bob)]);
      const a = await connectReady(n1.g.url, `/ws/${bob}/`, ta);

      const [all, conv] = await Promise.all([
        connect(n2.g.url, "/ws/notifications/", tb),
        connect(n2.g.url, `/ws/notifications/${alice}/`, tb),
      ]);
      const [firstAll, firstConv] = await Promise.all([all.next(), conv.next()]);
      a.send({ type: "chat_message", message: `notify ${round}` });
      expect(firstAll).toEqual({ type: "unread_count", unread_count: 0 });
      expect(firstConv).toEqual({ type: "single_conversation_unread_count", unread_count: 0 });

      expect(await all.next(undefined, 10_000)).toEqual({ type: "new_message_notification", unread_count: 1 });
      expect(await conv.next(undefined, 10_000)).toEqual({ type: "single_conversation_new_message_notification" });
      expect(await conv.next()).toEqual({ type: "single_conversation_unread_count", unread_count: 1 });
      expect(all.schemaViolations).toEqual([]);
      expect(conv.schemaViolations).toEqual([]);
    }
  });

  it("leaves no subscription behind when sockets close right after opening", async () => {
    const prefix = freshPrefix("subs-flap");
    const [n1] = await twoNodes(prefix);
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const ta = await tokenFor(alice);
    const paths = [`/ws/${bob}/`, "/ws/notifications/", `/ws/notifications/${bob}/`];
    for (let i = 0; i < 45; i++) {
      const s = await connect(n1.g.url, paths[i % paths.length]!, ta);
      s.ws.terminate();
    }
    await waitFor(async () => expect(await channelsOf(prefix)).toEqual([]), 10_000);
    expect(await nodeSubscriptions(n1.id)).toBe(0);
  });
});
