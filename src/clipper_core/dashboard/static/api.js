// The management API from the page: the token, JSON calls and the event stream.
// The token lives in this tab's sessionStorage only (never in the URL), and every request goes
// to this page's own origin with a JSON content type, as the management API requires.

const TOKEN_KEY = "clipper.managementToken";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers() {
  const h = { "Content-Type": "application/json", "Accept": "application/json" };
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

async function readAnswer(resp) {
  const text = await resp.text();
  try {
    return JSON.parse(text);
  } catch (e) {
    return { cause: text.slice(0, 500) };
  }
}

/** POST a management route; resolves to {ok, status, data} (never throws on an HTTP error). */
export async function call(route, body) {
  const resp = await fetch(route, {
    method: "POST", headers: headers(), body: JSON.stringify(body),
    credentials: "same-origin", cache: "no-store", redirect: "error",
  });
  return { ok: resp.ok, status: resp.status, data: await readAnswer(resp) };
}

/** The management API said no (401 and friends) to the event stream. */
export class Refused extends Error {
  constructor(status, data) {
    super((data && (data.cause || data.error)) || `HTTP ${status}`);
    this.status = status;
    this.data = data;
  }
}

/**
 * Read the server-sent events of /dashboard/events until the stream ends or `signal` aborts.
 * fetch() rather than EventSource: EventSource cannot send the Authorization header.
 */
export async function stream(onEvent, signal) {
  const resp = await fetch("/dashboard/events", {
    headers: { ...headers(), "Accept": "text/event-stream" },
    credentials: "same-origin", cache: "no-store", signal, redirect: "error",
  });
  if (!resp.ok) throw new Refused(resp.status, await readAnswer(resp));
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}
