// The browser test: two headless Chromium pages chat in one room through the page that
// `confab serve` embeds. scripts/browser.sh starts the server and sets CONFAB_WEB_URL.
//
// It checks that messages typed in one page appear in the other in order, that presence and
// typing show, and that after a forced reconnect (the page's socket closed while the other
// page keeps talking, and a message typed while disconnected) both pages show exactly the same
// messages, numbered 1..N with no gap and no duplicate. With CONFAB_WEB_TOKEN_URL (a server
// started with --tokens) and CONFAB_WEB_TOKEN, it also checks that a token given in the page's
// address leaves the address bar and never travels in a URL.
//
// The client module the page uses, /confab.js, is also tested on its own: served as JavaScript,
// imported into a page, and driven across a dropped connection, a post whose ack was lost, a
// lag marker, a hole the server did not announce and a resume the server could not make exact,
// with every client ending up with the same messages, each exactly once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const webUrl = process.env.CONFAB_WEB_URL;
const artifacts = process.env.BROWSER_ARTIFACTS ?? "target/browser-test";
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Every wait is bounded by this, so a bug fails the test instead of hanging it.
const PATIENCE_MS = 20_000;
const ROOM = "browser-test";
const tokenUrl = process.env.CONFAB_WEB_TOKEN_URL;
const token = process.env.CONFAB_WEB_TOKEN;

/** The messages a page shows: [seq, user, body]. */
function shown(page) {
  return page.$$eval("#messages li.message", (items) =>
    items.map((item) => [Number(item.dataset.seq), item.querySelector(".user").textContent, item.querySelector(".body").textContent]),
  );
}

async function waitForCount(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll("#messages li.message").length >= n, count, { timeout: PATIENCE_MS });
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function joinAs(page, user) {
  await page.goto(webUrl);
  await page.fill("#user", user);
  await page.fill("#room", ROOM);
  await page.click("#join");
  await page.waitForSelector('#status[data-state="connected"]', { timeout: PATIENCE_MS });
}

