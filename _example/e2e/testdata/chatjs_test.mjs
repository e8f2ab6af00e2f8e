// Unit test of chat.js (the browser client) with a fake WebSocket, run by
// TestChatJSClient with node: URLs, joins and leaves (also while connecting
// or down), dedup by id, failed joins, resumed, backoff, which close codes
// end the client, and (at the end) history and recovery: the position kept
// per room, since on rejoin, duplicates dropped by seq, recovered reported;
// a kick; and presence (presence(), user_joined, user_left).
// The Go test copies chat.js next to this file as chat.mjs.
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
// A server without positions (no epoch in joined): joins as before.
const first = { resumed: false, recovered: true, messages: [] };
assert.deepEqual(ev.filter(e => e[0] === "joined").map(e => e[1]), [{ room: "lobby", ...first }, { room: "b", ...first }, { room: "late", ...first }]);
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
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true, recovered: false, messages: [] }]);
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
// No position known, so no since: messages may be missing.
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true, recovered: false, messages: [] }]);
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
assert.deepEqual(ev.at(-1), ["joined", { room: "lobby", resumed: true, recovered: false, messages: [] }]);
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
assert.throws(() => new ChatClient("/chat", { history: -1 }), TypeError);
assert.throws(() => new ChatClient("/chat", { history: 2.5 }), TypeError);
assert.throws(() => new ChatClient("/chat", { history: "50" }), TypeError);

// ---- history and recovery ----
const msg = (room, seq, extra = {}) =>
  ({ type: "message", room, id: `${room}-${seq}${extra.idSuffix ?? ""}`, user: "u", text: `t${seq}`, ts: seq, instance: "i", seq });
const h = new ChatClient("/chat", { user: "u", rooms: ["r1", "r2"], history: 5, minDelay: 1, maxDelay: 2 });
const hev = [];
for (const t of ["joined", "message", "error"]) h.addEventListener(t, (e) => hev.push([t, e.detail]));
const take = () => hev.splice(0);
// reconnected drops socket s and waits for the client's next one.
const reconnected = async (s) => {
  s._drop(1006);
  while (sockets.at(-1) === s) await tick(1);
  return sockets.at(-1);
};
const texts = (evs) => evs.map(([t, d]) => t === "message" ? `${d.room}:${d.seq}${d.replay ? "r" : ""}` : `${t}:${d.room}`);
let hs = sockets.at(-1);
// First connection: the initial rooms in the URL, with the history asked for.
assert.equal(hs.url, "ws://example.test:8080/chat?user=u&room=r1&room=r2&history=5");
hs._open();
assert.deepEqual(hs.sent, []);
// joined carries the history: in the joined detail, then as message events
// (replay: true) before any live message.
hs._recv({ type: "joined", room: "r1", epoch: "E1", seq: 3, messages: [msg("r1", 1), msg("r1", 2), msg("r1", 3)] });
hs._recv({ type: "joined", room: "r2", epoch: "E2", seq: 0, messages: [] });
hs._recv(msg("r1", 4));
let got = take();
assert.deepEqual(texts(got), ["joined:r1", "r1:1r", "r1:2r", "r1:3r", "joined:r2", "r1:4"]);
assert.deepEqual({ ...got[0][1], messages: got[0][1].messages.map(m => m.seq) },
  { room: "r1", resumed: false, recovered: true, epoch: "E1", seq: 3, messages: [1, 2, 3] });
assert.equal(got[1][1], got[0][1].messages[0], "the joined detail's messages are the ones dispatched");
assert.equal(got.at(-1)[1].replay, undefined, "a live message is not a replay");
// Duplicates by seq: a seq not above the last one delivered in the epoch is
// dropped, whatever its id (a copy that came twice); so is a repeated id.
hs._recv(msg("r1", 4, { idSuffix: "-copy" }));
hs._recv(msg("r1", 2, { idSuffix: "-copy" }));
hs._recv(msg("r1", 5));
hs._recv(msg("r1", 5));
assert.deepEqual(texts(take()), ["r1:5"]);
// A room joined while open: a join frame with history, no since.
h.join("r3");
assert.deepEqual(hs.sent.at(-1), { type: "join", room: "r3", ref: hs.sent.at(-1).ref, history: 5 });

