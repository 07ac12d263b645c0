// The confab web chat: one WebSocket session (JSON text frames) per page.
//
// Exactly-once display across reconnects: the page remembers the last sequence number it
// showed and rejoins with `after_seq` set to it, so the server replays exactly what was missed
// (G5); a message at or below that number is never shown twice. Posts carry a client message
// id and stay pending until acknowledged; after a reconnect they are sent again, and the
// room's dedupe (G4) makes the retry count once.
"use strict";

// How many messages of history a first join shows.
const HISTORY_SHOWN_MAX = 100;
// Reconnect backoff: it doubles after each failed attempt, up to the maximum.
const RECONNECT_DELAY_MS_MIN = 250;
const RECONNECT_DELAY_MS_MAX = 5000;
// At most one typing notice per this interval while the user types.
const TYPING_SEND_INTERVAL_MS = 2000;
// How long "X is typing" stays without a new notice.
const TYPING_SHOWN_MS = 3000;
// While the page is visible it acknowledges what it has shown this often, so the server's
// idle timeout (--ws-idle-timeout, default 30 minutes) never closes a page someone is
// looking at. A hidden page stays quiet; once closed as idle it reconnects when shown again.
const VISIBLE_ACK_INTERVAL_MS = 5 * 60 * 1000;

const state = {
  user: null,
  room: null,
  socket: null,
  joined: false,
  // The last sequence number shown; null before the first join.
  lastSeq: null,
  epoch: null,
  // client_msg_id -> body, in the order posted, until the server acknowledges it.
  pending: new Map(),
  // Makes client message ids unique to this page.
  pageId: Math.random().toString(36).slice(2, 10),
  nextId: 1,
  present: new Set(),
  // Presence events that arrive while the room snapshot is being fetched, replayed on it.
  presenceLog: null,
  typing: new Map(),
  typingSentAt: 0,
  reconnectDelay: RECONNECT_DELAY_MS_MIN,
  reconnectTimer: null,
};

const $ = (id) => document.getElementById(id);

function setStatus(stateName, text) {
  $("status").dataset.state = stateName;
  $("status").textContent = text;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function showMessage(frame) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.seq = String(frame.seq);
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = "#" + frame.seq;
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = frame.user;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = frame.body;
  item.append(seq, user, body);
  $("messages").append(item);
  scrollToEnd();
}

function showNotice(text) {
  const item = document.createElement("li");
  item.className = "notice";
  item.textContent = text;
  $("messages").append(item);
  scrollToEnd();
}

function renderPresent() {
  const list = $("present");
  list.replaceChildren();
  for (const name of [...state.present].sort()) {
    const item = document.createElement("li");
    item.textContent = name === state.user ? name + " (you)" : name;
    list.append(item);
  }
}

function renderTyping() {
  const names = [...state.typing.keys()].sort();
  $("typing").textContent = names.length === 0 ? "" : names.join(", ") + (names.length === 1 ? " is typing…" : " are typing…");
}

function applyPresence(frame) {
  if (frame.present) state.present.add(frame.user);
  else state.present.delete(frame.user);
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
  }
}

// A server started with --tokens wants the token, never in a URL (it would sit in logs and
// the browser's history). The page is opened as /#token=… (a fragment never reaches the
// server; /?token=… works too): it keeps the token in sessionStorage and takes it out of the
// address bar at once. The WebSocket carries it as a subprotocol (a browser's WebSocket
// cannot send an authorization header), the room snapshot as an Authorization header.
const TOKEN_KEY = "confab-token";
// The server selects this subprotocol; the token's own entry is never echoed.
const WS_PROTOCOL = "confab.v1";
const WS_TOKEN_PROTOCOL_PREFIX = "confab.bearer.";

