// The demo page. Everything a user typed is put in the page with textContent,
// never innerHTML.
import { ChatClient } from "/chat.js";

const ROOM_RE = /^[A-Za-z0-9._-]{1,64}$/;
const MAX_ERRORS = 5;
const HISTORY = 50; // messages a room shows when it is joined, and after a reload
const $ = (id) => document.getElementById(id);
const myInstance = document.body.dataset.instance;

let client = null;
let active = null; // the room the composer sends to
const rooms = new Map(); // room → {tab, panel, list, unread, count, ids, countReplay, members, users, pending}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function load(key, fallback) {
  try {
    return JSON.parse(sessionStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}
function save() {
  sessionStorage.setItem("chat.name", JSON.stringify($("name").value.trim()));
  sessionStorage.setItem("chat.rooms", JSON.stringify([...rooms.keys()]));
}

// ---- rooms: one tab and one message panel each ----

function addRoom(room) {
  let r = rooms.get(room);
  if (r) return r;
  const unread = el("span", { class: "unread", "data-testid": "unread" });
  const tab = el("div", { class: "tab", role: "tab", "data-testid": "tab", "data-room": room, "data-joined": "false", "aria-selected": "false" },
    el("button", { type: "button", class: "tab-select", "data-testid": "tab-select", onclick: () => select(room) }, `#${room}`, unread),
    el("button", { type: "button", class: "tab-leave", "data-testid": "leave", "aria-label": `Leave ${room}`, title: `Leave ${room}`, onclick: () => leave(room) }, "×"));
  const list = el("ol", { class: "messages", "data-testid": "messages" });
  const panel = el("section", { class: "panel", role: "tabpanel", "data-testid": "panel", "data-room": room, "aria-label": `#${room}`, hidden: "" }, list);
  const memberList = el("ul", { class: "member-list", "data-testid": "member-list" });
  const members = el("section", { class: "members", "data-testid": "members", "data-room": room, "data-stale": "true", "aria-label": `Members of #${room}`, hidden: "" },
    el("h2", { text: "Members" }), memberList);
  $("tabs").append(tab);
  $("panels").append(panel);
  $("members").append(members);
  // ids: the messages shown, so that a new connection (a new name) that
  // asks for the history again shows none twice. countReplay: whether the
  // messages that come with the room's latest "joined" count as unread
  // (missed during a reconnect) or not (history).
  // users: the room's members as last known; pending: the user_joined and
  // user_left events that came while a presence() answer was on its way,
  // applied again on top of it (see fillMembers).
  r = { tab, panel, list, unread, count: 0, ids: new Set(), countReplay: false, members, memberList, users: new Set(), pending: null };
  rooms.set(room, r);
  $("empty").hidden = true;
  if (!active) select(room);
  save();
  return r;
}

function removeRoom(room) {
  const r = rooms.get(room);
  if (!r) return;
  r.tab.remove();
  r.panel.remove();
  r.members.remove();
  rooms.delete(room);
  if (active === room) {
    active = null;
    const next = rooms.keys().next();
    if (!next.done) select(next.value);
  }
  $("empty").hidden = rooms.size > 0;
  updateComposer();
  save();
}

function select(room) {
  active = room;
  for (const [name, r] of rooms) {
    const on = name === room;
    r.tab.setAttribute("aria-selected", String(on));
    r.panel.hidden = !on;
    r.members.hidden = !on;
    if (on) {
      r.count = 0;
      r.unread.textContent = "";
      r.panel.scrollTop = r.panel.scrollHeight;
    }
  }
  $("text").placeholder = `Message #${room}`;
  updateComposer();
}

function append(room, item, unread = false) {
  const r = rooms.get(room) ?? addRoom(room);
  const stick = r.panel.scrollHeight - r.panel.scrollTop - r.panel.clientHeight < 40;
  r.list.append(item);
  if (stick) r.panel.scrollTop = r.panel.scrollHeight;
  if (room !== active && unread) {
    r.unread.textContent = String(++r.count);
  }
}

function systemLine(room, text, warn = false) {
  append(room, el("li", { class: warn ? "system warn" : "system", "data-testid": "system" }, text));
}

// ---- members: who is in each room, on any instance ----

function renderMembers(r) {
  const items = [...r.users].sort((a, b) => a.localeCompare(b)).map((u) =>
    el("li", { class: u === client.user ? "member me" : "member", "data-testid": "member", "data-user": u, text: u }));
  r.memberList.replaceChildren(...items);
}

// fillMembers asks for the room's members after each "joined" (the events
// of what happened while the connection was down never come). The events
// that arrive while the answer is on its way are applied on top of it:
// each one is at least as recent as the answer.
function fillMembers(c, room) {
  const r = rooms.get(room);
  if (!r) return;
  const pending = [];
  r.pending = pending;
  c.presence(room).then((users) => {
    if (c !== client || rooms.get(room) !== r || r.pending !== pending) return;
    r.pending = null;
    r.users = new Set(users);
    for (const [type, user] of pending) memberEvent(r, type, user);
    r.members.dataset.stale = "false";
    renderMembers(r);
  }, (err) => {
    if (r.pending === pending) r.pending = null;
    // Gone before the answer (a reconnect asks again, a left room needs none).
    if (c !== client || err.code === "not_connected" || err.code === "not_joined") return;
    showError(`${err.code}: members of #${room}: ${err.message}`);
  });
}

function memberEvent(r, type, user) {
  if (type === "user_joined") r.users.add(user);
  else r.users.delete(user);
}

function onMemberEvent(type, { room, user }) {
  const r = rooms.get(room);
  if (!r) return;
  r.pending?.push([type, user]);
  memberEvent(r, type, user);
  renderMembers(r);
  if (user !== client.user) systemLine(room, `${user} ${type === "user_joined" ? "joined" : "left"}`);
}

// ---- the connection ----

function connect(name) {
  let c;
  try {
    c = new ChatClient("/chat", { user: name, rooms: [...rooms.keys()], history: HISTORY });
  } catch (err) {
    showError(err.message); // an invalid name: keep the current connection
    return false;
  }
  client?.close();
  client = c;
  const on = (type, fn) => c.addEventListener(type, (e) => { if (c === client) fn(e.detail); });

  // "close" comes just before the matching "state" event and says more. The
  // server closes with 1008 and a reason for a bad name or room, or too many
  // rooms: chat.js then stops (and reports an error "closed"); show why.
  on("close", ({ code, reason, reconnect, delay }) => {
    if (reconnect) showState("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s…`);
    else showState("closed", `disconnected (close code ${code}${reason ? `: ${reason}` : ""}); set a name to reconnect`);
  });
  on("state", ({ state }) => { if ($("state").dataset.state !== state) showState(state); });
  // The messages that come with "joined" (the room's history on a first
  // join, what was missed on a rejoin) follow as "message" events. Only a
  // rejoin that could not recover them all is worth a warning.
  on("joined", ({ room, resumed, recovered, messages }) => {
    const r = addRoom(room);
    r.tab.dataset.joined = "true";
    r.countReplay = resumed;
    const earlier = messages.filter((m) => !r.ids.has(m.id)).length;
    if (!recovered) systemLine(room, "Reconnected: messages sent while the connection was down may be missing.", true);
    else if (!resumed) systemLine(room, `Joined #${room} as ${name}.${earlier ? ` The last ${earlier === 1 ? "message" : `${earlier} messages`}:` : ""}`);
    updateComposer();
    fillMembers(c, room);
  });
  on("user_joined", (d) => onMemberEvent("user_joined", d));
  on("user_left", (d) => onMemberEvent("user_left", d));
  on("left", ({ room }) => removeRoom(room));
  on("message", showMessage);
  on("error", (err) => {
    if (err.room && !c.rooms.includes(err.room)) removeRoom(err.room); // a join that failed
    showError(`${err.code}: ${err.message}`);
  });
}

function showState(state, text) {
  const s = $("state");
  s.dataset.state = state;
  if (state === "open") s.dataset.user = client.user;
  else delete s.dataset.user;
  s.textContent = text ?? {
    connecting: "connecting…",
    open: `connected as ${client.user}`,
    reconnecting: "reconnecting…",
    closed: "disconnected",
  }[state];
  if (state !== "open") {
    for (const r of rooms.values()) {
      r.tab.dataset.joined = "false";
      r.members.dataset.stale = "true"; // until the rejoin's presence() answers
    }
  }
  updateComposer();
}

function showMessage(m) {
  const r = rooms.get(m.room);
  if (!r || r.ids.has(m.id)) return;
  r.ids.add(m.id);
  const time = new Date(m.ts);
  const local = m.instance === myInstance;
  append(m.room, el("li", {
    class: m.user === client.user ? "message mine" : "message",
    "data-testid": "message", "data-id": m.id, "data-user": m.user, "data-instance": m.instance,
    ...(m.seq !== undefined && { "data-seq": m.seq }),
  },
  el("div", { class: "meta" },
    el("span", { class: "user", "data-testid": "user", text: m.user }),
    el("time", { class: "time", "data-testid": "time", datetime: time.toISOString(), title: time.toLocaleString(),
      text: time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }) }),
    el("span", { class: local ? "via local" : "via", "data-testid": "via",
      title: local ? "relayed by this page's server" : "relayed by another server instance",
      text: `via ${m.instance}` })),
  el("div", { class: "text", "data-testid": "text", text: m.text })), !m.replay || r.countReplay);
}