// The connection drops before r3 is confirmed. The new URL holds only r3
// (no position yet); r1 and r2 are rejoined with since, from their last seq.
hs = await reconnected(hs);
assert.equal(hs.url, "ws://example.test:8080/chat?user=u&room=r3&history=5");
hs._open();
const [j1, j2] = hs.sent;
assert.deepEqual(hs.sent, [
  { type: "join", room: "r1", ref: j1.ref, since: { epoch: "E1", seq: 5 }, history: 5 },
  { type: "join", room: "r2", ref: j2.ref, since: { epoch: "E2", seq: 0 }, history: 5 },
]);
// r1 recovered: what was missed arrives once, in order (the one already
// delivered, seq 5, is dropped), before the live messages; nothing missing.
hs._recv({ type: "joined", room: "r1", epoch: "E1", seq: 7, recovered: true, messages: [msg("r1", 5), msg("r1", 6), msg("r1", 7)] });
hs._recv(msg("r1", 8));
got = take();
assert.deepEqual(texts(got), ["joined:r1", "r1:6r", "r1:7r", "r1:8"]);
assert.deepEqual({ ...got[0][1], messages: got[0][1].messages.length },
  { room: "r1", resumed: true, recovered: true, epoch: "E1", seq: 7, messages: 2 });
// r2 could not be recovered: its key expired and a new epoch began, whose
// latest messages come instead; seq 1 and 2 of the new epoch are new.
hs._recv({ type: "joined", room: "r2", epoch: "E2b", seq: 2, recovered: false, messages: [msg("r2", 1, { idSuffix: "b" }), msg("r2", 2, { idSuffix: "b" })] });
hs._recv({ type: "joined", room: "r3", epoch: "E3", seq: 0, messages: [] });
hs._recv(msg("r2", 2, { idSuffix: "b" })); // a copy
hs._recv(msg("r2", 3, { idSuffix: "b" }));
got = take();
assert.deepEqual(texts(got), ["joined:r2", "r2:1r", "r2:2r", "joined:r3", "r2:3"]);
assert.deepEqual({ ...got[0][1], messages: got[0][1].messages.length },
  { room: "r2", resumed: true, recovered: false, epoch: "E2b", seq: 2, messages: 2 });
assert.deepEqual(got[3][1], { room: "r3", resumed: false, recovered: true, epoch: "E3", seq: 0, messages: [] });

// The server lost its Redis subscription and says so without a position
// (resumed, no epoch): messages may be missing, and since Redis may have
// restarted (a new epoch from seq 1), the old position no longer drops
// anything; ids still do.
hs._recv({ type: "joined", room: "r1", resumed: true });
hs._recv({ ...msg("r1", 1, { idSuffix: "-new" }) });
hs._recv({ ...msg("r1", 1, { idSuffix: "-new" }) });
got = take();
assert.deepEqual(texts(got), ["joined:r1", "r1:1"]);
assert.deepEqual(got[0][1], { room: "r1", resumed: true, recovered: false, messages: [] });
// The same with a position (the server's gap notice): it becomes the room's.
hs._recv({ type: "joined", room: "r3", resumed: true, recovered: false, epoch: "E3b", seq: 4 });
hs._recv(msg("r3", 4));
hs._recv(msg("r3", 5));
got = take();
assert.deepEqual(texts(got), ["joined:r3", "r3:5"]);
assert.deepEqual(got[0][1], { room: "r3", resumed: true, recovered: false, epoch: "E3b", seq: 4, messages: [] });

// A rejoin that fails keeps the room (and its position) for the next
// connection; r1 has no position now (see above), so it goes in the URL.
hs = await reconnected(hs);
assert.equal(hs.url, "ws://example.test:8080/chat?user=u&room=r1&history=5");
hs._open();
const rj3 = hs.sent.find(f => f.room === "r3");
assert.deepEqual(rj3, { type: "join", room: "r3", ref: rj3.ref, since: { epoch: "E3b", seq: 5 }, history: 5 });
hs._recv({ type: "error", code: "unavailable", message: "cannot join r3", ref: rj3.ref });
assert.deepEqual(take().at(-1), ["error", { code: "unavailable", message: "cannot join r3", ref: rj3.ref, room: "r3" }]);
assert.deepEqual(h.rooms, ["r1", "r2", "r3"]);
hs = await reconnected(hs);
hs._open();
assert.deepEqual(hs.sent.find(f => f.room === "r3").since, { epoch: "E3b", seq: 5 });
hs._recv({ type: "joined", room: "r3", epoch: "E3b", seq: 5, recovered: true });
got = take();
assert.deepEqual(got, [["joined", { room: "r3", resumed: true, recovered: true, epoch: "E3b", seq: 5, messages: [] }]]);
// leave() forgets the position: joined again, the room gets its history,
// not a recovery.
const r2pos = hs.sent.find(f => f.room === "r2");
hs._recv({ type: "joined", room: "r2", epoch: "E2b", seq: 3, recovered: true });
h.leave("r2");
hs._recv({ type: "left", room: "r2" });
h.join("r2");
assert.deepEqual(r2pos.since, { epoch: "E2b", seq: 3 });
assert.deepEqual(hs.sent.at(-1), { type: "join", room: "r2", ref: hs.sent.at(-1).ref, history: 5 });
h.close();
// Without the history option, no ?history= and no history field.
const nh = new ChatClient("/chat", { rooms: ["a"], minDelay: 1, maxDelay: 2 });
const nhs = sockets.at(-1);
assert.equal(nhs.url, "ws://example.test:8080/chat?room=a");
nhs._open();
nhs._recv({ type: "joined", room: "a", epoch: "E", seq: 9 });
const nhs2 = await reconnected(nhs);
assert.equal(nhs2.url, "ws://example.test:8080/chat");
nhs2._open();
assert.deepEqual(nhs2.sent, [{ type: "join", room: "a", ref: nhs2.sent[0].ref, since: { epoch: "E", seq: 9 } }]);
nh.close();
// Kicked: the server's left with a reason; the room is forgotten and not
// rejoined after a reconnect.
const k = new ChatClient("/chat", { rooms: ["k", "stay"], minDelay: 1, maxDelay: 2 });
const kev = [];
k.addEventListener("left", (e) => kev.push(e.detail));
const ks = sockets.at(-1);
ks._open();
ks._recv({ type: "joined", room: "k", epoch: "E", seq: 1 });
ks._recv({ type: "joined", room: "stay", epoch: "E", seq: 1 });
ks._recv({ type: "left", room: "k", reason: "kicked" });
assert.deepEqual(kev, [{ room: "k", reason: "kicked" }]);
assert.deepEqual(k.rooms, ["stay"]);
const ks2 = await reconnected(ks);
ks2._open();
assert.deepEqual(ks2.sent.map(f => f.room), ["stay"]);
k.close();

