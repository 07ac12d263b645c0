// The confab web chat: the page's UI over a ConfabClient (/confab.js), a new one per join.
//
// The client keeps the connection's promises (see the top of confab.js): it reconnects with
// backoff, rejoins with `after_seq` set to the last message shown so the server replays exactly
// what was missed (G5) and nothing is shown twice, holds each post (with a client message id)
// until it is acknowledged and sends it again after a reconnect, where the room's dedupe (G4)
// makes the retry count once, acknowledges what is shown while the page is visible (so a page
// someone looks at is never closed as idle), and, closed as idle while hidden, reconnects when
// shown again. This file only draws: messages, notices, who is present, who is typing, status.
import { ConfabClient } from "./confab.js";

// How many messages of history a first join shows.
const HISTORY_SHOWN_MAX = 100;
// At most one typing notice per this interval while the user types.
const TYPING_SEND_INTERVAL_MS = 2000;
// How long "X is typing" stays without a new notice.
const TYPING_SHOWN_MS = 3000;

const state = {
  user: null,
  room: null,
  client: null,
  present: new Set(),
  // Presence events that arrive while the room snapshot is being fetched, replayed on it.
  presenceLog: null,
  typing: new Map(),
  typingSentAt: 0,
};

const $ = (id) => document.getElementById(id);

function setStatus(stateName, text) {
  $("status").dataset.state = stateName;
  $("status").textContent = text;
}

function setComposeEnabled(enabled) {
  $("text").disabled = !enabled;
  $("send").disabled = !enabled;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function showMessage(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.seq = String(message.seq);
  const seq = document.createElement("span");
  seq.className = "seq";
  seq.textContent = "#" + message.seq;
  const user = document.createElement("span");
  user.className = "user";
  user.textContent = message.user;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = message.body;
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

function applyPresence(presence) {
  if (presence.present) state.present.add(presence.user);
  else state.present.delete(presence.user);
}

// A server started with --tokens wants the token, never in a URL (it would sit in logs and
// the browser's history). The page is opened as /#token=… (a fragment never reaches the
// server; /?token=… works too): it keeps the token in sessionStorage and takes it out of the
// address bar at once. The client carries it as a WebSocket subprotocol and as the room
// snapshot's Authorization header.
const TOKEN_KEY = "confab-token";

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

// Who is present now: the snapshot, then any presence event that arrived meanwhile.
async function refreshPresent(client) {
  state.presenceLog = [];
  try {
    const info = await client.roomInfo(state.room);
    if (client !== state.client) return;
    state.present = new Set(info ? info.present : []);
  } catch (error) {
    console.warn("room snapshot failed", error);
  }
  for (const presence of state.presenceLog) applyPresence(presence);
  state.presenceLog = null;
  renderPresent();
}

// The first join shows the last HISTORY_SHOWN_MAX messages the room keeps, then goes live.
async function firstAfterSeq(client, room) {
  try {
    const info = await client.roomInfo(room);
    return info ? Math.max(info.first_retained_seq - 1, info.last_seq - HISTORY_SHOWN_MAX, 0) : 0;
  } catch (error) {
    return 0;
  }
}

function newClient(user) {
  const client = new ConfabClient({ user, token: sessionStorage.getItem(TOKEN_KEY) });
  // Only the current client draws; one replaced by a new join may still be closing.
  const on = (type, handler) => client.on(type, (event) => client === state.client && handler(event));
  on("connecting", () => setStatus("connecting", "connecting…"));
  on("subscribed", (subscribed) => {
    if (subscribed.restarted) {
      $("messages").replaceChildren();
      showNotice("the room's history started over");
    } else if (subscribed.missed) {
      showNotice("messages " + subscribed.missed.from + " to " + subscribed.missed.to + " are no longer kept");
    }
    setStatus("connected", state.user + " in #" + state.room);
    setComposeEnabled(true);
    refreshPresent(client);
  });
  on("message", (message) => {
    showMessage(message);
    state.typing.delete(message.user);
    renderTyping();
  });
  on("lagged", (lagged) => {
    showNotice(lagged.announced ? "fell behind; catching up" : "missed messages " + lagged.missedFrom + " to " + lagged.missedTo + "; catching up");
  });
  on("presence", (presence) => {
    if (state.presenceLog) state.presenceLog.push(presence);
    applyPresence(presence);
    renderPresent();
  });
  on("typing", (typing) => {
    if (typing.user === state.user) return;
    clearTimeout(state.typing.get(typing.user));
    state.typing.set(typing.user, setTimeout(() => { state.typing.delete(typing.user); renderTyping(); }, TYPING_SHOWN_MS));
    renderTyping();
  });
  on("error", (error) => showNotice("refused (" + error.code + "): " + error.message));
  on("disconnected", (disconnected) => {
    const why = disconnected.reason ? " (" + disconnected.reason + ")" : "";
    const next = disconnected.reconnectInMs === null ? "; reconnects when shown" : "; reconnecting…";
    setStatus("disconnected", "disconnected" + why + next);
  });
  return client;
}

async function join(user, room) {
  if (state.client) state.client.close();
  const client = newClient(user);
  Object.assign(state, { user, room, client, present: new Set(), presenceLog: null });
  $("messages").replaceChildren();
  setComposeEnabled(false);
  renderPresent();
  const url = new URL(location.href);
  url.searchParams.set("user", user);
  url.searchParams.set("room", room);
  history.replaceState(null, "", url);
  setStatus("connecting", "connecting…");
  const afterSeq = await firstAfterSeq(client, room);
  if (client === state.client) client.join(room, { afterSeq });
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("user").value.trim(), $("room").value.trim());
});

$("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = $("text").value;
  if (!body || !state.client) return;
  try {
    // While disconnected the post waits in the client and goes out after the rejoin.
    state.client.send(state.room, body);
  } catch (error) {
    showNotice("not sent: " + error.message);
    return;
  }
  $("text").value = "";
  state.typingSentAt = 0;
});

$("text").addEventListener("input", () => {
  const now = Date.now();
  if (state.client && $("text").value && now - state.typingSentAt >= TYPING_SEND_INTERVAL_MS) {
    if (state.client.typing(state.room)) state.typingSentAt = now;
  }
});

// A link with ?user=…&room=… fills the form in (and joins at once with &join=1).
const params = new URLSearchParams(location.search);
if (params.get("user")) $("user").value = params.get("user");
if (params.get("room")) $("room").value = params.get("room");
if (params.get("join") === "1" && params.get("user")) join($("user").value, $("room").value);

// For tests and debugging: the page's state and client, and a way to drop the connection.
window.confab = {
  state,
  get client() {
    return state.client;
  },
  // Closes the socket as a network failure would; the page reconnects after `reconnectAfterMs`.
  dropConnection(reconnectAfterMs) {
    state.client?.drop(reconnectAfterMs);
  },
};
