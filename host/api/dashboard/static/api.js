// The REST API and the event stream, with the bearer token kept in this browser.
// Paths are relative to the page, so the dashboard works behind a reverse proxy's prefix too.

const TOKEN_KEY = "edgetailor.token";

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

// `edgetailor demo` prints the dashboard's address as .../#token=et_...: the fragment never
// reaches a server or its logs; the page keeps the token and drops it from the address bar.
export function takeTokenFromAddress() {
  const match = /(?:^#|[#&?])token=([^&]+)/.exec(location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search + "#/fleet");
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function failure(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  try {
    const doc = await response.json();
    if (doc && doc.error) {
      code = doc.error.code;
      message = doc.error.message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

// Reading needs a token too: a refused read asks the page (main.js) for one, once at a time.
function refusedRead(method, error) {
  if (method === "GET" && (error.status === 401 || error.status === 403)) {
    document.dispatchEvent(new CustomEvent("token-needed", { detail: error.message }));
  }
  return error;
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`api/v1${path}`, init);
  if (!response.ok) throw refusedRead(method, await failure(response));
  return response.status === 204 ? null : response.json();
}

export async function fragment(path) {
  const response = await fetch(path, { headers: headers({ Accept: "text/html" }) });
  if (!response.ok) throw refusedRead("GET", await failure(response));
  return response.text();
}

function parseBlock(block) {
  const event = { id: null, type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = Number(value);
    else if (field === "event") event.type = value;
    else if (field === "data") event.data += (event.data ? "\n" : "") + value;
  }
  return event.data ? event : null;
}

// Server-sent events read with fetch rather than EventSource, so the token goes in a header
// (every reader needs it). The first connection asks for the
// events the service still holds (Last-Event-ID 0): that fills the sparklines at once.
export async function streamEvents(onEvent, onState) {
  let last = 0;
  for (;;) {
    try {
      const response = await fetch("api/v1/events", {
        headers: headers({ Accept: "text/event-stream", "Last-Event-ID": String(last) }),
        cache: "no-store",
      });
      if (!response.ok) throw await failure(response);
      onState("live", "");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.id !== null) last = event.id;
          try {
            onEvent(event.type, JSON.parse(event.data));
          } catch (err) {
            console.error("event", event.type, err);
          }
        }
      }
      onState("reconnecting", "the event stream closed");
    } catch (err) {
      onState("reconnecting", err.message || String(err));
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
