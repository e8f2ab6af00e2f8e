// Unit test of chat.js (the browser client) with a fake WebSocket, run by
// TestChatJSClient with node: URLs, joins and leaves (also while connecting
// or down), dedup by id, failed joins, resumed, backoff, and which close codes
// end the client. The Go test copies chat.js next to this file as chat.mjs.
import assert from "node:assert/strict";
const sockets = [];
class FakeWS {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) { this.url = String(url); this.readyState = 0; this.sent = []; sockets.push(this); }
  send(d) { assert.equal(this.readyState, 1); this.sent.push(JSON.parse(d)); }
  close(code = 1000, reason = "") { this.readyState = 3; setTimeout(() => this.onclose?.({ code, reason, wasClean: true })); }
  _open() { this.readyState = 1; this.onopen?.({}); }
  _recv(f) { this.onmessage?.({ data: JSON.stringify(f) }); }
  _drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: "", wasClean: false }); }
}
globalThis.WebSocket = FakeWS;
globalThis.location = { href: "http://example.test:8080/page" };
const { ChatClient } = await import("./chat.mjs");
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

const c = new ChatClient("/chat", { user: "al ice", rooms: ["lobby", "b"], minDelay: 10, maxDelay: 80 });
const ev = [];
for (const t of ["state", "open", "close", "joined", "left", "message", "error"]) c.addEventListener(t, (e) => ev.push([t, e.detail]));
await tick();
assert.deepEqual(ev[0], ["state", { state: "connecting", previous: "closed" }]);
let s = sockets[0];
assert.equal(s.url, "ws://example.test:8080/chat?user=al+ice&room=lobby&room=b");
c.join("late"); // while connecting
s._open();
assert.deepEqual(s.sent, [{ type: "join", room: "late", ref: "j1" }]);
s._recv({ type: "joined", room: "lobby" }); s._recv({ type: "joined", room: "b" }); s._recv({ type: "joined", room: "late" });
assert.deepEqual(ev.filter(e => e[0] === "joined").map(e => e[1]), [{ room: "lobby", resumed: false }, { room: "b", resumed: false }, { room: "late", resumed: false }]);
const ref = c.send("lobby", "hi");
assert.equal(ref, "c2");
assert.deepEqual(s.sent.at(-1), { type: "message", room: "lobby", text: "hi", ref: "c2" });
s._recv({ type: "message", room: "lobby", id: "x1", user: "al ice", text: "hi", ts: 1, instance: "i", ref: "c2" });
s._recv({ type: "message", room: "lobby", id: "x1", user: "al ice", text: "hi", ts: 1, instance: "i", ref: "c2" }); // dup
assert.equal(ev.filter(e => e[0] === "message").length, 1);
// failed join
c.join("bad-join");
const jref = s.sent.at(-1).ref;
s._recv({ type: "error", code: "too_many_rooms", message: "nope", ref: jref });
assert.deepEqual(ev.at(-1), ["error", { code: "too_many_rooms", message: "nope", ref: jref, room: "bad-join" }]);
assert.ok(!c.rooms.includes("bad-join"));
// leave b
c.leave("b");
assert.deepEqual(s.sent.at(-1), { type: "leave", room: "b" });
s._recv({ type: "left", room: "b" });
assert.deepEqual(ev.at(-1), ["left", { room: "b" }]);
assert.deepEqual(c.rooms, ["lobby", "late"]);
// server side redis reconnect
s._recv({ type: "joined", room: "lobby", resumed: true });
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true }]);
// drop 1006 -> reconnect with rooms in URL; resumed true
s._drop(1006);
assert.equal(c.state, "reconnecting");
const cl = ev.filter(e => e[0] === "close").at(-1)[1];
assert.ok(cl.reconnect && cl.delay >= 5 && cl.delay <= 15, JSON.stringify(cl));
c.leave("late"); // while down: immediate left
assert.equal(c.send("lobby", "x"), "c4");
await tick(30);
assert.ok(ev.some(e => e[0] === "left" && e[1].room === "late"));
assert.ok(ev.some(e => e[0] === "error" && e[1].code === "not_connected" && e[1].ref === "c4"));
s = sockets[1];
assert.ok(s, "reconnected");
assert.equal(s.url, "ws://example.test:8080/chat?user=al+ice&room=lobby");
s._open();
assert.equal(c.state, "open");
assert.deepEqual(ev.filter(e => e[0] === "open").map(e => e[1]), [{ reconnect: false }, { reconnect: true }]);
s._recv({ type: "joined", room: "lobby" });
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true }]);
// backoff grows while failing
const delays = [];
for (let i = 0; i < 5; i++) {
  sockets.at(-1)._drop(1006);
  delays.push(ev.filter(e => e[0] === "close").at(-1)[1].delay);
  await tick(130);
}
assert.ok(delays.at(-1) >= 40 && delays.at(-1) <= 120);
// 1013 reconnects, 1009 doesn't
s = sockets.at(-1); s._open(); s._drop(1013); assert.equal(c.state, "reconnecting");
await tick(130);
s = sockets.at(-1); s._open(); s._recv({ type: "joined", room: "lobby" });
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true }]);
const n = sockets.length;
s._drop(1009);
assert.equal(c.state, "closed");
await tick(200);
assert.equal(sockets.length, n, "no reconnect after 1009");

// user close: no reconnect
const c2 = new ChatClient("wss://x.test/chat", { rooms: [] });
const s2 = sockets.at(-1);
assert.equal(s2.url, "wss://x.test/chat");
s2._open(); c2.close(); assert.equal(c2.state, "closed");
await tick(100);
assert.equal(sockets.at(-1), s2);
// leave while connecting -> joined undone quietly
const c3 = new ChatClient("http://x.test/chat", { rooms: ["r1"] });
const ev3 = []; for (const t of ["joined", "left"]) c3.addEventListener(t, (e) => ev3.push([t, e.detail]));
const s3 = sockets.at(-1);
c3.leave("r1");
await tick();
s3._open(); s3._recv({ type: "joined", room: "r1" });
assert.deepEqual(s3.sent, [{ type: "leave", room: "r1" }]);
s3._recv({ type: "left", room: "r1" });
assert.deepEqual(ev3, [["left", { room: "r1" }]]);
assert.throws(() => c3.join("bad room"), TypeError);
c3.close();
assert.throws(() => new ChatClient("/chat", { user: "x".repeat(33) }), TypeError);
assert.throws(() => new ChatClient("/chat", { user: "tab\there" }), TypeError);
new ChatClient("/chat", { user: "ünï 😀 b-o_b" }).close();
new ChatClient("/chat", { user: "😀".repeat(32) }).close();
new ChatClient("/chat").close();
console.log("all ok");
