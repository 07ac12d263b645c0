// confab.js: the confab client for web pages. An ES module with no build step and no
// dependencies, served by `confab serve` at /confab.js on its web port (--ws-listen). It speaks
// the JSON frames of `/ws?format=json` (adapters/ws/json.rs) over one WebSocket.
//
//     import { ConfabClient } from "/confab.js";
//     const client = new ConfabClient({ user: "ann" });
//     client.on("message", (m) => console.log(m.seq, m.user, m.body));
//     client.on("subscribed", (s) => s.restarted && console.log("history started over"));
//     client.on("lagged", (l) => console.log("skipped", l.missedFrom, "to", l.missedTo, "; resuming"));
//     client.join("lobby", { afterSeq: 0 });  // all retained history, then live
//     client.send("lobby", "hello");          // its client message id; settled by "ack"
//
// Guarantees, per joined room, for as long as the client is not closed:
//
// - Exactly once, in order. "message" is handed over for seq = last + 1 only, where `last` is
//   the last sequence number handed over. After a dropped connection the client reconnects (with
//   backoff) and rejoins with `after_seq = last`, so the server replays exactly what was missed
//   (G5); anything at or below `last` that comes again is dropped.
// - No silent gap. When the server cannot continue after `last` the caller is told, never left
//   to guess: a lag marker is handed over as "lagged" and the client then resumes after `last`
//   (by reconnecting), so the skipped span is replayed if the room still keeps it; a resume the
//   server could not make exact (`recovered = false`) is handed over as "subscribed" with
//   `missed` (the span the room no longer keeps) or `restarted` (the room's history started over
//   or is behind `last`; what was shown no longer continues). A message after a hole the server
//   did not announce is treated as a lag marker (`announced: false`).
// - Posts are not lost or doubled. Each post gets a client message id unique to this client and
//   stays pending until its "ack" (or its own copy in the room) comes back. Pending posts are sent
//   again, in the order they were posted, each time the room is rejoined; the room's dedupe (G4)
//   keeps a retried post single (its ack then says `duplicate: true`). A post made while
//   disconnected waits and goes out after the rejoin. Posts about one room keep their order (G3).
//
// API (everything else is private):
//
//   new ConfabClient({ user, token, server, WebSocket })
//     user       the session's user (`/ws?user=`); leave it out on a server with --tokens to
//                be the token's user.
//     token      a --tokens token or JWT, or null. It travels as the WebSocket subprotocol
//                `confab.bearer.<base64url>` and as `Authorization: Bearer` (roomInfo), never
//                in a URL.
//     server     the server's http(s) URL; default: where this module was loaded from.
//     WebSocket  the WebSocket constructor; default globalThis.WebSocket (tests wrap it).
//   connect()               opens the connection and keeps it open (join() calls it).
//   join(room, { afterSeq }) joins a room: afterSeq absent starts live, k replays from k + 1.
//                           Rejoins after every reconnect, resuming where it left off.
//   leave(room)             leaves a room; its pending posts are dropped.
//   send(room, body)        posts; returns the client message id. Throws a RangeError past
//                           PENDING_POSTS_MAX pending posts.
//   typing(room)            a typing notice; true if it went out (only while joined).
//   ack(room, seq)          tells the server what was read; true if it went out (only while
//                           joined). The client also does this on its own, see ACK_INTERVAL_MS.
//   roomInfo(room)          GET /rooms/ROOM: { name, epoch, last_seq, first_retained_seq,
//                           subscribers, present }, or null if the room does not exist.
//   lastSeq(room)           the last sequence number handed over, or null.
//   pendingCount            posts not yet acknowledged, over all rooms.
//   on(type, handler)       adds a handler; returns a function that removes it.
//   drop(reconnectAfterMs)  closes the socket as a network failure would (for tests).
//   close()                 closes for good: no reconnect, pending posts are dropped.
//
// Events (each handler gets one plain object; `room` is the room's name):
//
//   "connecting"   { attempt }                  a socket is being opened (1 = the first).
//   "open"         {}                           it is open; joins go out.
//   "subscribed"   { room, epoch, recovered, firstSeq, afterSeq, restarted, missed }
//                  the room's stream starts at firstSeq. afterSeq is what was asked (null:
//                  live); missed is null or { from, to }. Pending posts are resent after it.
//   "message"      { room, seq, user, body, clientMsgId, acceptedAtMs }   exactly once, in order.
//   "lagged"       { room, missedFrom, missedTo, announced }   the client resumes next.
//   "ack"          { room, clientMsgId, seq, duplicate }       a post was sequenced.
//   "presence"     { room, user, present }
//   "typing"       { room, user }
//   "left"         { room }                     after leave(). A room the server drops
//                                               on its own (`stopped`: e.g. reloading on a
//                                               cluster node) is joined again, resuming after
//                                               the last message, with no "left".
//   "error"        { room, code, message }      a refused frame (gRPC status code); the
//                                               session goes on. A refused post stays pending.
//   "disconnected" { code, reason, reconnectInMs }   reconnectInMs is null when the client
//                  waits: closed by close(), or closed as idle while the page is hidden (it
//                  reconnects when the page is shown again).
//
// A handler that throws does not disturb the client: the error is rethrown on its own task, so
// it still reaches the console (and a test's page-error hook).

