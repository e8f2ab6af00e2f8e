/**
 * chat.js: the browser client for github.com/chatrelay/chat.
 *
 * A dependency-free ES module. Serve it from Go with chat.ClientScript()
 * (for example at /chat.js) and import it from a module script:
 *
 *   import { ChatClient } from "/chat.js";
 *
 *   const c = new ChatClient("/chat", { user: "alice", rooms: ["lobby"], history: 50 });
 *   c.addEventListener("state", (e) => console.log("connection:", e.detail.state));
 *   c.addEventListener("joined", (e) => {
 *     // e.detail.messages (the room's last 50 messages here) follow as "message" events.
 *     if (!e.detail.recovered) console.warn(`reconnected to ${e.detail.room}: messages may have been missed`);
 *   });
 *   c.addEventListener("message", (e) => {
 *     const m = e.detail; // {room, id, user, text, ts, instance, seq?, ref?, replay?}
 *     console.log(`[${m.room}] ${m.user}: ${m.text} (via ${m.instance})`);
 *   });
 *   c.addEventListener("error", (e) => console.warn(e.detail.code, e.detail.message));
 *   c.addEventListener("user_joined", (e) => console.log(`${e.detail.user} joined ${e.detail.room}`));
 *   const users = await c.presence("lobby"); // after "joined": ["alice", "bob"]
 *   // "closed": the server ended the connection for good, e.detail.message says why.
 *   c.join("random");
 *   const ref = c.send("lobby", "hello"); // ref comes back in the relayed message or in an error
 *
 * new ChatClient(url, options)
 *   url                The WebSocket endpoint: "ws(s)://…", "http(s)://…" or a path such as
 *                      "/chat", resolved against the page's location.
 *   options.user       Display name, sent as ?user= (a server with an authenticate hook ignores it):
 *                      1–32 printable characters, or empty for an anon-… name; throws a TypeError
 *                      otherwise.
 *   options.rooms      Rooms to join on connect, sent as ?room=….
 *   options.history    How many of a room's latest messages to ask for when the client joins it
 *                      for the first time (default 0: none; the server caps it at its WithHistory).
 *                      Sent as ?history= with the rooms of the first connection, as a join
 *                      frame's "history" otherwise, and with every rejoin (see Recovery): if the
 *                      missed messages cannot all be recovered, the latest ones come instead.
 *                      Throws a TypeError unless it is an integer, 0 or more.
 *   options.minDelay   First reconnect delay in ms (default 500).
 *   options.maxDelay   Largest reconnect delay in ms before jitter (default 10000). Each delay
 *                      doubles from minDelay up to maxDelay and is then scaled by 0.5–1.5 (±50 %).
 *
 * Properties (read-only): state, user, rooms (the rooms the client wants to be in; rejoined
 * after every reconnect), joinedRooms (the rooms the server has confirmed on this connection).
 *
 * Events: all are CustomEvents with the data in event.detail.
 *   state    {state, previous}: state is "connecting" (first attempt), "open",
 *            "reconnecting" (waiting or retrying after a drop) or "closed" (final).
 *   open     {reconnect}: the WebSocket opened; reconnect is true after the first time.
 *   close    {code, reason, wasClean, reconnect, delay}: the WebSocket closed; reason is the
 *            server's explanation, if any; reconnect tells whether another attempt follows,
 *            after delay ms.
 *   joined   {room, resumed, recovered, epoch?, seq?, messages}: the server confirmed the room.
 *            From then on every message of the room arrives, in order. resumed is true when the
 *            room was joined before a reconnect (of this client, or of the server to Redis).
 *            recovered is false when messages of the room may have been missed (a rejoin whose
 *            gap the server could not fill: the room's history was trimmed, expired or lost,
 *            or is off; or the server lost its own Redis subscription); true otherwise: a first
 *            join, or a rejoin that got every message sent in between. epoch and seq are the
 *            room's position at the join (see Recovery). messages holds the messages that came
 *            with the join, oldest first, already parsed and without the ones this client had
 *            already delivered: the history asked for, or the messages recovered after a
 *            reconnect (often empty). They are also dispatched, right after this event and
 *            before any live message, as ordinary "message" events with replay: true, so a page
 *            that renders "message" events shows them without doing anything else (do not
 *            render both).
 *   left     {room, reason?}: the room was left (once per leave() call), or the server took
 *            the user out of it (reason "kicked": the room is forgotten, not rejoined).
 *   user_joined  {room, user}: a user got a first connection in a joined room (on any server
 *            instance).
 *   user_left    {room, user}: a user's last connection in the room went, or its server
 *            instance died (announced within about a minute). Both come in order with the
 *            room's messages, only for rooms in rooms, and not for what happened while the
 *            connection was down: call presence() after each "joined" for the full list.
 *   message  {type, room, id, user, text, ts, instance, seq?, ref?, replay?}: a chat message as
 *            relayed by the server; ts is Unix milliseconds at the origin, instance the server
 *            instance that took it from its sender, seq its number in the room (1, 2, 3, … in an
 *            epoch; absent on a message that something other than the chat server published).
 *            There is no local echo: your own messages arrive here too, in the same order every
 *            member of the room sees. replay is true for a message that came with "joined"
 *            (history, or recovered after a reconnect) rather than live; its ref, if any, is
 *            the one its sender gave it then, possibly on an earlier page load. Duplicates are
 *            dropped: a seq not above the last one delivered for the room in the same epoch, or
 *            an id seen among the last 1000.
 *   error    {code, message, ref?, room?, closeCode?}: a server error frame (bad_request,
 *            invalid_room, not_joined, too_large, rate_limited, too_many_rooms, unavailable),
 *            or one raised here:
 *            not_connected  send() while the connection is down; nothing was sent.
 *            closed         the server closed the connection with a code that ends the client
 *                           (closeCode 1008 or 1009, see Reconnects); message is the server's
 *                           reason, such as a bad ?user= or ?room=, or too many rooms. Comes
 *                           after the close event and the state event to "closed".
 *            room is set for a failed join(); the room is then dropped from rooms. A rejoin
 *            that fails after a reconnect (such as unavailable) also sets room, but the room
 *            stays in rooms, unjoined, and is rejoined after the next reconnect.
 *
 * Methods:
 *   join(room)               Join a room (1–64 characters of A-Z a-z 0-9 . _ -; throws a
 *                            TypeError otherwise). Remembered across reconnects.
 *   leave(room)              Leave a room.
 *   send(room, text, ref?)   Send a message to a joined room; returns the ref, an automatic
 *                            "c1", "c2", … when none is given.
 *   presence(room)           Ask who is in a joined room: a Promise of the user names (every
 *                            user with a connection in the room on any instance, each once).
 *                            It rejects with an Error whose code is the server's (not_joined,
 *                            unavailable, …) or not_connected (the connection was down, or
 *                            closed before the answer); err.ref and err.room are set. A failed
 *                            presence() raises no "error" event: the rejection is the report.
 *   close()                  Close for good: no reconnect.
 *
 * Recovery: the client remembers each room's position, the epoch and seq of the last message
 * it delivered (or of the room when it was joined). After a reconnect it rejoins every room
 * whose position it knows with a join frame carrying since: {epoch, seq} (plus history when
 * that option is set), and other rooms with ?room=. The server answers with every message
 * after that position (recovered: true) if its history still holds them all, and the client
 * dispatches them before the live ones: the page sees every message once, in order, as if the
 * connection had never dropped. Otherwise (recovered: false: the room's epoch changed because
 * its key expired or Redis lost it, or the history was trimmed past the position or is off)
 * the page should say that messages may be missing. leave() forgets a room's position, and so
 * does a resumed joined without one (a server that lost its Redis subscription, which Redis may
 * have lost the room's epoch with): that room is then told apart by ids only, and its next
 * rejoin goes by ?room= and reports recovered: false.
 *
 * Reconnects: after any close except close() and the close codes 1008 (policy) and 1009
 * (message too big), which are not transient; 1001 (server going away), 1006 (dropped) and
 * 1013 (too slow) are retried. The rejoins go through the server's rate limit like any frame
 * (20 a second in bursts of 40 by default), which is more than the rooms one connection may
 * hold (32 by default). A connection has to stay up for 5 s before the backoff starts
 * again from minDelay. The server accepts a connection with a bad ?user= or ?room=, or with
 * more rooms than it allows, and closes it with 1008 and a reason: the client stops and
 * reports the reason (error event "closed"). A handshake the server refuses outright (HTTP
 * 401 from authentication, 403 for an origin) looks like a dropped connection (1006) to a
 * browser, so such a client keeps retrying at maxDelay; the state event shows it.
 */