/** A fresh headless Chromium profile. */
async function launch() {
  mkdirSync(artifacts, { recursive: true });
  const profile = mkdtempSync(join(artifacts, "profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    chromiumSandbox: false,
    viewport: { width: 900, height: 560 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-quic",
      "--no-first-run",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  context.setDefaultTimeout(PATIENCE_MS);
  return context;
}

test("two pages chat in order, and a forced reconnect neither loses nor doubles a message", async () => {
  assert.ok(webUrl, "CONFAB_WEB_URL names the page (scripts/browser.sh sets it)");
  const context = await launch();
  try {
    const ann = await context.newPage();
    const bob = await context.newPage();
    for (const page of [ann, bob]) page.on("pageerror", (error) => assert.fail(`page error: ${error.message}`));
    await joinAs(ann, "ann");
    await joinAs(bob, "bob");

    // Presence: each page lists the other.
    await ann.waitForFunction(() => [...document.querySelectorAll("#present li")].some((li) => li.textContent === "bob"));
    await bob.waitForFunction(() => [...document.querySelectorAll("#present li")].some((li) => li.textContent === "ann"));

    // Typing: bob types without sending, ann sees it.
    await bob.fill("#text", "");
    await bob.type("#text", "hm");
    await ann.waitForFunction(() => document.querySelector("#typing").textContent.includes("bob is typing"));
    await bob.fill("#text", "");

    // Messages typed in one page appear in the other, in order.
    const expected = [];
    for (let i = 1; i <= 5; i++) {
      await say(ann, `ann says ${i}`);
      expected.push(["ann", `ann says ${i}`]);
    }
    for (let i = 1; i <= 2; i++) {
      await say(bob, `bob says ${i}`);
      expected.push(["bob", `bob says ${i}`]);
    }
    await waitForCount(bob, expected.length);
    await waitForCount(ann, expected.length);
    // Ann's five were typed before bob's two, so they come first; within each, typing order.
    const bobSees = await shown(bob);
    assert.deepEqual(bobSees.map(([, user, body]) => [user, body]), expected);
    assert.deepEqual(bobSees.map(([seq]) => seq), expected.map((_, i) => i + 1));
    assert.deepEqual(await shown(ann), bobSees);

    // Forced reconnect: bob's socket drops and stays down for a moment. Meanwhile ann talks,
    // and bob types one message that can only go out after the rejoin.
    await bob.evaluate(() => window.confab.dropConnection(1500));
    await bob.waitForSelector('#status[data-state="disconnected"]');
    for (let i = 6; i <= 8; i++) {
      await say(ann, `ann says ${i}`);
      expected.push(["ann", `ann says ${i}`]);
    }
    await waitForCount(ann, expected.length);
    await say(bob, "bob typed this offline");
    expected.push(["bob", "bob typed this offline"]);
    await bob.waitForSelector('#status[data-state="connected"]');
    await waitForCount(bob, expected.length);
    await waitForCount(ann, expected.length);

    // Then a drop right after a send: the post may or may not have reached the server, so the
    // page sends it again on rejoin; the room's dedupe must keep it single.
    await say(bob, "bob sent this as the line dropped");
    await bob.evaluate(() => window.confab.dropConnection(300));
    expected.push(["bob", "bob sent this as the line dropped"]);
    await say(ann, "ann says 9");
    expected.push(["ann", "ann says 9"]);
    await bob.waitForSelector('#status[data-state="connected"]');
    await waitForCount(bob, expected.length);
    await waitForCount(ann, expected.length);
    // Let any duplicate that was going to arrive arrive, then compare.
    await bob.waitForFunction(() => window.confab.client.pendingCount === 0);
    await ann.waitForTimeout(300);

    const annSees = await shown(ann);
    const bobSeesAfter = await shown(bob);
    const seqs = bobSeesAfter.map(([seq]) => seq);
    assert.deepEqual(seqs, expected.map((_, i) => i + 1), "numbered 1..N: nothing lost, nothing doubled");
    assert.deepEqual(bobSeesAfter, annSees, "both pages show the same messages in the same order");
    const bodies = bobSeesAfter.map(([, , body]) => body);
    assert.equal(new Set(bodies).size, bodies.length, "no message shown twice");
    // Ann's own messages keep their typing order; the offline and the resent ones appear once.
    const annBodies = bodies.filter((body) => body.startsWith("ann"));
    assert.deepEqual(annBodies, expected.filter(([user]) => user === "ann").map(([, body]) => body));
    assert.deepEqual(new Set(bodies), new Set(expected.map(([, body]) => body)));

    await bob.screenshot({ path: join(artifacts, "screenshot.png") });
    await ann.screenshot({ path: join(artifacts, "screenshot-ann.png") });
  } finally {
    await context.close();
  }
});

test("a token in the page's address leaves the address bar and never travels in a URL", { skip: !tokenUrl }, async () => {
  const context = await launch();
  try {
    const page = await context.newPage();
    page.on("pageerror", (error) => assert.fail(`page error: ${error.message}`));
    const requested = [];
    page.on("request", (request) => requested.push(request.url()));
    page.on("websocket", (socket) => requested.push(socket.url()));
    await page.goto(tokenUrl + "?room=" + ROOM + "#token=" + encodeURIComponent(token));
    assert.ok(!page.url().includes(token), `the address bar keeps no token: ${page.url()}`);
    await page.fill("#user", "carol");
    await page.click("#join");
    await page.waitForSelector('#status[data-state="connected"]', { timeout: PATIENCE_MS });
    await say(page, "sent with a token");
    await waitForCount(page, 1);
    const [[, user, body]] = await shown(page);
    assert.deepEqual([user, body], ["carol", "sent with a token"]);
    assert.ok(!page.url().includes(token), `still no token in the address bar: ${page.url()}`);
    for (const url of requested) assert.ok(!url.includes(encodeURIComponent(token)) && !url.includes(token), `a URL with the token: ${url}`);
    await page.screenshot({ path: join(artifacts, "screenshot-token.png") });
  } finally {
    await context.close();
  }
});

test("GET /confab.js serves the client as a JavaScript module", async () => {
  assert.ok(webUrl, "CONFAB_WEB_URL names the page (scripts/browser.sh sets it)");
  const response = await fetch(new URL("confab.js", webUrl));
  assert.equal(response.status, 200);
  assert.match(response.headers.get("content-type") ?? "", /^text\/javascript\b/);
  assert.match(await response.text(), /^export class ConfabClient\b/m);
});

test("the client module resumes, resends and reports lag with no message lost or doubled", async () => {
  assert.ok(webUrl, "CONFAB_WEB_URL names the page (scripts/browser.sh sets it)");
  const context = await launch();
  try {
    const page = await context.newPage();
    page.on("pageerror", (error) => assert.fail(`page error: ${error.message}`));
    // Any page of the server's origin; the module is imported into it as a caller would.
    await page.goto(webUrl);
    const room = `module-test-${Date.now()}`;
    await page.evaluate(async (room) => {
      const { ConfabClient } = await import("/confab.js");
      const harness = { room, clients: {}, logs: {} };
      window.harness = harness;
      // A WebSocket whose inbound side can go deaf (frames lost on the way in, as on a line
      // that died one way) and that can be handed a frame the server did not send. Each new
      // socket hears; `deafen` acts on the latest one.
      class TestSocket extends WebSocket {
        static latest = null;
        deaf = false;
        constructor(...args) {
          super(...args);
          TestSocket.latest = this;
        }
        get onmessage() {
          return super.onmessage;
        }
        set onmessage(handler) {
          super.onmessage = (event) => this.deaf || handler(event);
        }
      }
      harness.deafen = (deaf) => (TestSocket.latest.deaf = deaf);
      harness.inject = (frame) => TestSocket.latest.dispatchEvent(new MessageEvent("message", { data: JSON.stringify(frame) }));
      // A frame the client did not write, sent to the server on the client's socket.
      harness.sendRaw = (frame) => TestSocket.latest.send(JSON.stringify(frame));
      for (const user of ["amy", "ben"]) {
        const client = new ConfabClient({ user, WebSocket: user === "amy" ? TestSocket : WebSocket });
        const log = { messages: [], events: [] };
        client.on("message", (m) => log.messages.push([m.seq, m.user, m.body]));
        for (const type of ["subscribed", "lagged", "ack", "disconnected", "error"]) {
          client.on(type, (event) => log.events.push({ type, ...event }));
        }
        harness.clients[user] = client;
        harness.logs[user] = log;
        client.join(room, { afterSeq: 0 });
      }
    }, room);
    const send = (user, body) => page.evaluate(([user, body]) => window.harness.clients[user].send(window.harness.room, body), [user, body]);
    const events = (user, type) => page.evaluate(([user, type]) => window.harness.logs[user].events.filter((e) => e.type === type), [user, type]);
    const waitForBody = (user, body) =>
      page.waitForFunction(([user, body]) => window.harness.logs[user].messages.some(([, , b]) => b === body), [user, body]);
    const waitForEvents = (user, type, count) =>
      page.waitForFunction(([user, type, count]) => window.harness.logs[user].events.filter((e) => e.type === type).length >= count, [user, type, count]);
    const setDeaf = (deaf) => page.evaluate((deaf) => window.harness.deafen(deaf), deaf);
    const expected = [];
    const post = async (user, body) => {
      expected.push(body);
      return send(user, body);
    };

    await waitForEvents("amy", "subscribed", 1);
    await waitForEvents("ben", "subscribed", 1);
    for (let i = 1; i <= 3; i++) await post("amy", `amy ${i}`);
    await waitForBody("ben", "amy 3");

    // A dropped connection: ben talks and amy posts while she is away.
    await page.evaluate(() => window.harness.clients.amy.drop(1000));
    await waitForEvents("amy", "disconnected", 1);
    for (let i = 1; i <= 3; i++) await post("ben", `ben ${i}`);
    await post("amy", "amy offline");
    await waitForEvents("amy", "subscribed", 2);
    await waitForBody("ben", "amy offline");
    await waitForBody("amy", "amy offline");

    // A post whose ack and echo are lost: the server has it, amy does not know. After the
    // reconnect she sends it again, and the room's dedupe keeps it single.
    await setDeaf(true);
    const lostId = await post("amy", "amy lost ack");
    await waitForBody("ben", "amy lost ack");
    await page.evaluate(() => window.harness.clients.amy.drop(100));
    await waitForEvents("amy", "subscribed", 3);
    await page.waitForFunction(() => window.harness.clients.amy.pendingCount === 0);
    const resent = (await events("amy", "ack")).filter((ack) => ack.clientMsgId === lostId);
    assert.deepEqual(resent.map((ack) => ack.duplicate), [true], "the resent post was a duplicate, not a second message");

    // A post and a drop at once: it may or may not have reached the server.
    await post("amy", "amy as the line dropped");
    await page.evaluate(() => window.harness.clients.amy.drop(200));
    await post("ben", "ben meanwhile");
    await waitForEvents("amy", "subscribed", 4);
    await waitForBody("amy", "ben meanwhile");

    // A lag marker: amy's reader misses three messages, and the server says so.
    await setDeaf(true);
    for (let i = 1; i <= 3; i++) await post("ben", `ben while amy lags ${i}`);
    await waitForBody("ben", "ben while amy lags 3");
    await setDeaf(false);
    const last = await page.evaluate(() => window.harness.clients.amy.lastSeq(window.harness.room));
    await page.evaluate(([from, to]) => window.harness.inject({ type: "lagged", room: window.harness.room, missed_from: from, missed_to: to }), [last + 1, last + 3]);
    await waitForEvents("amy", "subscribed", 5);
    await waitForBody("amy", "ben while amy lags 3");
    const lagged = await events("amy", "lagged");
    assert.deepEqual(lagged.map(({ missedFrom, missedTo, announced }) => [missedFrom, missedTo, announced]), [[last + 1, last + 3, true]]);

    // A hole the server did not announce: one message lost, the next one arrives.
    await setDeaf(true);
    await post("ben", "ben lost on the way");
    await waitForBody("ben", "ben lost on the way");
    await setDeaf(false);
    await post("ben", "ben after the hole");
    await waitForEvents("amy", "lagged", 2);
    await waitForEvents("amy", "subscribed", 6);
    await waitForBody("amy", "ben after the hole");
    const [, hole] = await events("amy", "lagged");
    assert.equal(hole.announced, false, "the hole is reported as an unannounced lag");

    // The server drops the room on its own (as when a cluster node's room reloads: "left"
    // the client did not ask for; staged here with a leave frame behind the client's back):
    // the client joins again after its last message, with no "left" for its caller.
    await page.evaluate(() => window.harness.sendRaw({ type: "leave", room: window.harness.room }));
    await waitForEvents("amy", "subscribed", 7);
    await post("ben", "ben after the room was dropped");
    await waitForBody("amy", "ben after the room was dropped");

    // A resume the server cannot make exact (after a sequence number from the future) is
    // reported as recovered = false, restarted, and starts over from what the room keeps.
    await page.evaluate(() => {
      const client = new window.harness.clients.amy.constructor({ user: "cal" });
      const log = { messages: [], events: [] };
      client.on("message", (m) => log.messages.push([m.seq, m.user, m.body]));
      client.on("subscribed", (event) => log.events.push({ type: "subscribed", ...event }));
      window.harness.clients.cal = client;
      window.harness.logs.cal = log;
      client.join(window.harness.room, { afterSeq: 1_000_000 });
    });
    await waitForEvents("cal", "subscribed", 1);
    const [calJoin] = await events("cal", "subscribed");
    assert.deepEqual([calJoin.recovered, calJoin.restarted, calJoin.firstSeq], [false, true, 1]);

    await waitForBody("amy", "ben after the hole");
    await waitForBody("ben", "ben after the hole");
    await waitForBody("cal", "ben after the hole");
    await page.waitForFunction(() => Object.values(window.harness.clients).every((client) => client.pendingCount === 0));
    await page.waitForTimeout(300); // any duplicate that was going to arrive has arrived
    const logs = await page.evaluate(() => window.harness.logs);
    const numbered = expected.map((_, i) => i + 1);
    for (const user of ["amy", "ben", "cal"]) {
      const messages = logs[user].messages;
      assert.deepEqual(messages.map(([seq]) => seq), numbered, `${user}: numbered 1..N, nothing lost, nothing doubled`);
      assert.deepEqual(messages, logs.ben.messages, `${user} and ben saw the same messages in the same order`);
    }
    const bodies = logs.ben.messages.map(([, , body]) => body);
    assert.deepEqual(new Set(bodies), new Set(expected), "every post, once");
    assert.deepEqual(bodies.filter((body) => body.startsWith("ben")), expected.filter((body) => body.startsWith("ben")), "ben's in order");
    assert.deepEqual(bodies.filter((body) => body.startsWith("amy")), expected.filter((body) => body.startsWith("amy")), "amy's in order");
    await page.evaluate(() => Object.values(window.harness.clients).forEach((client) => client.close()));
  } finally {
    await context.close();
  }
});