/** The first reconnect waits this long; each failed attempt doubles it. */
export const RECONNECT_DELAY_MS_MIN = 250;
/** The longest wait between reconnect attempts. */
export const RECONNECT_DELAY_MS_MAX = 5000;
/** Each wait is shortened by up to this fraction at random, so pages dropped together (a
 * server restart) do not all come back in the same instant. */
export const RECONNECT_JITTER_FRACTION = 0.2;
/** A socket not open this long after it was started is abandoned and tried again. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** While active (in a browser: while the page is visible) the client acknowledges the last
 * message handed over this often, so the server's idle timeout (--ws-idle-timeout, default 30
 * minutes) never closes a page someone is looking at. A hidden page stays quiet. */
export const ACK_INTERVAL_MS = 5 * 60 * 1000;
/** Posts waiting for their ack, over all rooms; each is held (and resent) until acknowledged. */
export const PENDING_POSTS_MAX = 1000;
/** The subprotocol the server selects. */
export const WS_PROTOCOL = "confab.v1";
/** The subprotocol that carries the token, followed by the token in base64url. */
export const WS_TOKEN_PROTOCOL_PREFIX = "confab.bearer.";

/** The server closes an idle connection with a normal closure and a reason that starts so. */
const CLOSE_NORMAL = 1000;
const IDLE_REASON_PREFIX = "idle";
/** Close codes of this client's own (4000-4999 are the application's). */
const CLOSE_LAGGED = 4000;
const CLOSE_DROPPED = 4001;
const CLOSE_CLOSED = 1000;

const EVENT_TYPES = [
  "connecting",
  "open",
  "subscribed",
  "message",
  "lagged",
  "ack",
  "presence",
  "typing",
  "left",
  "error",
  "disconnected",
];

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** True where nobody is looking: a hidden browser page. Outside a browser, never. */
function pageHidden() {
  return typeof document !== "undefined" && document.visibilityState === "hidden";
}

export class ConfabClient {
  #user;
  #token;
  #server;
  #WebSocket;
  /** room name -> RoomState (see #room). Insertion order is join order. */
  #rooms = new Map();
  /** type -> Set of handlers. */
  #handlers = new Map(EVENT_TYPES.map((type) => [type, new Set()]));
  #socket = null;
  /** Connecting or connected, or waiting to reconnect: connect() was called, close() was not. */
  #started = false;
  #closed = false;
  #attempt = 0;
  #reconnectDelayMs = RECONNECT_DELAY_MS_MIN;
  /** Set by drop(): the next reconnect waits exactly this long. */
  #nextDelayMs = null;
  #reconnectTimer = null;
  #connectTimer = null;
  #ackTimer = null;
  /** The visibilitychange listener of a connection closed as idle while hidden. */
  #onVisible = null;
  /** Makes client message ids unique to this client. */
  #clientId = Math.random().toString(36).slice(2, 10);
  #nextPostId = 1;
  #pendingCount = 0;

  constructor({ user = null, token = null, server = import.meta.url, WebSocket = globalThis.WebSocket } = {}) {
    this.#user = user;
    this.#token = token;
    this.#server = new URL("/", server);
    this.#WebSocket = WebSocket;
  }

