import { expect, test } from "@playwright/test";

// Makes sure one product exists, through the JSON API, and returns it.
async function someProduct(request: import("@playwright/test").APIRequestContext) {
  const latest = await request.get("/api/consumer/latest-product");
  if (latest.ok()) return (await latest.json()).product;
  const started = await request.post("/api/control/pipeline/start", {
    data: { gavage: { nb_lots: 1, acceleration: 2000000 }, sqal: { interval: 0.01 } },
  });
  expect(started.ok(), await started.text()).toBeTruthy();
  await expect
    .poll(async () => (await request.get("/api/consumer/latest-product")).status(), { timeout: 60_000 })
    .toBe(200);
  return (await (await request.get("/api/consumer/latest-product")).json()).product;
}

test("trace page shows product, lot and grade", async ({ page, request }) => {
  const product = await someProduct(request);
  const response = await page.goto(`/trace/${product.token}`);
  expect(response?.status()).toBe(200);
  await expect(page.getByRole("heading", { level: 1 })).toHaveText(product.product_id);
  await expect(page.getByTestId("code-lot")).toHaveText(product.code_lot);
  await expect(page.getByTestId("grade")).toHaveText(product.grade);
  await expect(page.getByRole("img", { name: "ToF 8×8" })).toBeVisible();
  await expect(page.getByRole("img", { name: "Courbe de gavage" })).toBeVisible();
  await expect(page.getByRole("heading", { name: "Historique" })).toBeVisible();
  // The grade card carries the weight with its uncertainty, the four
  // spectral indices and the defect list (possibly "none found").
  await expect(page.getByTestId("liver-weight")).toContainText(/\d+ ± \d+ g/);
  await expect(page.getByTestId("indices").locator("meter")).toHaveCount(4);
  await expect(page.getByTestId("defects")).toBeVisible();
  // The product's history verifies against its lot's hash chain.
  await expect(page.getByTestId("integrity")).toHaveAttribute("data-status", "verified");
  await expect(page.getByTestId("integrity")).toContainText("Historique intact");
  const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  const viewport = page.viewportSize()!.width;
  expect(scrollWidth, "no horizontal scroll").toBeLessThanOrEqual(viewport);
});

test("trace page fits a 360 px screen", async ({ page, request }, testInfo) => {
  test.skip(testInfo.project.name !== "mobile", "checked once, on the phone project");
  const product = await someProduct(request);
  await page.setViewportSize({ width: 360, height: 740 });
  await page.goto(`/trace/${product.token}`);
  await expect(page.getByTestId("grade")).toHaveText(product.grade);
  const scrollWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(scrollWidth, "no horizontal scroll at 360 px").toBeLessThanOrEqual(360);
  // Every button and the language link offer at least a 44 px tall target.
  const heights = await page.locator("button:visible, a.lang-switch").evaluateAll((nodes) =>
    nodes.map((node) => [node.textContent?.trim(), node.getBoundingClientRect().height]),
  );
  for (const [label, height] of heights) {
    expect(height as number, `tap target ${label}`).toBeGreaterThanOrEqual(44);
  }
});

test("unknown token shows produit introuvable with 404", async ({ page }) => {
  const response = await page.goto("/trace/AAAAAAAAAAAAAAAAAAAAAA");
  expect(response?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Produit introuvable" })).toBeVisible();
});

test("stored values win over the QR payload hints", async ({ page, request }) => {
  const product = await someProduct(request);
  const wrongGrade = product.grade === "C" ? "A+" : "C";
  await page.goto(`/trace/${product.token}?lot=XX0000000&grade=${encodeURIComponent(wrongGrade)}`);
  await expect(page.getByTestId("grade")).toHaveText(product.grade);
  await expect(page.getByTestId("code-lot")).toHaveText(product.code_lot);
  await expect(page.getByTestId("hint-note")).toContainText("XX0000000");
});

test("photo of a product QR code opens its page", async ({ page, request }, testInfo) => {
  test.skip(testInfo.project.name === "no-javascript", "the scanner needs JavaScript");
  const product = await someProduct(request);

  // A picture of the printed code: the server's QR SVG, photographed by the browser.
  await page.setViewportSize({ width: 400, height: 400 });
  await page.goto(`/qr/${product.token}.svg`);
  const photo = await page.screenshot({ type: "png" });
  // A picture with no QR code in it.
  await page.goto("/trace");
  const noCode = await page.screenshot({ type: "png" });

  await expect(page.getByTestId("scanner")).toBeVisible();
  await page.getByTestId("scan-photo").setInputFiles({ name: "blank.png", mimeType: "image/png", buffer: noCode });
  await expect(page.getByTestId("scan-problem")).toContainText("Aucun QR code lisible");

  await page.getByTestId("scan-photo").setInputFiles({ name: "pack.png", mimeType: "image/png", buffer: photo });
  await page.waitForURL(new RegExp(`/trace/${product.token}\\?lot=`));
  await expect(page.getByTestId("code-lot")).toHaveText(product.code_lot);
});

test("scan controls need JavaScript, the typed code does not", async ({ page }, testInfo) => {
  test.skip(testInfo.project.name !== "no-javascript", "checks the page without JavaScript");
  await page.goto("/trace");
  await expect(page.getByTestId("scanner")).toHaveCount(0);
  await expect(page.getByLabel("Code du produit")).toBeVisible();
});
