// Waits until the server that `cargo leptos end-to-end` started returns 200 on
// /health, because cargo-leptos runs the tests without waiting for it.
const baseURL = process.env.FILIERE_BASE_URL ?? "http://127.0.0.1:3000";
const LIMIT_MS = 120_000;

export default async function globalSetup(): Promise<void> {
  const deadline = Date.now() + LIMIT_MS;
  let last = "no answer yet";
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`${baseURL}/health`);
      if (response.ok) return;
      last = `status ${response.status}`;
    } catch (error) {
      last = String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${baseURL}/health not healthy after ${LIMIT_MS / 1000} s: ${last}`);
}
