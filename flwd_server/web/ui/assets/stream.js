// An event stream that survives reconnects: server-side closes (sse.max_duration), network drops,
// proxy timeouts and server restarts, with no gap and no duplicate.
//
// EventSource cannot send Authorization, so the stream is opened with a ticket (POST /stream-tickets),
// which may be reused until it expires: EventSource's own reconnects (same URL, Last-Event-ID) work.
// On top of that the stream remembers the id of the last event it handled, asks a new ticket every
// expires_in / 2 seconds, and when EventSource gives up (readyState CLOSED) or a fresh ticket
// arrives while it is in error, opens a new EventSource with the newest ticket and ``after=LAST``.
// An event whose id is not above LAST is dropped: ``after`` replays from the store, so nothing is
// missed and nothing is shown twice.

import { api, apiUrl } from "./api.js";

const EVENT_TYPES = [
  "run.queued",
  "run.started",
  "run.cancel_requested",
  "run.finished",
  "policy.decision",
  "policy.profile_downgrade",
  "step.started",
  "step.output",
  "step.finished",
  "source.synced",
  "source.failed",
  "message",
];
const KEEP_IDS = 10000; // the debug record keeps the newest ids the stream handled
const MAX_BACKOFF_MS = 5000;

/** What the streams of this tab handled, for tests and for curious people: window.flwd.streams. */
const registry = {};
window.flwd = Object.freeze({ streams: registry });

export class LiveStream {
  /**
   * @param {string} name  key in window.flwd.streams
   * @param {string} path  ``events`` or ``runs/ID/events``
   * @param {object} options  run (the run a ticket is for), params (filters), after (resume point),
   *   onEvent(event), onState("connecting"|"live"|"reconnecting"|"ended"), endsWith (an event type)
   */
  constructor(name, path, { run = null, params = {}, after = 0, onEvent, onState = () => {}, endsWith = null }) {
    this.path = path;
    this.run = run;
    this.params = params;
    this.lastId = after;
    this.onEvent = onEvent;
    this.onState = onState;
    this.endsWith = endsWith;
    this.source = null;
    this.ticket = null;
    this.ticketTimer = 0;
    this.reopenTimer = 0;
    this.backoff = 250;
    this.stopped = false;
    this.handle = this.handle.bind(this);
    this.debug = { name, path, handled: [], handledCount: 0, dropped: 0, opens: 0, connects: 0, lastId: after, state: "connecting" };
    registry[name] = this.debug;
  }

  start() {
    this.setState("connecting");
    this.renewTicket();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.ticketTimer);
    clearTimeout(this.reopenTimer);
    if (this.source) this.source.close();
    this.source = null;
    this.setState("ended");
  }

  setState(state) {
    if (this.debug.state === state) return;
    this.debug.state = state;
    this.onState(state);
  }

  /** Ask a new ticket now and again at half its lifetime; retry with a backoff while the server is away. */
  async renewTicket() {
    clearTimeout(this.ticketTimer);
    if (this.stopped) return;
    let answer;
    try {
      answer = await api("POST", "stream-tickets", { body: this.run ? { run: this.run } : {} });
    } catch (error) {
      if (this.stopped || error.status === 401 || error.status === 403 || error.status === 404) {
        if (!this.stopped) this.stop();
        return;
      }
      this.ticketTimer = setTimeout(() => this.renewTicket(), this.nextBackoff());
      return;
    }
    if (this.stopped) return;
    this.ticket = answer.ticket;
    const lifetime = Math.max(2, Number(answer.expires_in) || 60);
    this.ticketTimer = setTimeout(() => this.renewTicket(), (lifetime / 2) * 1000);
    if (!this.source || this.debug.state === "reconnecting") this.open();
  }

  nextBackoff() {
    const delay = this.backoff;
    this.backoff = Math.min(MAX_BACKOFF_MS, this.backoff * 2);
    return delay;
  }

  open() {
    if (this.stopped || !this.ticket) return;
    clearTimeout(this.reopenTimer);
    if (this.source) this.source.close();
    const url = apiUrl(this.path, { ...this.params, ticket: this.ticket, after: this.lastId || "" });
    const source = new EventSource(url);
    this.source = source;
    this.debug.opens += 1;
    for (const type of EVENT_TYPES) source.addEventListener(type, this.handle);
    source.onopen = () => {
      if (source !== this.source) return;
      this.backoff = 250;
      this.debug.connects += 1; // every connection, EventSource's own reconnects included
      this.setState("live");
    };
    source.onerror = () => {
      if (source !== this.source || this.stopped) return;
      this.setState("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        // EventSource gave up (the ticket expired, the server answered an error, ...): a new ticket.
        source.close();
        this.source = null;
        this.reopenTimer = setTimeout(() => this.renewTicket(), this.nextBackoff());
      }
    };
  }

  handle(message) {
    const id = Number(message.lastEventId);
    if (!(id > this.lastId)) {
      this.debug.dropped += 1;
      return;
    }
    this.lastId = id;
    const debug = this.debug;
    debug.lastId = id;
    debug.handledCount += 1;
    debug.handled.push(id);
    if (debug.handled.length > 2 * KEEP_IDS) debug.handled.splice(0, debug.handled.length - KEEP_IDS);
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    this.onEvent(event);
    if (this.endsWith && event.type === this.endsWith) this.stop();
  }
}
