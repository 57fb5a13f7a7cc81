import { expect, test } from "@playwright/test";
import { ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

// This journey restarts the server, so it runs its own instance of the
// binary that `cargo leptos end-to-end` built, on its own port and database.
// FILIERE_SERVER_BINARY names another build of it, for example the release
// binary or one under a custom CARGO_TARGET_DIR.
const port = Number(process.env.FILIERE_LIVE_PORT ?? 3927);
const base = `http://127.0.0.1:${port}`;
const root = path.resolve(__dirname, "..", "..");
const serverBinary = path.resolve(root, process.env.FILIERE_SERVER_BINARY ?? path.join("target", "debug", "filiere"));
const databaseDir = mkdtempSync(path.join(tmpdir(), "filiere-live-"));

function startServer(): ChildProcess {
  const server = spawn(serverBinary, [], {
    cwd: root,
    env: {
      ...process.env,
      FILIERE_BIND: `127.0.0.1:${port}`,
      DATABASE_URL: `sqlite://${path.join(databaseDir, "live.db")}`,
      PUBLIC_URL: base,
      LEPTOS_OUTPUT_NAME: "filiere",
      LEPTOS_SITE_ROOT: "target/site",
      RUST_LOG: "warn",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  return server;
}

async function waitHealthy(): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      if ((await fetch(`${base}/health`)).ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${base}/health not healthy after 30 s`);
}

async function stopServer(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null) return;
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.kill("SIGTERM");
  await exited;
}

let server: ChildProcess;

test.beforeAll(async () => {
  server = startServer();
  await waitHealthy();
});

test.afterAll(async () => {
  await stopServer(server);
  rmSync(databaseDir, { recursive: true, force: true });
});

test("demo page follows a run live and survives a server restart", async ({ page }) => {
  await page.goto(`${base}/e2e-demo`);
  const streamCheck = page.getByTestId("check-stream");
  await expect(streamCheck).toContainText("flux en direct connecté", { timeout: 30_000 });

  // Slow enough to restart the server in the middle of the run: one meal
  // every 0.86 s, about 25 s per lot.
  await page.locator('[data-task="gavage"]').getByLabel("acceleration").fill("50000");
  await page.locator('[data-task="gavage"]').getByLabel("nb_lots").fill("2");
  await page.getByRole("button", { name: "Démarrer le pipeline (auto)" }).click();

  const firstBar = page.getByTestId("lot-row").first().locator("progress");
  await expect(firstBar).toBeVisible();
  await expect.poll(async () => Number(await firstBar.getAttribute("value")), { timeout: 15_000 }).toBeGreaterThan(1);
  const before = Number(await firstBar.getAttribute("value"));
  await expect.poll(async () => Number(await firstBar.getAttribute("value")), { timeout: 15_000 }).toBeGreaterThan(before);

  await stopServer(server);
  await expect(streamCheck).toContainText("Connexion perdue depuis", { timeout: 15_000 });

  server = startServer();
  await waitHealthy();
  await expect(streamCheck).toContainText("flux en direct connecté", { timeout: 20_000 });
  // The new process runs no task, and the page shows it without a reload.
  await expect(page.getByTestId("state-gavage")).toHaveText("arrêté");
  await expect(page.getByTestId("event-log")).toContainText("État complet resynchronisé");
  await expect(page.getByTestId("lot-row").first()).toBeVisible();

  // A new run from the same page: heat map and QR code arrive by themselves.
  await page.locator('[data-task="gavage"]').getByLabel("acceleration").fill("2000000");
  await page.getByRole("button", { name: "Démarrer le pipeline (auto)" }).click();
  await expect(page.getByTestId("latest-sample").locator("svg.heatmap")).toBeVisible({ timeout: 60_000 });
  await expect(page.getByTestId("qr-code")).toBeVisible({ timeout: 60_000 });
  await expect(page.getByTestId("grade-counts")).toBeVisible();
});

test("a gavage run cut by a crash resumes from the page", async ({ page, request }) => {
  // One meal every 0.22 s: the kill lands in the middle of the run.
  const started = await request.post(`${base}/api/control/gavage/start`, {
    data: { nb_lots: 2, acceleration: 200000 },
  });
  expect(started.ok()).toBeTruthy();
  const runId = (await started.json()).status.run_id;
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const killed = new Promise((resolve) => server.once("exit", resolve));
  server.kill("SIGKILL");
  await killed;

  server = startServer();
  await waitHealthy();
  await page.goto(`${base}/e2e-demo`);
  const card = page.locator('[data-task="gavage"]');
  await expect(page.getByTestId("interrupted-gavage")).toContainText("arrêt brutal");
  await expect(page.getByTestId("state-gavage")).toHaveText("arrêté");

  await page.getByTestId("resume-gavage").click();
  await expect(page.getByTestId("interrupted-gavage")).toHaveCount(0);
  // The resumed run is the same one, and it finishes its lots.
  await expect(page.getByTestId("state-gavage")).toHaveText("arrêté", { timeout: 30_000 });
  await expect(card).toContainText("2 lots terminés");
  const status = await (await request.get(`${base}/api/control/status`)).json();
  const gavage = status.tasks.find((task: { task: string }) => task.task === "gavage");
  expect(gavage.run_id).toBe(runId);
});
