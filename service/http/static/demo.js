// genjobs live view: one generation streamed into a browser tab, every event shown with its
// stream sequence number, every reconnect marked, and a stop button.
//
// Two clients, chosen by ?client=:
//   eventsource (default)  the browser's own EventSource. Its reconnects after a drop send
//                          Last-Event-ID, so the gateway continues with the next event: no
//                          snapshot, no gap, no duplicate. After a reload the tab continues
//                          with ?after=<last seq> from the state it kept in sessionStorage.
//   librechat              what LibreChat's useResumableSSE does with sse.js: fetch with an
//                          Authorization header, and on a network error a new request with
//                          ?resume=true whose first frame is the {sync, resumeState,
//                          pendingEvents} snapshot; it replaces the content, then applies the
//                          pending events. Backoff 1, 2, 4, 8, 16 s (x ?retry=ms / 1000).
//
// Other parameters: job (required), token (a JWT: Authorization header for fetch, and
// ?token= for EventSource, which cannot send headers), prefix (default
// /api/agents/chat), fresh=1 (forget the kept state).
//
// The page shows what it received, nothing filtered: a duplicate or out-of-order event is
// applied like any other and counted, so a gateway bug shows as wrong text and a counter.
// window.genjobsView exposes the same state to tests; <body data-state> is
// connecting | streaming | reconnecting | done | aborted | error | failed.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const cfg = {
    job: params.get("job") || "",
    client: params.get("client") === "librechat" ? "librechat" : "eventsource",
    token: params.get("token") || "",
    prefix: (params.get("prefix") || "/api/agents/chat").replace(/\/$/, ""),
    retryMs: Number(params.get("retry") || 1000),
    maxRetries: 5,
  };
  const storeKey = `genjobs:${cfg.client}:${cfg.job}`;
  const $ = (id) => document.getElementById(id);

  const view = {
    client: cfg.client,
    job: cfg.job,
    state: "connecting",
    content: [], // LibreChat content parts by index: {type:'text',text} | {type:'think',think} | tool
    steps: {}, // run step id -> content index
    seqs: [], // every seq received, in order of arrival, over all connections and reloads
    connections: [], // per connection: {via, after, seqs: []}
    lastSeq: 0,
    duplicates: 0,
    outOfOrder: 0,
    reconnects: 0,
    reloads: 0,
    syncs: 0,
    events: 0,
    final: null,
    error: null,
    abortReply: null,
    log: [],
    get text() {
      return view.content
        .filter((p) => p && p.type === "text")
        .map((p) => p.text)
        .join("");
    },
  };
  window.genjobsView = view;

  // --- state kept across reloads (sessionStorage: this tab only) ------------------------------

  function restore() {
    if (params.get("fresh") === "1") {
      sessionStorage.removeItem(storeKey);
      return;
    }
    const raw = sessionStorage.getItem(storeKey);
    if (!raw) return;
    const kept = JSON.parse(raw);
    Object.assign(view, {
      content: kept.content,
      steps: kept.steps,
      seqs: kept.seqs,
      connections: kept.connections,
      lastSeq: kept.lastSeq,
      duplicates: kept.duplicates,
      outOfOrder: kept.outOfOrder,
      reconnects: kept.reconnects,
      reloads: kept.reloads + 1,
      syncs: kept.syncs,
      events: kept.events,
      final: kept.final,
      error: kept.error,
      log: kept.log,
    });
    seen = new Set(view.client === "eventsource" ? view.seqs : []);
    note(`reloaded: continuing after seq ${view.lastSeq}`);
  }

  let saveTimer = null;
  function save() {
    // Throttled, and always one consistent picture: content and lastSeq are saved together.
    if (saveTimer !== null) return;
    saveTimer = setTimeout(saveNow, 50);
  }
  function saveNow() {
    if (saveTimer !== null) clearTimeout(saveTimer);
    saveTimer = null;
    const { content, steps, seqs, connections, lastSeq, duplicates, outOfOrder } = view;
    const { reconnects, reloads, syncs, events, final, error, log } = view;
    sessionStorage.setItem(
      storeKey,
      JSON.stringify({
        content, steps, seqs, connections, lastSeq, duplicates, outOfOrder,
        reconnects, reloads, syncs, events, final, error, log: log.slice(-200),
      }),
    );
  }
  // Leaving (a reload): the browser ends the stream and may report that as an error; the tab
  // keeps what it had, it did not fail.
  // (beforeunload comes first: Chromium cancels the EventSource, with an error event, before
  // pagehide.)
  let unloading = false;
  const leaving = () => {
    if (!unloading) saveNow();
    unloading = true;
  };
  addEventListener("beforeunload", leaving);
  addEventListener("pagehide", leaving);

  // --- applying LibreChat events ----------------------------------------------------------------

  function part(index, type) {
    let p = view.content[index];
    if (!p) {
      p = type === "think" ? { type, think: "" } : { type, text: "" };
      view.content[index] = p;
    }
    return p;
  }

  function applyEvent(ev) {
    const data = ev.data || {};
    switch (ev.event) {
      case "on_run_step": {
        view.steps[data.id] = data.index;
        if (data.type === "tool_calls") {
          const call = (data.stepDetails?.tool_calls || [])[0] || {};
          view.content[data.index] = { type: "tool_call", tool_call: { name: call.name || "" } };
        }
        break;
      }
      case "on_message_delta":
      case "on_reasoning_delta": {
        const index = view.steps[data.id] ?? 0;
        for (const c of data.delta?.content || []) {
          if (c.type === "text") part(index, "text").text += c.text;
          else if (c.type === "think") part(index, "think").think += c.think;
        }
        break;
      }
      case "on_run_step_completed": {
        const r = data.result || {};
        const index = view.steps[r.id];
        if (index !== undefined && view.content[index]?.type === "tool_call") {
          view.content[index].tool_call.output = r.tool_call?.output ?? "";
        }
        break;
      }
      default:
        break;
    }
  }

  // One frame's JSON, dispatched in the order LibreChat's client does.
  function applyPayload(p) {
    if (p.final != null) {
      view.final = p;
      const aborted = p.responseMessage?.unfinished === true || p.earlyAbort === true;
      finish(aborted ? "aborted" : "done", aborted ? "aborted: final event" : "final event");
    } else if (p.sync != null) {
      applySync(p);
    } else if (p.error != null && p.event == null) {
      fail("error", typeof p.error === "string" ? p.error : JSON.stringify(p.error));
    } else if (p.event != null) {
      applyEvent(p);
    }
  }

  function applySync(p) {
    // LibreChat's resume: the snapshot replaces what the tab had, then the pending events.
    view.syncs += 1;
    const rs = p.resumeState;
    if (rs) {
      view.content = structuredClone(rs.aggregatedContent || []);
      view.steps = {};
      for (const step of rs.runSteps || []) view.steps[step.id] = step.index;
    }
    const pending = p.pendingEvents || [];
    note(`sync: snapshot of ${view.content.length} parts + ${pending.length} pending events`);
    for (const ev of pending) applyPayload(ev);
  }

  // Seqs already received. For EventSource over the tab's whole life (reloads included); for the
  // LibreChat client per connection, since its resume replaces the content with a snapshot and
  // the events after the snapshot's seq legitimately come again.
  let seen = new Set();

  function countSeq(seq, conn) {
    if (seq <= 0) return;
    const last = view.client === "eventsource" ? view.lastSeq : (conn.seqs.at(-1) ?? 0);
    if (seen.has(seq)) view.duplicates += 1;
    else if (seq < last) view.outOfOrder += 1;
    seen.add(seq);
    view.seqs.push(seq);
    conn.seqs.push(seq);
    view.lastSeq = Math.max(view.lastSeq, seq);
  }

  function onFrame(seq, payload, conn) {
    view.events += 1;
    countSeq(seq, conn);
    const kind = payload.event || (payload.final ? "final" : payload.sync ? "sync" : "frame");
    pushLog({ seq, kind });
    applyPayload(payload);
    render();
    save();
  }

  // --- the EventSource client -------------------------------------------------------------------

  let es = null;
  function openEventSource() {
    const url = new URL(`${cfg.prefix}/stream/${encodeURIComponent(cfg.job)}`, location.href);
    if (view.lastSeq > 0) url.searchParams.set("after", String(view.lastSeq));
    if (cfg.token) url.searchParams.set("token", cfg.token); // the gateway's GENJOBS_JWT_QUERY_PARAM
    let current = { via: "eventsource", after: view.lastSeq, seqs: [] };
    view.connections.push(current);
    let opened = false;
    es = new EventSource(url);
    es.onopen = () => {
      if (opened) {
        // The browser reconnected by itself, sending Last-Event-ID: a new connection.
        view.reconnects += 1;
        current = { via: "eventsource, Last-Event-ID", after: view.lastSeq, seqs: [] };
        view.connections.push(current);
        note(`reconnected with Last-Event-ID ${view.lastSeq}`);
      }
      opened = true;
      setState("streaming");
    };
    es.addEventListener("message", (e) => onFrame(Number(e.lastEventId || 0), JSON.parse(e.data), current));
    es.addEventListener("error", (e) => {
      if (unloading) return;
      if (e.data) {
        // A server-sent `event: error` frame: terminal, as in LibreChat.
        view.events += 1;
        countSeq(Number(e.lastEventId || 0), current);
        const body = JSON.parse(e.data);
        fail("error", typeof body.error === "string" ? body.error : JSON.stringify(body.error ?? body));
        return;
      }
      if (es.readyState === EventSource.CLOSED) {
        // Not a network drop: an HTTP error (404 unknown job, 401, 403); EventSource gives up.
        fail("failed", "the gateway refused the stream (HTTP error)");
        return;
      }
      if (!isOver()) {
        setState("reconnecting");
        note("connection lost; the browser reconnects by itself");
      }
    });
  }

  // --- the LibreChat-shaped client (fetch, Authorization header, ?resume=true) ------------------

  let retries = 0;
  let controller = null;
  async function openLibreChat(resume) {
    const url = new URL(`${cfg.prefix}/stream/${encodeURIComponent(cfg.job)}`, location.href);
    if (resume) url.searchParams.set("resume", "true");
    const conn = { via: resume ? "fetch ?resume=true" : "fetch", after: view.lastSeq, seqs: [] };
    view.connections.push(conn);
    seen = new Set();
    controller = new AbortController();
    let res;
    try {
      res = await fetch(url, {
        headers: { Accept: "text/event-stream", ...authHeader() },
        signal: controller.signal,
        cache: "no-store",
      });
    } catch (err) {
      if (unloading) return;
      return retryLater(`network error: ${err.message}`);
    }
    if (res.status === 404) {
      // LibreChat: the job is over and cleaned up; stop without an error.
      return finish("done", "404: job finished and expired");
    }
    if (res.status === 401 || res.status === 403) return fail("failed", `HTTP ${res.status}`);
    if (!res.ok) return retryLater(`HTTP ${res.status}`);
    retries = 0;
    setState("streaming");
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          onBlock(block, conn);
          if (isOver()) {
            controller.abort();
            return;
          }
        }
      }
    } catch (err) {
      if (unloading) return;
      // sse.js fires `error` for a broken response (no responseCode): LibreChat reconnects.
      if (!isOver()) return retryLater(`stream broken: ${err.message}`);
      return;
    }
    if (!isOver()) {
      // sse.js fires no error for a clean end, so LibreChat's client would just stop here.
      fail("failed", "the stream ended without a final event (LibreChat would not reconnect)");
    }
  }

  function onBlock(block, conn) {
    let event = "message";
    let id = 0;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // heartbeat comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = Number(value);
    }
    if (!data.length) return;
    const payload = JSON.parse(data.join("\n"));
    if (event === "error") {
      view.events += 1;
      countSeq(id, conn);
      return fail("error", typeof payload.error === "string" ? payload.error : JSON.stringify(payload));
    }
    onFrame(id, payload, conn);
  }

  function retryLater(why) {
    if (retries >= cfg.maxRetries) return fail("failed", `${why}; gave up after ${retries} retries`);
    const delay = Math.min(cfg.retryMs * 2 ** retries, 30 * cfg.retryMs);
    retries += 1;
    view.reconnects += 1;
    setState("reconnecting");
    note(`${why}; retry ${retries} with ?resume=true in ${delay} ms`);
    setTimeout(() => openLibreChat(true), delay);
  }

  // --- stop, state, rendering -------------------------------------------------------------------

  function authHeader() {
    return cfg.token ? { Authorization: `Bearer ${cfg.token}` } : {};
  }

  async function stop() {
    $("stop").disabled = true;
    try {
      const res = await fetch(`${cfg.prefix}/abort`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeader() },
        body: JSON.stringify({ streamId: cfg.job }),
      });
      view.abortReply = { status: res.status, body: await res.json() };
      note(`stop: HTTP ${res.status} ${JSON.stringify(view.abortReply.body)}`);
    } catch (err) {
      view.abortReply = { status: 0, body: String(err) };
      note(`stop failed: ${err.message}`);
      $("stop").disabled = false;
    }
    render();
  }

  function isOver() {
    return ["done", "aborted", "error", "failed"].includes(view.state);
  }

  function finish(state, why) {
    note(why);
    setState(state);
    close();
  }

  function fail(state, why) {
    view.error = why;
    finish(state, why);
  }

  function close() {
    if (es) es.close(); // or EventSource would reconnect after the server ends the stream
    if (controller) controller.abort();
    $("stop").disabled = true;
    saveNow();
  }

  function setState(state) {
    if (isOver() && !["done", "aborted", "error", "failed"].includes(state)) return;
    view.state = state;
    document.body.dataset.state = state;
    render();
  }

  function note(text) {
    pushLog({ note: text });
  }

  function pushLog(entry) {
    entry.t = Math.round(performance.now());
    view.log.push(entry);
    if (view.log.length > 2000) view.log.splice(0, view.log.length - 2000);
    dirty = true;
  }

  let dirty = true;
  let frame = null;
  function render() {
    if (frame !== null) return;
    frame = requestAnimationFrame(() => {
      frame = null;
      $("state").textContent = view.state;
      $("reconnects").textContent = String(view.reconnects);
      $("reloads").textContent = String(view.reloads);
      $("last-seq").textContent = view.lastSeq ? String(view.lastSeq) : "-";
      $("events").textContent = String(view.events);
      $("duplicates").textContent = String(view.duplicates + view.outOfOrder);
      $("text").textContent = view.text;
      const think = view.content.filter((p) => p && p.type === "think").map((p) => p.think);
      $("think").textContent = think.join("");
      if (dirty) {
        dirty = false;
        const items = view.log.slice(-300).map((e) => {
          const li = document.createElement("li");
          if (e.note) {
            li.className = "note";
            li.textContent = e.note;
          } else {
            li.textContent = `${e.seq || "·"} ${e.kind}`;
          }
          return li;
        });
        $("log").replaceChildren(...items);
        $("log").scrollTop = $("log").scrollHeight;
      }
    });
  }

  // --- start ------------------------------------------------------------------------------------

  // Offline: the stream's TCP connection cannot be trusted any more (on a real network loss it
  // may stay half-open for minutes, and the browser keeps it), so the tab drops it. The
  // LibreChat client retries at once with its backoff (the attempts fail until the network is
  // back); the EventSource tab opens a new EventSource when the browser is online again. Both
  // continue after the last seq they have (?after=, then Last-Event-ID; or ?resume=true).
  let offline = false;
  addEventListener("offline", () => {
    if (isOver()) return note("browser offline");
    note("browser offline: dropping the connection, resuming by seq when back");
    if (cfg.client === "librechat") {
      controller?.abort(); // its read fails: the client's own retry path takes over
    } else {
      offline = true;
      es?.close();
      view.reconnects += 1;
      setState("reconnecting");
    }
  });
  addEventListener("online", () => {
    note("browser online");
    if (offline && !isOver()) openEventSource();
    offline = false;
  });
  $("stop").addEventListener("click", stop);
  $("job").textContent = cfg.job || "(no job: add ?job=<streamId>)";
  $("client").textContent = cfg.client;
  if (!cfg.job) {
    fail("failed", "no job given");
    return;
  }
  restore();
  document.body.dataset.state = view.state;
  if (view.final || view.error) {
    setState(view.final ? (view.final.responseMessage?.unfinished ? "aborted" : "done") : "error");
    close();
  } else if (cfg.client === "librechat") {
    // After a reload the LibreChat client resumes from the snapshot (useResumeOnLoad).
    openLibreChat(view.reloads > 0);
  } else {
    openEventSource();
  }
  render();
})();
