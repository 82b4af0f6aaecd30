// The decisions inspector in a real browser: tests/browser.rs starts `bon-proxy serve --demo`
// and runs this script with Node, which drives Debian's Chromium through playwright-core.
//
// It opens /ui, sends best-of-3 requests with curl while the page stays open, waits for each
// to appear without a reload (the live view), filters by strategy, opens each decision and
// checks that the winner card is highlighted and that every candidate's score reads as the
// response's x-best-of-n-scores header said, then saves a screenshot.
//
// Environment: BON_UI_BASE (http://127.0.0.1:PORT), BON_CHROMIUM (the browser),
// BON_SCREENSHOT (where the PNG goes). Exits non-zero, saying why, on the first failure.

import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = need("BON_UI_BASE");
const executablePath = need("BON_CHROMIUM");
const screenshot = need("BON_SCREENSHOT");
const STEP = 10_000; // ms any one step may take

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/browser.rs sets it)`);
  return value;
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// One best-of-3 request through curl, as a user would send it; its x-best-of-n-* headers.
function ask(requestId, judge, question) {
  const head = execFileSync("curl", [
    "-sS", "--fail-with-body", "--max-time", "20", "-D", "-", "-o", "/dev/null",
    `${base}/v1/chat/completions`,
    "-H", "content-type: application/json",
    "-H", "x-best-of-n: 3",
    "-H", `x-best-of-n-judge: ${judge}`,
    "-H", `x-request-id: ${requestId}`,
    "-d", JSON.stringify({ model: "demo", messages: [{ role: "user", content: question }] }),
  ], { encoding: "utf8" });
  const headers = {};
  for (const line of head.split("\r\n")) {
    const at = line.indexOf(":");
    if (at > 0) headers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
  }
  check(headers["x-best-of-n"] === "3", `no best-of-3 answer for ${requestId}: ${head}`);
  return headers;
}

const asks = [
  { id: "ui-listwise", judge: "listwise", question: "How do I make a good cup of tea?" },
  { id: "ui-pairwise", judge: "pairwise", question: "Why is a balanced diet important?" },
  { id: "ui-pointwise", judge: "pointwise", question: "Explain TCP slow start in two sentences." },
];

const profile = mkdtempSync(join(tmpdir(), "bon-ui-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1440, height: 1000 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const problems = [];
try {
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP);
  // A CSP violation or a script error shows up here: either fails the test.
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));

  const response = await page.goto(`${base}/ui`);
  check(response.status() === 200, `/ui answered ${response.status()}`);
  await page.locator("#live.on").waitFor();
  // Set once; a reload would lose it.
  await page.evaluate(() => { window.__sameDocument = true; });

  const sent = {};
  for (const { id, judge, question } of asks) {
    sent[id] = ask(id, judge, question);
    await page.locator(`#rows tr[data-request-id="${id}"]`).waitFor();
  }
  check(await page.evaluate(() => window.__sameDocument === true), "the page reloaded");
  const order = await page.locator("#rows tr").evaluateAll((rows) => rows.map((r) => r.dataset.requestId));
  check(order.slice(0, 3).join() === "ui-pointwise,ui-pairwise,ui-listwise", `not newest first: ${order}`);

  // The strategy filter keeps only its own decisions, and "any" brings the rest back.
  await page.selectOption("#f-strategy", "pairwise");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length === 1);
  check(await page.locator('#rows tr[data-request-id="ui-pairwise"]').count() === 1, "filter lost its row");
  await page.selectOption("#f-strategy", "");
  await page.waitForFunction(() => document.querySelectorAll("#rows tr").length >= 3);

  // Each decision: the winner highlighted, every score as the header printed it.
  for (const { id } of asks) {
    const headers = sent[id];
    await page.locator(`#rows tr[data-request-id="${id}"]`).click();
    await page.locator("#d-facts dd", { hasText: id }).waitFor();
    const cards = page.locator("#d-candidates article.candidate");
    check(await cards.count() === 3, `${id}: ${await cards.count()} candidate cards`);
    const selected = headers["x-best-of-n-selected"];
    const winner = page.locator("#d-candidates article.candidate.winner");
    check(await winner.count() === 1, `${id}: ${await winner.count()} winner cards`);
    check(await winner.getAttribute("data-index") === selected,
      `${id}: winner card #${await winner.getAttribute("data-index")}, header says ${selected}`);
    check(await winner.locator('.badge[aria-label="winner"]').count() === 1, `${id}: no winner badge`);
    const border = await winner.evaluate((card) => getComputedStyle(card).borderTopWidth);
    check(border === "2px", `${id}: the winner card is not highlighted (border ${border})`);
    const scores = await cards.locator(".score").allTextContents();
    check(scores.join(",") === headers["x-best-of-n-scores"],
      `${id}: page scores ${scores.join(",")}, header ${headers["x-best-of-n-scores"]}`);
    check(await page.locator("#d-verdict pre.raw").count() >= 1, `${id}: no raw verdict shown`);
    check(await cards.locator("pre.text").count() === 3, `${id}: candidate texts missing`);
  }

  await page.locator('#rows tr[data-request-id="ui-pointwise"]').click();
  await page.locator("#d-facts dd", { hasText: "ui-pointwise" }).waitFor();
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: screenshot, fullPage: true });
  check(problems.length === 0, problems.join("\n"));
  console.log(`inspector ok: ${asks.length} decisions live, winners and scores match; ${screenshot}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
