import { expect, test } from "@playwright/test";

test("pipeline click leads to trace page", async ({ page }) => {
  // A WASM bundle that fails at start-up (as one rewritten by Binaryen 108's
  // wasm-opt does) shows up here as an uncaught error or a console error.
  const pageErrors: string[] = [];
  page.on("pageerror", (error) => pageErrors.push(`uncaught: ${error.message}`));
  page.on("console", (message) => {
    // The site has no favicon, and Chromium logs its 404 as an error.
    if (message.type() !== "error" || message.location().url.endsWith("/favicon.ico")) return;
    pageErrors.push(`console: ${message.text()}`);
  });

  await page.goto("/e2e-demo");
  try {
    // The stream connects once the page is hydrated: only then do buttons work.
    await expect(page.getByTestId("check-stream")).toContainText("flux en direct connecté", { timeout: 30_000 });
  } finally {
    // Reported in place of the timeout above when the page logged an error.
    expect(pageErrors, "errors while the demo page started").toEqual([]);
  }

  await page.getByRole("button", { name: "Démarrer le pipeline (auto)" }).click();
  await expect(page.getByTestId("pipeline-status")).toContainText("En attente du premier produit");

  const qr = page.getByTestId("qr-code");
  await expect(qr).toBeVisible({ timeout: 60_000 });
  await expect(page.getByTestId("pipeline-status")).toContainText("Premier produit de ce run");
  await expect(qr.locator("img")).toHaveJSProperty("complete", true);
  const naturalWidth = await qr.locator("img").evaluate((img: HTMLImageElement) => img.naturalWidth);
  expect(naturalWidth, "QR image decoded").toBeGreaterThan(0);

  // Progress was shown while the lots ran.
  await expect(page.getByTestId("lot-row").first()).toBeVisible();

  const payload = (await page.getByTestId("qr-payload").textContent()) ?? "";
  const url = new URL(payload);
  expect(url.pathname).toMatch(/^\/trace\/[A-Za-z0-9_-]{22}$/);
  const lot = url.searchParams.get("lot");
  const grade = url.searchParams.get("grade");
  expect(lot, "payload names the lot").toMatch(/^(LL|LS|MT)\d{7}$/);
  expect(["A+", "A", "B", "C"]).toContain(grade);

  // The lot was created by this click: the lots table of this run lists it.
  await expect(page.getByTestId("lot-row").filter({ hasText: lot! })).toBeVisible();

  await page.goto(payload);
  await expect(page.getByTestId("code-lot")).toHaveText(lot!);
  await expect(page.getByTestId("grade")).toHaveText(grade!);
});

test("bad acceleration is refused with the field and range", async ({ page }) => {
  await page.goto("/e2e-demo");
  await expect(page.getByTestId("check-stream")).toContainText("flux en direct connecté", { timeout: 30_000 });
  const gavage = page.locator('[data-task="gavage"]');
  await gavage.getByLabel("acceleration").fill("0");
  await gavage.getByRole("button", { name: "Démarrer" }).click();
  await expect(gavage.getByRole("alert")).toContainText("acceleration");
  await expect(gavage.getByRole("alert")).toContainText("1..=1000000000");
  await expect(page.getByTestId("state-gavage")).not.toHaveText("en cours");
});
