/**
 * The service's HTTP pieces: JSON replies, the bearer-token check (constant time, `Basic` as SNS
 * sends it), bounded request bodies, and SNS subscription confirmation.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";

/** A JSON response. */
export function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function sha256(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** The credential a request presents: `Bearer <token>`, or the password of `Basic` (SNS). */
function presentedToken(req: Request): string | undefined {
  const header = req.headers.get("authorization");
  const m = header ? /^\s*(\S+)\s+(\S+)\s*$/.exec(header) : null;
  if (!m) return undefined;
  const scheme = m[1].toLowerCase();
  if (scheme === "bearer") return m[2];
  if (scheme !== "basic") return undefined;
  try {
    const decoded = new TextDecoder().decode(Uint8Array.from(atob(m[2]), (c) => c.charCodeAt(0)));
    const colon = decoded.indexOf(":");
    return colon < 0 ? undefined : decoded.slice(colon + 1);
  } catch {
    return undefined;
  }
}

/**
 * The check of `token` (undefined: every request passes): whether a request presents it.
 * Digests have one length, so the comparison's time says nothing about the token.
 */
export function tokenCheck(token: string | undefined): (req: Request) => boolean {
  if (token === undefined) return () => true;
  const digest = sha256(token);
  return (req) => {
    const presented = presentedToken(req);
    return presented !== undefined && timingSafeEqual(sha256(presented), digest);
  };
}

/** The 401 for a missing or wrong token. */
export function unauthorized(): Response {
  return json(401, { error: "missing or wrong bearer token" }, { "www-authenticate": "Bearer" });
}

/** Reads a body up to `max` bytes; undefined when it is larger. */
export async function readBody(req: Request, max: number): Promise<Uint8Array | undefined> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > max) {
    await req.body?.cancel();
    return undefined;
  }
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > max) {
      await reader.cancel();
      return undefined;
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) (body.set(c, at), at += c.length);
  return body;
}

/** SNS confirmation URLs are only ever followed to SNS itself. */
const SNS_HOST = /^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$/;

/**
 * Confirms an SNS subscription by following its `SubscribeURL`, only over https to SNS itself
 * (the URL carries a confirmation token: never logged).
 * @returns whether SNS answered 2xx
 */
export async function confirmSubscription(
  event: { type: string; subscribeUrl?: string },
): Promise<boolean> {
  let url: URL | undefined;
  try {
    url = event.subscribeUrl ? new URL(event.subscribeUrl) : undefined;
  } catch {
    url = undefined;
  }
  const ok = url?.protocol === "https:" && SNS_HOST.test(url.hostname) &&
    event.type === "SubscriptionConfirmation";
  if (!ok) return false;
  try {
    const res = await fetch(url!, { signal: AbortSignal.timeout(10_000) });
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false;
  }
}