const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;
// Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space.
const USER_RE = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]{1,32}$/u;
const FINAL_CODES = new Set([1008, 1009]);
const STABLE_MS = 5000;
const SEEN_IDS = 1000;

function toWebSocketURL(url) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const u = new URL(String(url), base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`ChatClient: unsupported URL scheme ${u.protocol}`);
  }
  u.hash = "";
  return u;
}

function checkUser(user) {
  user = String(user ?? "");
  // The server would close the connection with 1008 for a bad ?user=;
  // checking here reports it at once, where the name is set.
  if (user !== "" && (!USER_RE.test(user) || [...user].length > 32)) {
    throw new TypeError(`ChatClient: invalid user name ${JSON.stringify(user)} (1-32 printable characters)`);
  }
  return user;
}

function presenceError(code, message, ref, room) {
  return Object.assign(new Error(`presence ${room}: ${code}: ${message}`), { code, ref, room });
}

function checkRoom(room) {
  if (typeof room !== "string" || !ROOM_RE.test(room)) {
    throw new TypeError(`ChatClient: invalid room name ${JSON.stringify(room)} (1-64 characters of A-Z a-z 0-9 . _ -)`);
  }
  return room;
}

export class ChatClient extends EventTarget {
  #url;
  #user;
  #minDelay;
  #maxDelay;
  #ws = null;
  #state = "closed";
  #closing = false; // close() was called
  #rooms = new Set(); // rooms the user wants
  #joined = new Set(); // rooms confirmed on the current socket
  #resume = new Set(); // rooms confirmed on an earlier socket, not yet again
  #urlRooms = new Set(); // rooms passed as ?room= on the current socket
  #joinRefs = new Map(); // ref of a join frame → {room, rejoin}
  #presenceRefs = new Map(); // ref of a presence frame → {room, resolve, reject}
  #leaving = new Map(); // room → whether its "left" event is still owed
  #history = 0; // latest messages to ask for on a room's first join
  #pos = new Map(); // room → {epoch, seq}: the position of the last message delivered
  #seen = new Set();
  #seenOrder = [];
  #refSeq = 0;
  #attempt = 0;
  #timer = 0;
  #openedAt = 0;
  #everOpened = false;
  #onOnline = () => {
    if (this.#state === "reconnecting" && this.#timer) this.#connect();
  };

