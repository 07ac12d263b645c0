// The browser test: two headless Chromium pages chat in one room through the page that
// `confab serve` embeds. scripts/browser.sh starts the server and sets CONFAB_WEB_URL.
//
// It checks that messages typed in one page appear in the other in order, that presence and
// typing show, and that after a forced reconnect (the page's socket closed while the other
// page keeps talking, and a message typed while disconnected) both pages show exactly the same
// messages, numbered 1..N with no gap and no duplicate. With CONFAB_WEB_TOKEN_URL (a server
// started with --tokens) and CONFAB_WEB_TOKEN, it also checks that a token given in the page's
// address leaves the address bar and never travels in a URL.
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
    await bob.waitForFunction(() => window.confab.state.pending.size === 0);
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
