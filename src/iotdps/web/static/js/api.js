// The management REST API, called with the session cookie (the browser sends it; it is
// HttpOnly, so this code never sees it) and, on every change, the session's CSRF token.
// There are no console-only data routes: the pages use the same routes as the SDKs and the CLI.

export const session = {
  policies: [],
  rights: new Set(),
  csrfToken: null,
  expiresUtc: null,
};

export const RIGHTS = {
  serviceConfig: "ServiceConfig",
  enrollmentRead: "EnrollmentRead",
  enrollmentWrite: "EnrollmentWrite",
  registrationRead: "RegistrationStatusRead",
  registrationWrite: "RegistrationStatusWrite",
  registryRead: "RegistryRead",
  registryWrite: "RegistryWrite",
  serviceConnect: "ServiceConnect",
};

export function can(right) {
  return session.rights.has(right);
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }

  get stale() {
    return this.status === 412;
  }
}

export const STALE_MESSAGE =
  "Someone changed this record after you opened it, so your change was not saved. " +
  "Reload it to see the current version, then make your change again.";

let onSignedOut = () => {};
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

function adopt(doc) {
  session.policies = doc.policies || [];
  session.rights = new Set(doc.rights || []);
  session.csrfToken = doc.csrfToken || null;
  session.expiresUtc = doc.expiresUtc || null;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
    code = body && body.errorCode;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

/**
 * api("GET", "/enrollments/dev-1") -> parsed JSON (null for 204).
 * options: body (JSON), etag (If-Match), hub (x-iotdps-hub), headers, raw (return the Response),
 * signal (AbortSignal).
 */
export async function api(method, path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = session.csrfToken || "";
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.etag) headers["If-Match"] = `"${options.etag}"`;
  if (options.hub) headers["x-iotdps-hub"] = options.hub;
  const response = await fetch(path, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
    cache: "no-store",
    signal: options.signal,
  });
  if (options.raw) return response;
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && !(await stillSignedIn())) onSignedOut();
    throw error;
  }
  if (response.status === 204) return null;
  const text = await response.text();
  const doc = text ? JSON.parse(text) : null;
  const continuation = response.headers.get("x-ms-continuation");
  if (Array.isArray(doc) && continuation !== null) doc.continuation = continuation;
  return doc;
}

/** A page of a paged query route (x-ms-max-item-count, x-ms-continuation). */
export async function page(path, size, continuation, options = {}) {
  const headers = { "x-ms-max-item-count": String(size) };
  if (continuation) headers["x-ms-continuation"] = continuation;
  const items = await api("POST", path, { ...options, headers, body: {} });
  return { items, continuation: items.continuation || null };
}

async function stillSignedIn() {
  const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    await response.text(); // read to the end: an unread body keeps the request open
    return false;
  }
  adopt(await response.json());
  return true;
}

export async function loadSession() {
  const response = await fetch("/console/session", { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    await response.text();
    return false;
  }
  if (!response.ok) throw await failure(response);
  adopt(await response.json());
  return true;
}

/** Sign in (or add credentials to the open session). credentials: [{connectionString}|{policyName, key}]. */
export async function signIn(credentials) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (session.csrfToken) headers["X-CSRF-Token"] = session.csrfToken;
  const response = await fetch("/console/session", {
    method: "POST",
    headers,
    body: JSON.stringify({ credentials }),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  adopt(await response.json());
}

export async function signOut() {
  const response = await fetch("/console/session", {
    method: "DELETE",
    headers: { "X-CSRF-Token": session.csrfToken || "" },
    credentials: "same-origin",
  });
  await response.text();
  adopt({});
}

/**
 * Server-sent events over fetch (EventSource cannot send the x-iotdps-hub header). Calls
 * onEvent(name, data, id) for each event until the stream ends or signal aborts; resolves with
 * the last event id.
 */
export async function stream(path, { hub, signal, onEvent }) {
  const headers = { Accept: "text/event-stream" };
  if (hub) headers["x-iotdps-hub"] = hub;
  const response = await fetch(path, { headers, credentials: "same-origin", cache: "no-store", signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let lastId = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "event") name = val;
        else if (key === "data") data.push(val);
        else if (key === "id") id = val;
      }
      if (id !== null) lastId = id;
      if (data.length) onEvent(name, data.join("\n"), id);
    }
  }
  return lastId;
}