function takeTokenFromAddress() {
  const url = new URL(location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  const token = fragment.get("token") || url.searchParams.get("token");
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  fragment.delete("token");
  url.searchParams.delete("token");
  url.hash = fragment.toString();
  history.replaceState(null, "", url);
}
takeTokenFromAddress();

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function wsProtocols() {
  const bearer = token();
  return bearer ? [WS_PROTOCOL, WS_TOKEN_PROTOCOL_PREFIX + base64url(bearer)] : [WS_PROTOCOL];
}

async function fetchRoom() {
  const bearer = token();
  const headers = bearer ? { Authorization: "Bearer " + bearer } : {};
  const response = await fetch("/rooms/" + encodeURIComponent(state.room), { cache: "no-store", headers });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

// Who is present now: the snapshot, then any presence event that arrived meanwhile.
async function refreshPresent() {
  state.presenceLog = [];
  try {
    const info = await fetchRoom();
    state.present = new Set(info ? info.present : []);
  } catch (error) {
    console.warn("room snapshot failed", error);
  }
  for (const frame of state.presenceLog) applyPresence(frame);
  state.presenceLog = null;
  renderPresent();
}

function handle(frame) {
  switch (frame.type) {
    case "subscribed": {
      if (state.lastSeq !== null && !frame.recovered) {
        if (frame.epoch !== state.epoch) {
          $("messages").replaceChildren();
          showNotice("the room's history started over");
        } else {
          showNotice("messages " + (state.lastSeq + 1) + " to " + (frame.first_seq - 1) + " are no longer kept");
        }
        state.lastSeq = frame.first_seq - 1;
      }
      if (state.lastSeq === null) state.lastSeq = frame.first_seq - 1;
      state.epoch = frame.epoch;
      state.joined = true;
      state.reconnectDelay = RECONNECT_DELAY_MS_MIN;
      setStatus("connected", state.user + " in #" + state.room);
      $("text").disabled = false;
      $("send").disabled = false;
      // Posts not yet acknowledged go again; the room's dedupe keeps them single.
      for (const [id, body] of state.pending) send({ type: "post", room: state.room, client_msg_id: id, body });
      refreshPresent();
      break;
    }
    case "message":
      if (frame.seq <= state.lastSeq) break; // already shown
      if (frame.seq !== state.lastSeq + 1) showNotice("missed messages " + (state.lastSeq + 1) + " to " + (frame.seq - 1));
      showMessage(frame);
      state.lastSeq = frame.seq;
      state.typing.delete(frame.user);
      renderTyping();
      break;
    case "lagged":
      // Reading fell behind: reconnect, which resumes exactly after the last message shown.
      showNotice("fell behind; catching up");
      if (state.socket) state.socket.close(4000, "lagged");
      break;
    case "presence":
      if (state.presenceLog) state.presenceLog.push(frame);
      applyPresence(frame);
      renderPresent();
      break;
    case "typing": {
      if (frame.user === state.user) break;
      clearTimeout(state.typing.get(frame.user));
      state.typing.set(frame.user, setTimeout(() => { state.typing.delete(frame.user); renderTyping(); }, TYPING_SHOWN_MS));
      renderTyping();
      break;
    }
    case "ack":
      state.pending.delete(frame.client_msg_id);
      break;
    case "error":
      showNotice("refused (" + frame.code + "): " + frame.message);
      break;
  }
}

async function connect() {
  state.reconnectTimer = null;
  setStatus("connecting", "connecting…");
  let afterSeq = state.lastSeq;
  if (afterSeq === null) {
    // First join: the last HISTORY_SHOWN_MAX messages of history, then live.
    try {
      const info = await fetchRoom();
      afterSeq = info ? Math.max(info.first_retained_seq - 1, info.last_seq - HISTORY_SHOWN_MAX, 0) : 0;
    } catch (error) {
      afterSeq = 0;
    }
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = "user=" + encodeURIComponent(state.user) + "&format=json";
  const socket = new WebSocket(scheme + "//" + location.host + "/ws?" + query, wsProtocols());
  state.socket = socket;
  socket.onopen = () => send({ type: "join", room: state.room, after_seq: afterSeq });
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    state.joined = false;
    const why = event.reason ? " (" + event.reason + ")" : "";
    if (event.code === 1000 && event.reason.startsWith("idle") && document.hidden) {
      setStatus("disconnected", "disconnected" + why + "; reconnects when shown");
      document.addEventListener("visibilitychange", () => connect(), { once: true });
      return;
    }
    setStatus("disconnected", "disconnected" + why + "; reconnecting…");
    state.reconnectTimer = setTimeout(connect, state.reconnectDelay);
    state.reconnectDelay = Math.min(state.reconnectDelay * 2, RECONNECT_DELAY_MS_MAX);
  };
}

function join(user, room) {
  if (state.socket) {
    const old = state.socket;
    state.socket = null;
    old.close(1000, "changed room");
  }
  clearTimeout(state.reconnectTimer);
  Object.assign(state, { user, room, lastSeq: null, epoch: null, joined: false, present: new Set(), pending: new Map() });
  $("messages").replaceChildren();
  renderPresent();
  const url = new URL(location.href);
  url.searchParams.set("user", user);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  connect();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("user").value.trim(), $("room").value.trim());
});

$("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = $("text").value;
  if (!body || state.room === null) return;
  const id = state.pageId + "-" + state.nextId++;
  state.pending.set(id, body);
  // While disconnected the post waits in `pending` and goes out after the rejoin.
  if (state.joined) send({ type: "post", room: state.room, client_msg_id: id, body });
  $("text").value = "";
  state.typingSentAt = 0;
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (state.joined && $("text").value && now - state.typingSentAt >= TYPING_SEND_INTERVAL_MS) {
    state.typingSentAt = now;
    send({ type: "typing", room: state.room });
  }
});

// A link with ?user=…&room=… fills the form in (and joins at once with &join=1).
const params = new URLSearchParams(location.search);
if (params.get("user")) $("user").value = params.get("user");
if (params.get("room")) $("room").value = params.get("room");
if (params.get("join") === "1" && params.get("user")) join($("user").value, $("room").value);

setInterval(() => {
  if (state.joined && document.visibilityState === "visible" && state.lastSeq !== null) {
    send({ type: "ack", room: state.room, seq: state.lastSeq });
  }
}, VISIBLE_ACK_INTERVAL_MS);

// For tests and debugging: the page's state, and a way to drop the connection.
window.confab = {
  state,
  // Closes the socket as a network failure would; the page reconnects after `reconnectAfterMs`.
  dropConnection(reconnectAfterMs = RECONNECT_DELAY_MS_MIN) {
    state.reconnectDelay = reconnectAfterMs;
    if (state.socket) state.socket.close(4001, "dropped on purpose");
  },
};