  /** Opens the connection (if not open already) and keeps it open until close(). */
  connect() {
    if (this.#closed) throw new Error("this ConfabClient is closed");
    if (this.#started) return;
    this.#started = true;
    this.#ackTimer = setInterval(() => this.#ackAll(), ACK_INTERVAL_MS);
    this.#open();
  }

  join(room, { afterSeq } = {}) {
    if (afterSeq !== undefined && !(Number.isSafeInteger(afterSeq) && afterSeq >= 0)) {
      throw new TypeError("afterSeq must be a non-negative integer, or absent to start live");
    }
    if (!this.#rooms.has(room)) {
      this.#rooms.set(room, {
        // What the first join asks for; later joins ask for lastSeq.
        firstAfterSeq: afterSeq ?? null,
        // The last sequence number handed over; null before the first subscribed.
        lastSeq: null,
        epoch: null,
        // Joined on the current socket (its subscribed came): posts go out at once.
        subscribed: false,
        // client message id -> body, in the order posted, until acknowledged.
        pending: new Map(),
      });
      if (this.#isOpen()) this.#sendJoin(room);
    }
    this.connect();
  }

  leave(room) {
    const state = this.#rooms.get(room);
    if (!state) return;
    this.#pendingCount -= state.pending.size;
    this.#rooms.delete(room);
    this.#write({ type: "leave", room });
  }

  send(room, body) {
    const state = this.#rooms.get(room);
    if (!state) throw new Error("not joined to room " + room);
    if (this.#pendingCount >= PENDING_POSTS_MAX) {
      throw new RangeError(PENDING_POSTS_MAX + " posts are waiting for their ack (PENDING_POSTS_MAX)");
    }
    const clientMsgId = this.#clientId + "-" + this.#nextPostId++;
    state.pending.set(clientMsgId, body);
    this.#pendingCount += 1;
    // Not subscribed: it goes out after the (re)join, with the others pending.
    if (state.subscribed) this.#write({ type: "post", room, client_msg_id: clientMsgId, body });
    return clientMsgId;
  }

  typing(room) {
    if (!this.#rooms.get(room)?.subscribed) return false;
    return this.#write({ type: "typing", room });
  }

  ack(room, seq) {
    if (!this.#rooms.get(room)?.subscribed) return false;
    return this.#write({ type: "ack", room, seq });
  }

  async roomInfo(room) {
    const headers = this.#token ? { Authorization: "Bearer " + this.#token } : {};
    const url = new URL("rooms/" + encodeURIComponent(room), this.#server);
    const response = await fetch(url, { cache: "no-store", headers });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error("GET " + url.pathname + ": " + response.status + " " + (await response.text()));
    return response.json();
  }

  lastSeq(room) {
    return this.#rooms.get(room)?.lastSeq ?? null;
  }

  get pendingCount() {
    return this.#pendingCount;
  }

  on(type, handler) {
    const handlers = this.#handlers.get(type);
    if (!handlers) throw new TypeError("no event " + JSON.stringify(type) + "; there are " + EVENT_TYPES.join(", "));
    handlers.add(handler);
    return () => handlers.delete(handler);
  }

  drop(reconnectAfterMs = RECONNECT_DELAY_MS_MIN) {
    if (!this.#socket) return;
    this.#nextDelayMs = reconnectAfterMs;
    this.#socket.close(CLOSE_DROPPED, "dropped on purpose");
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#started = false;
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#connectTimer);
    clearInterval(this.#ackTimer);
    if (this.#onVisible) document.removeEventListener("visibilitychange", this.#onVisible);
    const socket = this.#socket;
    this.#socket = null;
    if (socket) socket.close(CLOSE_CLOSED, "closed by the client");
    this.#rooms.clear();
    this.#pendingCount = 0;
    this.#emit("disconnected", { code: CLOSE_CLOSED, reason: "closed by the client", reconnectInMs: null });
  }

  #emit(type, detail) {
    for (const handler of this.#handlers.get(type)) {
      try {
        handler(detail);
      } catch (error) {
        // The client's state is already consistent; let the error surface without unwinding it.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  #isOpen() {
    return this.#socket !== null && this.#socket.readyState === this.#WebSocket.OPEN;
  }

  /** Sends a frame if the socket is open; false if it could not. */
  #write(frame) {
    if (!this.#isOpen()) return false;
    this.#socket.send(JSON.stringify(frame));
    return true;
  }

  #sendJoin(room) {
    const state = this.#rooms.get(room);
    const afterSeq = state.lastSeq ?? state.firstAfterSeq;
    const frame = { type: "join", room };
    if (afterSeq !== null) frame.after_seq = afterSeq;
    this.#write(frame);
  }

  #open() {
    this.#reconnectTimer = null;
    this.#onVisible = null;
    this.#attempt += 1;
    const url = new URL("ws", this.#server);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.#user !== null) url.searchParams.set("user", this.#user);
    url.searchParams.set("format", "json");
    const protocols = this.#token ? [WS_PROTOCOL, WS_TOKEN_PROTOCOL_PREFIX + base64url(this.#token)] : [WS_PROTOCOL];
    this.#emit("connecting", { attempt: this.#attempt });
    const socket = new this.#WebSocket(url, protocols);
    this.#socket = socket;
    // Closing a socket that is still connecting fails it, and its close event follows.
    this.#connectTimer = setTimeout(() => socket.readyState === this.#WebSocket.CONNECTING && socket.close(), CONNECT_TIMEOUT_MS);
    socket.onopen = () => {
      if (this.#socket !== socket) return;
      clearTimeout(this.#connectTimer);
      this.#emit("open", {});
      for (const room of this.#rooms.keys()) this.#sendJoin(room);
    };
    socket.onmessage = (event) => {
      if (this.#socket !== socket) return;
      this.#handle(JSON.parse(event.data));
    };
    socket.onclose = (event) => this.#onClose(socket, event);
  }

  #onClose(socket, event) {
    if (this.#socket !== socket) return;
    clearTimeout(this.#connectTimer);
    this.#socket = null;
    for (const state of this.#rooms.values()) state.subscribed = false;
    const code = event.code;
    const reason = event.reason ?? "";
    if (code === CLOSE_NORMAL && reason.startsWith(IDLE_REASON_PREFIX) && pageHidden()) {
      this.#onVisible = () => {
        if (pageHidden()) return;
        document.removeEventListener("visibilitychange", this.#onVisible);
        this.#open();
      };
      document.addEventListener("visibilitychange", this.#onVisible);
      this.#emit("disconnected", { code, reason, reconnectInMs: null });
      return;
    }
    let delayMs = this.#nextDelayMs;
    this.#nextDelayMs = null;
    if (delayMs === null) {
      delayMs = Math.round(this.#reconnectDelayMs * (1 - RECONNECT_JITTER_FRACTION * Math.random()));
      this.#reconnectDelayMs = Math.min(this.#reconnectDelayMs * 2, RECONNECT_DELAY_MS_MAX);
    }
    this.#reconnectTimer = setTimeout(() => this.#open(), delayMs);
    this.#emit("disconnected", { code, reason, reconnectInMs: delayMs });
  }

  /** Resumes every room after its last message handed over, by reconnecting (a rejoin asks
   * for exactly what was skipped). Until then nothing more is handed over. */
  #resume() {
    for (const state of this.#rooms.values()) state.subscribed = false;
    if (this.#socket) this.#socket.close(CLOSE_LAGGED, "lagged; resuming");
  }

  #ackAll() {
    if (pageHidden()) return;
    for (const [room, state] of this.#rooms) {
      if (state.lastSeq !== null && state.lastSeq > 0) this.ack(room, state.lastSeq);
    }
  }

  #settle(state, clientMsgId) {
    if (state.pending.delete(clientMsgId)) this.#pendingCount -= 1;
  }

  #handle(frame) {
    const room = frame.room;
    const state = this.#rooms.get(room);
    switch (frame.type) {
      case "subscribed": {
        if (!state) return;
        const afterSeq = state.lastSeq ?? state.firstAfterSeq;
        let restarted = false;
        let missed = null;
        if (!frame.recovered && afterSeq !== null) {
          const epochChanged = state.epoch !== null && frame.epoch !== state.epoch;
          if (epochChanged || frame.first_seq <= afterSeq) restarted = true;
          else if (frame.first_seq > afterSeq + 1) missed = { from: afterSeq + 1, to: frame.first_seq - 1 };
        }
        state.lastSeq = frame.first_seq - 1;
        state.epoch = frame.epoch;
        state.subscribed = true;
        this.#reconnectDelayMs = RECONNECT_DELAY_MS_MIN;
        const { epoch, recovered } = frame;
        this.#emit("subscribed", { room, epoch, recovered, firstSeq: frame.first_seq, afterSeq, restarted, missed });
        for (const [clientMsgId, body] of state.pending) {
          this.#write({ type: "post", room, client_msg_id: clientMsgId, body });
        }
        return;
      }
      case "message": {
        if (!state?.subscribed || frame.seq <= state.lastSeq) return;
        if (frame.seq !== state.lastSeq + 1) {
          this.#emit("lagged", { room, missedFrom: state.lastSeq + 1, missedTo: frame.seq - 1, announced: false });
          this.#resume();
          return;
        }
        state.lastSeq = frame.seq;
        this.#settle(state, frame.client_msg_id);
        this.#emit("message", {
          room,
          seq: frame.seq,
          user: frame.user,
          body: frame.body,
          clientMsgId: frame.client_msg_id,
          acceptedAtMs: frame.accepted_at_ms,
        });
        return;
      }
      case "lagged":
        if (!state?.subscribed) return;
        this.#emit("lagged", { room, missedFrom: frame.missed_from, missedTo: frame.missed_to, announced: true });
        this.#resume();
        return;
      case "ack":
        if (state) this.#settle(state, frame.client_msg_id);
        this.#emit("ack", { room, clientMsgId: frame.client_msg_id, seq: frame.seq, duplicate: frame.duplicate });
        return;
      case "presence":
        this.#emit("presence", { room, user: frame.user, present: frame.present });
        return;
      case "typing":
        this.#emit("typing", { room, user: frame.user });
        return;
      case "left":
        if (state) {
          // Not asked for (leave() forgets the room first): the room stopped under the session
          // (`stopped`: a cluster node's room reloading). Join it again after the last message
          // handed over, as after a reconnect.
          state.subscribed = false;
          this.#sendJoin(room);
          return;
        }
        this.#emit("left", { room });
        return;
      case "error":
        this.#emit("error", { room, code: frame.code, message: frame.message });
        return;
    }
  }
}