// Presence: presence(room) sends a presence frame with a ref and resolves
// with the users of the reply with that ref; an error frame with its ref
// rejects it (without an "error" event), and so does a connection that
// closes before the answer, or none at all. user_joined and user_left come
// as events with {room, user}.
const p = new ChatClient("/chat", { user: "alice", rooms: ["pr"], minDelay: 1, maxDelay: 2 });
const pev = [];
for (const t of ["user_joined", "user_left", "error"]) p.addEventListener(t, (e) => pev.push([t, e.detail]));
await assert.rejects(p.presence("pr"), (err) => err.code === "not_connected" && err.room === "pr" && typeof err.ref === "string");
let ps = sockets.at(-1);
ps._open();
ps._recv({ type: "joined", room: "pr", epoch: "E", seq: 0 });
const pr1 = p.presence("pr");
const pr2 = p.presence("pr");
const [q1, q2] = ps.sent.slice(-2);
assert.deepEqual(q1, { type: "presence", room: "pr", ref: q1.ref });
assert.deepEqual(q2, { type: "presence", room: "pr", ref: q2.ref });
assert.notEqual(q1.ref, q2.ref);
ps._recv({ type: "presence", room: "pr", users: ["alice", "carol"], ref: "unknown" }); // not ours: ignored
ps._recv({ type: "presence", room: "pr", users: ["alice", "bob"], ref: q2.ref });
ps._recv({ type: "presence", room: "pr", users: ["alice"], ref: q1.ref });
assert.deepEqual(await pr1, ["alice"]);
assert.deepEqual(await pr2, ["alice", "bob"]);
const pr3 = p.presence("nope");
const q3 = ps.sent.at(-1);
ps._recv({ type: "error", code: "not_joined", message: "not in nope", ref: q3.ref });
await assert.rejects(pr3, (err) => err.code === "not_joined" && err.ref === q3.ref && err.room === "nope" && err instanceof Error);
assert.deepEqual(pev, [], "a failed presence() is reported by its rejection only");
// A reply with the same ref after the rejection changes nothing.
ps._recv({ type: "presence", room: "nope", users: ["x"], ref: q3.ref });
ps._recv({ type: "user_joined", room: "pr", user: "bob" });
ps._recv(msg("pr", 1));
ps._recv({ type: "user_left", room: "pr", user: "bob" });
ps._recv({ type: "user_left", room: "elsewhere", user: "zed" }); // not a room of ours
assert.deepEqual(pev, [["user_joined", { room: "pr", user: "bob" }], ["user_left", { room: "pr", user: "bob" }]]);
// The connection drops before the answer: rejected, and the reply of the
// old connection's ref never comes.
const pr4 = assert.rejects(p.presence("pr"), (err) => err.code === "not_connected" && err.room === "pr");
ps = await reconnected(ps);
await pr4;
ps._open();
ps._recv({ type: "joined", room: "pr", epoch: "E", seq: 1, recovered: true });
const pr5 = p.presence("pr");
p.close();
await assert.rejects(pr5, (err) => err.code === "not_connected");
console.log("all ok");
