// Shared by the Node scenarios that tests/integration/test_js_client.py runs against real
// relay processes: loads the built package (dist/esm) and `ws` from clients/js, bounds every
// wait, and prints one JSON result line for the Python side to assert on.
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

export const packageDir = process.env.GAMECLUSTER_CLIENT_DIR;
if (!packageDir) throw new Error("GAMECLUSTER_CLIENT_DIR (the built clients/js) is not set");
export const client = await import(pathToFileURL(join(packageDir, "dist/esm/index.js")).href);
export const { WebSocket } = createRequire(join(packageDir, "package.json"))("ws");

/** Fail the scenario after `ms` (every scenario is bounded). */
export function deadline(ms, what) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${ms} ms: ${what()}`);
    process.exit(2);
  }, ms);
  timer.unref();
}

/** Resolve when `predicate()` holds, checked on every `event` of `emitter`. */
export function until(emitter, event, predicate) {
  return new Promise((resolve) => {
    if (predicate()) return resolve();
    const off = emitter.on(event, () => {
      if (predicate()) {
        off();
        resolve();
      }
    });
  });
}

/** An HS256 JWT with the relay's claims (docs/security.md), minted as a game backend would. */
export function mintToken(secret, { sub, lifetimeSeconds, join = ["match:*"], publish = ["match:*"] }) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const header = part({ alg: "HS256", typ: "JWT" });
  const claims = part({ sub, exp: Math.floor(Date.now() / 1000) + lifetimeSeconds, rooms: { join, publish } });
  const signature = createHmac("sha256", secret).update(`${header}.${claims}`).digest("base64url");
  return `${header}.${claims}.${signature}`;
}

export function report(result) {
  console.log(JSON.stringify(result));
}