function showError(text) {
  const list = $("errors");
  list.prepend(el("li", { "data-testid": "error", title: "click to dismiss", onclick: (e) => e.currentTarget.remove() }, text));
  while (list.children.length > MAX_ERRORS) list.lastElementChild.remove();
}

function updateComposer() {
  const r = active && rooms.get(active);
  const ready = client?.state === "open" && r && r.tab.dataset.joined === "true";
  $("text").disabled = !r;
  $("send").disabled = !ready;
}

// ---- forms (Enter submits each of them) ----

function leave(room) {
  if (client?.rooms.includes(room)) client.leave(room);
  else removeRoom(room);
}

$("name-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if (!name || (name === client?.user && client.state !== "closed")) return;
  if (connect(name) !== false) save();
});

$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const room = $("room").value.trim();
  if (!ROOM_RE.test(room)) {
    showError("invalid_room: room names are 1-64 characters of A-Z a-z 0-9 . _ -");
    return;
  }
  addRoom(room);
  select(room);
  client.join(room);
  $("room").value = "";
  $("text").focus();
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = $("text");
  if (!input.value.trim() || !active) return;
  if (client.state !== "open") {
    showError("not connected: wait for the connection to come back");
    return;
  }
  client.send(active, input.value);
  input.value = "";
});

// ---- start ----

const name = load("chat.name", "") || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
$("name").value = name;
const saved = load("chat.rooms", ["lobby"]);
for (const room of Array.isArray(saved) ? saved : ["lobby"]) if (ROOM_RE.test(room)) addRoom(room);
if (connect(name) === false) {
  $("name").value = `guest-${Math.floor(1000 + Math.random() * 9000)}`;
  connect($("name").value);
}