  constructor(url, { user = "", rooms = [], history = 0, minDelay = 500, maxDelay = 10000 } = {}) {
    super();
    this.#url = toWebSocketURL(url);
    this.#user = checkUser(user);
    if (!Number.isSafeInteger(history) || history < 0) {
      throw new TypeError(`ChatClient: invalid history ${JSON.stringify(history)} (a count of messages, 0 or more)`);
    }
    this.#history = history;
    this.#minDelay = Math.max(0, Number(minDelay) || 0);
    this.#maxDelay = Math.max(this.#minDelay, Number(maxDelay) || 0);
    for (const r of rooms) this.#rooms.add(checkRoom(r));
    if (typeof addEventListener === "function") addEventListener("online", this.#onOnline);
    this.#connect();
    // Listeners added right after the constructor still see the first state.
    queueMicrotask(() => {
      if (this.#state === "connecting") this.#emit("state", { state: "connecting", previous: "closed" });
    });
  }

  get state() { return this.#state; }
  get user() { return this.#user; }
  get rooms() { return [...this.#rooms]; }
  get joinedRooms() { return [...this.#joined]; }

  join(room) {
    checkRoom(room);
    if (this.#closing || this.#rooms.has(room)) return;
    this.#rooms.add(room);
    if (this.#isOpen()) this.#sendJoin(room);
    // Otherwise the room goes into the URL of the next connection, or is
    // joined when the socket that is connecting now opens.
  }

  leave(room) {
    if (!this.#rooms.delete(room)) return;
    this.#resume.delete(room);
    this.#pos.delete(room); // joined again, it is a first join: history, not recovery
    if (this.#isOpen()) {
      this.#leaving.set(room, true);
      this.#sendFrame({ type: "leave", room });
    } else {
      queueMicrotask(() => this.#emit("left", { room }));
    }
  }

  send(room, text, ref) {
    ref = ref === undefined || ref === null ? `c${++this.#refSeq}` : String(ref);
    if (!this.#sendFrame({ type: "message", room, text: String(text), ref })) {
      queueMicrotask(() =>
        this.#emit("error", { code: "not_connected", message: "not connected: the message was not sent", ref, room }));
    }
    return ref;
  }

  presence(room) {
    const ref = `p${++this.#refSeq}`;
    return new Promise((resolve, reject) => {
      if (!this.#sendFrame({ type: "presence", room, ref })) {
        reject(presenceError("not_connected", "not connected: presence was not asked", ref, room));
        return;
      }
      this.#presenceRefs.set(ref, { room, resolve, reject });
    });
  }

  close() {
    if (this.#closing) return;
    this.#closing = true;
    clearTimeout(this.#timer);
    this.#timer = 0;
    if (typeof removeEventListener === "function") removeEventListener("online", this.#onOnline);
    if (this.#ws) this.#ws.close(1000, "client closed");
    this.#failPresence();
    this.#setState("closed");
  }

  // #failPresence rejects the presence() calls still waiting for an answer:
  // the connection they were asked on is gone.
  #failPresence() {
    const pending = [...this.#presenceRefs];
    this.#presenceRefs.clear();
    for (const [ref, p] of pending) {
      p.reject(presenceError("not_connected", "the connection closed before the presence answer", ref, p.room));
    }
  }

  #isOpen() {
    return this.#ws !== null && this.#ws.readyState === WebSocket.OPEN;
  }

  #sendFrame(frame) {
    if (!this.#isOpen()) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  // #sendJoin joins room with a frame: with since when its position is
  // known (a rejoin after a reconnect), with history when that is asked for.
  #sendJoin(room) {
    const ref = `j${++this.#refSeq}`;
    const frame = { type: "join", room, ref };
    const pos = this.#pos.get(room);
    if (pos) frame.since = { epoch: pos.epoch, seq: pos.seq };
    if (this.#history > 0) frame.history = this.#history;
    this.#joinRefs.set(ref, { room, rejoin: pos !== undefined });
    this.#sendFrame(frame);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit("state", { state, previous });
  }

  #connect() {
    clearTimeout(this.#timer);
    this.#timer = 0;
    const u = new URL(this.#url);
    u.searchParams.delete("room");
    u.searchParams.delete("user");
    u.searchParams.delete("history");
    if (this.#user) u.searchParams.set("user", this.#user);
    // Rooms with a known position are rejoined with since, which only a
    // join frame can carry (#handleOpen); the others go in the URL.
    this.#urlRooms = new Set([...this.#rooms].filter((r) => !this.#pos.has(r)));
    for (const r of this.#urlRooms) u.searchParams.append("room", r);
    if (this.#urlRooms.size > 0 && this.#history > 0) u.searchParams.set("history", String(this.#history));
    if (this.#state !== "reconnecting") this.#setState("connecting");

    const ws = new WebSocket(u);
    this.#ws = ws;
    ws.onopen = () => { if (ws === this.#ws) this.#handleOpen(); };
    ws.onmessage = (e) => { if (ws === this.#ws) this.#handleFrame(e.data); };
    ws.onclose = (e) => { if (ws === this.#ws) this.#handleClose(e); };
  }

  #handleOpen() {
    this.#openedAt = Date.now();
    const reconnect = this.#everOpened;
    this.#everOpened = true;
    // Rooms to rejoin with since, and rooms joined while this socket was
    // connecting, were not in its URL.
    for (const r of this.#rooms) if (!this.#urlRooms.has(r)) this.#sendJoin(r);
    if (!this.#closing) this.#setState("open");
    this.#emit("open", { reconnect });
  }

  #handleFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== "object") return;
    switch (f.type) {
      case "joined": {
        for (const [ref, j] of this.#joinRefs) if (j.room === f.room) this.#joinRefs.delete(ref);
        if (!this.#rooms.has(f.room)) {
          // Left (or never wanted) while the join was on its way: undo it quietly.
          if (!this.#leaving.has(f.room)) {
            this.#leaving.set(f.room, false);
            this.#sendFrame({ type: "leave", room: f.room });
          }
          return;
        }
        const rejoin = this.#resume.has(f.room);
        const resumed = f.resumed === true || rejoin;
        this.#resume.delete(f.room);
        this.#joined.add(f.room);
        const before = this.#pos.get(f.room);
        // Messages may be missing when the server says so (recovered:false,
        // or resumed without recovered: a server that lost its Redis
        // subscription), or after a rejoin without since (no position known).
        let recovered;
        if (typeof f.recovered === "boolean") recovered = f.recovered;
        else recovered = !(f.resumed === true || (rejoin && before === undefined));
        const messages = [];
        for (const m of Array.isArray(f.messages) ? f.messages : []) {
          if (!m || typeof m !== "object" || m.room !== f.room) continue;
          // Dedup against what was delivered before this join: same epoch, seq
          // not above the last one (a rejoin whose gap could not be filled
          // gets the latest messages, some of which were shown already).
          if (typeof m.seq === "number" && before && before.epoch === f.epoch && m.seq <= before.seq) continue;
          if (this.#seenBefore(m.id)) continue;
          m.replay = true;
          messages.push(m);
        }
        if (typeof f.epoch === "string" && typeof f.seq === "number") {
          this.#pos.set(f.room, { epoch: f.epoch, seq: f.seq });
        } else {
          // A server that lost its Redis subscription says resumed without
          // a position: the room's epoch may have changed (Redis restarted),
          // so the old position could drop new messages as duplicates.
          // Until the next join, ids alone tell duplicates.
          this.#pos.delete(f.room);
        }
        const detail = { room: f.room, resumed, recovered, messages };
        if (typeof f.epoch === "string") detail.epoch = f.epoch;
        if (typeof f.seq === "number") detail.seq = f.seq;
        this.#emit("joined", detail);
        for (const m of messages) {
          if (!this.#rooms.has(f.room)) break; // a listener left the room
          this.#emit("message", m);
        }
        return;
      }
      case "left": {
        this.#joined.delete(f.room);
        const owed = this.#leaving.get(f.room);
        this.#leaving.delete(f.room);
        if (typeof f.reason === "string") {
          // The server took us out (kicked): do not rejoin on a reconnect.
          this.#rooms.delete(f.room);
          this.#pos.delete(f.room);
          this.#emit("left", { room: f.room, reason: f.reason });
          return;
        }
        if (owed) this.#emit("left", { room: f.room });
        return;
      }
      case "message": {
        if (typeof f.seq === "number") {
          const pos = this.#pos.get(f.room);
          if (pos) {
            if (f.seq <= pos.seq) return; // delivered already
            pos.seq = f.seq;
          }
        }
        if (this.#seenBefore(f.id)) return;
        this.#emit("message", f);
        return;
      }
      case "presence": {
        const p = this.#presenceRefs.get(f.ref);
        if (p === undefined) return;
        this.#presenceRefs.delete(f.ref);
        p.resolve(Array.isArray(f.users) ? f.users.filter((u) => typeof u === "string") : []);
        return;
      }
      case "user_joined":
      case "user_left": {
        // Not for a room being left (or kicked from): its list is gone.
        if (typeof f.user === "string" && this.#rooms.has(f.room)) this.#emit(f.type, { room: f.room, user: f.user });
        return;
      }
      case "error": {
        const p = f.ref !== undefined ? this.#presenceRefs.get(f.ref) : undefined;
        if (p !== undefined) {
          this.#presenceRefs.delete(f.ref);
          p.reject(presenceError(f.code, f.message, f.ref, p.room));
          return;
        }
        const detail = { code: f.code, message: f.message };
        if (f.ref !== undefined) detail.ref = f.ref;
        if (f.room !== undefined) detail.room = f.room;
        const join = f.ref !== undefined ? this.#joinRefs.get(f.ref) : undefined;
        if (join !== undefined) {
          this.#joinRefs.delete(f.ref);
          detail.room = join.room;
          if (!join.rejoin) {
            this.#rooms.delete(join.room);
            this.#resume.delete(join.room);
            this.#pos.delete(join.room);
          }
          // A failed rejoin keeps the room (and its position) for the next
          // connection: the user did not ask to leave it.
        }
        this.#emit("error", detail);
        return;
      }
    }
  }

  // #seenBefore records id among the last SEEN_IDS ones and tells whether
  // it was there already.
  #seenBefore(id) {
    if (id === undefined) return false;
    if (this.#seen.has(id)) return true;
    this.#seen.add(id);
    this.#seenOrder.push(id);
    if (this.#seenOrder.length > SEEN_IDS) this.#seen.delete(this.#seenOrder.shift());
    return false;
  }

  #handleClose(e) {
    this.#ws = null;
    for (const r of this.#joined) if (this.#rooms.has(r)) this.#resume.add(r);
    this.#joined.clear();
    this.#joinRefs.clear();
    this.#failPresence();
    const owed = [...this.#leaving].filter(([, o]) => o).map(([r]) => r);
    this.#leaving.clear();
    for (const room of owed) this.#emit("left", { room });

    const reconnect = !this.#closing && !FINAL_CODES.has(e.code);
    let delay = 0;
    if (reconnect) {
      if (this.#openedAt && Date.now() - this.#openedAt >= STABLE_MS) this.#attempt = 0;
      const base = Math.min(this.#maxDelay, this.#minDelay * 2 ** this.#attempt);
      delay = Math.round(base * (0.5 + Math.random()));
      this.#attempt++;
    }
    this.#openedAt = 0;
    this.#emit("close", { code: e.code, reason: e.reason, wasClean: e.wasClean, reconnect, delay });
    if (!reconnect) {
      const byServer = !this.#closing; // 1008 or 1009, not close()
      this.#closing = true;
      if (typeof removeEventListener === "function") removeEventListener("online", this.#onOnline);
      this.#setState("closed");
      if (byServer) {
        this.#emit("error", { code: "closed", message: e.reason || `closed by the server (code ${e.code})`, closeCode: e.code });
      }
      return;
    }
    this.#setState("reconnecting");
    this.#timer = setTimeout(() => this.#connect(), delay);
  }
}
