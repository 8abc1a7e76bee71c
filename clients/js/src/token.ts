/** What the client reads from a JWT without verifying it: only its expiry, to refresh early. */

/** The token's `exp` in ms since the Unix epoch, or undefined when it cannot be read. */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined) return undefined;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims: unknown = JSON.parse(atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), "=")));
    if (typeof claims === "object" && claims !== null) {
      const exp = (claims as { exp?: unknown }).exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp * 1000;
    }
  } catch {
    return undefined;
  }
  return undefined;
}
