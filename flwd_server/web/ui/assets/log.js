// A run's output, virtualised: lines are kept in compact arrays (full chunks of lines joined into one
// string with an offset table, a byte per line for its stream) and only the rows in view of a
// fixed-height scroller exist in the DOM, so a million lines neither fill memory with nodes nor freeze
// the tab. Every line is set with textContent: output is never parsed as HTML.

import { h } from "./dom.js";

const CHUNK = 1024; // lines per joined chunk
const OVERSCAN = 20; // rows drawn above and below the visible ones
const MAX_SPACER_PX = 15_000_000; // browsers cap an element's height (Chrome near 33.5M px)
export const STDOUT = 0;
export const STDERR = 1;
export const NOTE = 2; // a line flwd adds: a step starts or ends
const KIND_CLASS = ["out", "err", "note"];
const KIND_MARK = ["", "err", "—"];

export class LogView {
  constructor(label) {
    this.count = 0;
    this.chunks = []; // one string per full chunk: its lines joined
    this.offsets = []; // one Uint32Array per full chunk: CHUNK + 1 start offsets
    this.open = []; // the lines of the chunk being filled
    this.kinds = new Uint8Array(CHUNK);
    this.rowHeight = 0;
    this.follow = true;
    this.frame = 0;
    this.rows = [];
    this.spacer = h("div", { class: "log-spacer" });
    this.window = h("div", { class: "log-window" });
    this.empty = h("p", { class: "log-empty" }, "No output yet.");
    this.scroller = h(
      "div",
      { class: "log", tabindex: "0", role: "region", "aria-label": label, dataset: { lines: "0" } },
      this.spacer,
      this.window,
    );
    this.element = h("div", { class: "log-frame" }, this.scroller, this.empty);
    this.scroller.addEventListener("scroll", () => {
      const s = this.scroller;
      this.follow = s.scrollTop + s.clientHeight >= s.scrollHeight - Math.max(4, this.rowHeight);
      this.schedule();
    });
    this.resize = new ResizeObserver(() => {
      this.rowHeight = 0; // zoom or font changes: measure again
      this.schedule();
    });
    this.resize.observe(this.scroller);
  }

  push(line, kind = STDOUT) {
    const index = this.count;
    if (index >= this.kinds.length) {
      const grown = new Uint8Array(this.kinds.length * 2);
      grown.set(this.kinds);
      this.kinds = grown;
    }
    this.kinds[index] = kind;
    this.open.push(String(line));
    this.count = index + 1;
    if (this.open.length === CHUNK) this.seal();
    this.schedule();
  }

  /** Join a full chunk into one string: a thousand lines cost one string and 4 KiB of offsets. */
  seal() {
    const offsets = new Uint32Array(CHUNK + 1);
    let at = 0;
    for (let i = 0; i < CHUNK; i++) {
      offsets[i] = at;
      at += this.open[i].length;
    }
    offsets[CHUNK] = at;
    this.chunks.push(this.open.join(""));
    this.offsets.push(offsets);
    this.open = [];
  }

  line(index) {
    const chunk = Math.floor(index / CHUNK);
    const within = index % CHUNK;
    if (chunk < this.chunks.length) {
      const offsets = this.offsets[chunk];
      return this.chunks[chunk].slice(offsets[within], offsets[within + 1]);
    }
    return this.open[within];
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.draw());
  }

  measure() {
    const probe = this.row();
    probe.lastChild.textContent = "M";
    this.window.append(probe);
    this.rowHeight = probe.getBoundingClientRect().height || 18;
    probe.remove();
  }

  row() {
    return h("div", { class: "log-row" }, h("span", { class: "log-n" }), h("span", { class: "log-s" }), h("span", { class: "log-t" }));
  }

  draw() {
    this.frame = 0;
    if (!this.scroller.isConnected) return;
    if (!this.rowHeight) this.measure();
    const s = this.scroller;
    const rh = this.rowHeight;
    const total = this.count * rh;
    const spacerHeight = Math.min(total, MAX_SPACER_PX);
    this.spacer.style.height = `${spacerHeight}px`;
    this.empty.hidden = this.count > 0;
    this.scroller.dataset.lines = String(this.count);
    if (this.follow) s.scrollTop = s.scrollHeight;
    const visible = Math.ceil(s.clientHeight / rh) + 1;
    let first;
    let top;
    if (total <= MAX_SPACER_PX) {
      first = Math.floor(s.scrollTop / rh);
      top = first * rh;
    } else {
      // Too tall to lay out: the scrollbar maps onto the lines proportionally.
      const fraction = s.scrollTop / Math.max(1, spacerHeight - s.clientHeight);
      const exact = Math.min(1, fraction) * Math.max(0, this.count - visible + 1);
      first = Math.floor(exact);
      top = s.scrollTop - (exact - first) * rh;
    }
    const start = Math.max(0, first - OVERSCAN);
    const end = Math.min(this.count, first + visible + OVERSCAN);
    const needed = end - start;
    while (this.rows.length < needed) this.window.append((this.rows[this.rows.length] = this.row()));
    for (let i = 0; i < this.rows.length; i++) {
      const row = this.rows[i];
      if (i >= needed) {
        row.hidden = true;
        continue;
      }
      const index = start + i;
      const kind = this.kinds[index];
      row.hidden = false;
      row.className = `log-row ${KIND_CLASS[kind]}`;
      row.children[0].textContent = String(index + 1);
      row.children[1].textContent = KIND_MARK[kind];
      row.children[2].textContent = this.line(index);
    }
    this.window.style.transform = `translateY(${top - (first - start) * rh}px)`;
  }

  destroy() {
    this.resize.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
