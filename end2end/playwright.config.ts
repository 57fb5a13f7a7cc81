import { defineConfig, devices } from "@playwright/test";

// The server is started by `cargo leptos end-to-end`; global-setup waits for
// its /health. The browser is Debian's Chromium: Playwright downloads none.
const baseURL = process.env.FILIERE_BASE_URL ?? "http://127.0.0.1:3000";

const chromium = {
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
};

export default defineConfig({
  testDir: "./tests",
  globalSetup: "./global-setup.ts",
  timeout: 120_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: process.env.CI ? [["list"]] : [["list"], ["html", { open: "never" }]],
  outputDir: "test-results",
  use: {
    baseURL,
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "desktop",
      use: { ...devices["Desktop Chrome"], launchOptions: chromium },
    },
    {
      name: "mobile",
      testMatch: /trace\.spec\.ts/,
      use: { ...devices["Pixel 7"], launchOptions: chromium },
    },
    {
      name: "no-javascript",
      testMatch: /trace\.spec\.ts/,
      use: { ...devices["Pixel 7"], javaScriptEnabled: false, launchOptions: chromium },
    },
  ],
});
