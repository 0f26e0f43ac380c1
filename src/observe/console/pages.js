// Ferry console, the pages: each renders into its root once and returns a refresh function
// the frame polls every 5 s. Buttons that change things are disabled for read-only
// (`monitoring`) users; the API refuses them anyway.
"use strict";

(() => {
  const { h, num, bytes, time, enc, api, get, act, page, table, chart, levels, rates } = Ferry;
  const HISTORY = "lengths_age=600&lengths_incr=5";
  const VHOST = "%2F";

  function writeButton(label, attrs, onclick) {
    const b = h("button", Object.assign({ type: "button", onclick }, attrs || {}), label);
    if (!Ferry.canWrite) {
      b.disabled = true;
      b.title = "Read-only user";
    }
    return b;
  }

  function card(label, id) {
    const value = h("div.value", { "data-card": id }, "–");
    return { el: h("div.card", {}, h("div.label", {}, label), value), set: (v) => (value.textContent = v) };
  }

  function heading(text, ...extra) {
    return h("h1", {}, text, ...extra);
  }

  function link(href, text) {
    return h("a", { href }, text);
  }

  function field(label, input) {
    return h("label", {}, label, input);
  }

  function json(v) {
    return h("pre", {}, JSON.stringify(v, null, 1));
  }

  function headersText(m) {
    const all = Object.assign({}, m.headers || {}, m.amqp_headers || {});
    const keys = Object.keys(all);
    return keys.length ? h("pre", {}, keys.map((k) => `${k}: ${typeof all[k] === "string" ? all[k] : JSON.stringify(all[k])}`).join("\n")) : "";
  }

  function payloadText(m) {
    return h("pre", {}, m.payload_encoding === "base64" ? `(base64) ${m.payload}` : m.payload);
  }

  // --- overview ---------------------------------------------------------------------------

  page("overview", async (root) => {
    const cards = {
      publish: card("Publish /s", "publish"),
      deliver: card("Deliver /s", "deliver"),
      ack: card("Ack /s", "ack"),
      mbIn: card("In MB/s", "mb-in"),
      mbOut: card("Out MB/s", "mb-out"),
      connections: card("Connections", "connections"),
      queues: card("Queues", "queues"),
      topics: card("Topics", "topics"),
      groups: card("Consumer groups", "groups"),
      ready: card("Ready", "ready"),
      unacked: card("Unacked", "unacked"),
    };
    const alarms = h("div", { "data-alarms": "" });
    const rateChart = chart("Message rates (/s)", [
      { label: "publish", key: "publish" },
      { label: "deliver", key: "deliver" },
      { label: "ack", key: "ack" },
    ], { id: "overview-rates" });
    const byteChart = chart("Network (MB/s)", [
      { label: "in", key: "in" },
      { label: "out", key: "out" },
    ], { id: "overview-bytes", format: (v) => num(v, 3) });
    const queueChart = chart("Queued messages", [
      { label: "ready", key: "ready" },
      { label: "unacked", key: "unacked" },
    ], { id: "overview-queued" });
    const node = h("p.muted");
    root.append(
      heading("Overview"),
      node,
      alarms,
      h("div.cards", {}, Object.values(cards).map((c) => c.el)),
      h("div.charts", {}, rateChart.el, byteChart.el, queueChart.el)
    );
    return async () => {
      const o = await get(`/api/overview?${HISTORY}`);
      const m = o.message_stats || {};
      const rate = (k) => (m[`${k}_details`] ? m[`${k}_details`].rate : undefined);
      node.textContent = `${o.node} · Ferry ${o.product_version} · listeners: ${(o.listeners || [])
        .map((l) => `${l.protocol} ${l.port}`)
        .join(", ")}`;
      cards.publish.set(num(rate("publish")));
      cards.deliver.set(num(rate("deliver_get")));
      cards.ack.set(num(rate("ack")));
      cards.mbIn.set(num((rate("recv_oct") || 0) / 1e6, 3));
      cards.mbOut.set(num((rate("send_oct") || 0) / 1e6, 3));
      const t = o.object_totals || {};
      cards.connections.set(num(t.connections));
      cards.queues.set(num(t.queues));
      cards.topics.set(num(t.topics));
      cards.groups.set(num(t.consumer_groups));
      cards.ready.set(num(o.queue_totals.messages_ready));
      cards.unacked.set(num(o.queue_totals.messages_unacknowledged));
      const firing = (o.alarms || []).map((a) => h("span.pill.alarm", {}, `alarm: ${a}`)).concat(
        (o.alerts || []).map((a) => h("span.pill.firing", {}, `alert firing: ${a.rule}`))
      );
      alarms.replaceChildren(...(firing.length ? firing : [h("span.pill.ok", {}, "No alarms or firing alerts")]));
      rateChart.update({
        publish: rates(m.publish_details),
        deliver: rates(m.deliver_get_details),
        ack: rates(m.ack_details),
      });
      byteChart.update({ in: rates(m.recv_oct_details, 1e6), out: rates(m.send_oct_details, 1e6) });
      queueChart.update({
        ready: levels(o.queue_totals.messages_ready_details),
        unacked: levels(o.queue_totals.messages_unacknowledged_details),
      });
    };
  });

  // --- topics -----------------------------------------------------------------------------

  const messagesOf = (t) => (t.partitions || []).reduce((s, p) => s + (p.end_offset - p.start_offset), 0);

  page("topics", async (root, name) => {
    if (name) return topicPage(root, name);
    const list = table(
      [
        { label: "Name", value: (t) => link(`#/topics/${enc(t.name)}`, t.name) },
        { label: "Partitions", value: (t) => num(t.partition_count), num: true },
        { label: "Messages", value: (t) => num(messagesOf(t)), num: true },
        { label: "Size", value: (t) => bytes(t.size_bytes), num: true },
        { label: "In /s", value: (t) => num(t.messages_in_details && t.messages_in_details.rate), num: true },
      ],
      { filter: true, label: "Topics", rowKey: (t) => t.name }
    );
    const newName = h("input", { "aria-label": "New topic name", placeholder: "name" });
    const newParts = h("input", { type: "number", min: 1, value: 1, "aria-label": "Partitions" });
    root.append(
      heading("Topics"),
      h(
        "div.row",
        {},
        field("New topic", newName),
        field("Partitions", newParts),
        writeButton("Create", {}, (e) =>
          act(e.target, `Created topic ${newName.value}`, () =>
            api("POST", "/api/topics", { name: newName.value, partitions: Number(newParts.value) })
          ).then(() => Ferry.route())
        )
      ),
      list.el
    );
    return async () => list.update(await get("/api/topics"));
  });

  async function topicPage(root, name) {
    const path = `/api/topics/${enc(name)}`;
    const parts = table(
      [
        { label: "Partition", value: (p) => p.partition, num: true },
        { label: "Start offset", value: (p) => num(p.start_offset, 0), num: true },
        { label: "End offset", value: (p) => num(p.end_offset, 0), num: true },
        { label: "Size", value: (p) => bytes(p.size_bytes), num: true },
        { label: "Segments", value: (p) => p.segments, num: true },
      ],
      { label: "Partitions" }
    );
    const rateChart = chart("Produce rate (records/s)", [{ label: "records/s", key: "in" }], { id: "topic-rate" });
    const sizeChart = chart("Size", [{ label: "bytes", key: "size" }], { id: "topic-size", format: bytes });
    const configs = h("p.muted");
    // Browse.
    const partition = h("input", { type: "number", min: 0, value: 0, "aria-label": "Partition", name: "partition" });
    const offset = h("input", { type: "number", min: 0, placeholder: "latest", "aria-label": "From offset", name: "offset" });
    const when = h("input", { type: "datetime-local", "aria-label": "From time", name: "timestamp" });
    const records = table(
      [
        { label: "Partition", value: (r) => r.partition, num: true },
        { label: "Offset", value: (r) => r.offset, num: true },
        { label: "Time", value: (r) => time(r.timestamp) },
        { label: "Key", value: (r) => r.key },
        { label: "Value", value: payloadText },
        { label: "Headers", value: headersText },
      ],
      { label: "Records", empty: "Press Browse to read records.", rowKey: (r) => `${r.partition}-${r.offset}` }
    );
    const browse = async (button) => {
      let q = `partition=${Number(partition.value) || 0}&count=50`;
      if (offset.value !== "") q += `&offset=${Number(offset.value)}`;
      else if (when.value) q += `&timestamp=${new Date(when.value).getTime()}`;
      const rows = await act(button, "Records read", () => get(`${path}/records?${q}`));
      if (rows) records.update(rows);
    };
    // Produce.
    const key = h("input", { "aria-label": "Key", name: "key", placeholder: "key" });
    const value = h("textarea", { "aria-label": "Value", name: "value", placeholder: "value" });
    const hdrs = h("input", { "aria-label": "Headers (JSON)", name: "headers", placeholder: '{"source": "console"}' });
    const produce = (e) =>
      act(e.target, "Record produced", () => {
        const headers = hdrs.value ? JSON.parse(hdrs.value) : {};
        return api("POST", `/api/exchanges/${VHOST}/${enc(name)}/publish`, {
          routing_key: key.value,
          payload: value.value,
          properties: { headers },
        });
      });
    root.append(
      heading(`Topic ${name}`),
      configs,
      h("div.charts", {}, rateChart.el, sizeChart.el),
      h("h2", {}, "Partitions"),
      parts.el,
      h("h2", {}, "Browse records"),
      h(
        "div.row",
        {},
        field("Partition", partition),
        field("From offset", offset),
        field("or from time", when),
        h("button.primary", { type: "button", "data-action": "browse", onclick: (e) => browse(e.target) }, "Browse")
      ),
      records.el,
      h("h2", {}, "Produce a test record"),
      h("div.row", {}, field("Key", key), field("Headers (JSON)", hdrs)),
      value,
      h("div.row", {}, writeButton("Produce", { "data-action": "produce" }, produce))
    );
    return async () => {
      const t = await get(`${path}?${HISTORY}`);
      const c = Object.entries(t.configs || {});
      configs.textContent = `${t.partition_count} partition(s) · ${bytes(t.size_bytes)} · ${num(messagesOf(t))} records · configs: ${
        c.length ? c.map(([k, v]) => `${k}=${v}`).join(", ") : "broker defaults"
      }`;
      parts.update(t.partitions);
      rateChart.update({ in: rates(t.messages_in_details) });
      sizeChart.update({ size: levels(t.size_bytes_details) });
    };
  }

  // --- queues -----------------------------------------------------------------------------

  page("queues", async (root, vhost, name) => {
    if (name !== undefined) return queuePage(root, vhost, name);
    const list = table(
      [
        { label: "Vhost", value: (q) => q.vhost },
        { label: "Name", value: (q) => link(`#/queues/${enc(q.vhost)}/${enc(q.name)}`, q.name) },
        { label: "Ready", value: (q) => num(q.messages_ready), num: true },
        { label: "Unacked", value: (q) => num(q.messages_unacknowledged), num: true },
        { label: "Consumers", value: (q) => num(q.consumers), num: true },
        {
          label: "Publish /s",
          value: (q) => num(q.message_stats && q.message_stats.publish_details && q.message_stats.publish_details.rate),
          num: true,
        },
        { label: "Arguments", value: (q) => Object.keys(q.arguments || {}).join(", ") },
      ],
      { filter: true, label: "Queues", rowKey: (q) => q.name }
    );
    root.append(heading("Queues"), list.el);
    return async () => list.update(await get("/api/queues"));
  });

  async function queuePage(root, vhost, name) {
    const path = `/api/queues/${enc(vhost)}/${enc(name)}`;
    const cards = { ready: card("Ready", "ready"), unacked: card("Unacked", "unacked"), consumers: card("Consumers", "consumers"), publish: card("Publish /s", "publish") };
    const depth = chart("Ready and unacked", [
      { label: "ready", key: "ready" },
      { label: "unacked", key: "unacked" },
    ], { id: "queue-depth" });
    const pubChart = chart("Publish rate (/s)", [{ label: "publish", key: "publish" }], { id: "queue-publish" });
    const args = h("div");
    const consumers = table(
      [
        { label: "Tag", value: (c) => c.consumer_tag },
        { label: "Connection", value: (c) => c.channel_details.connection_name },
        { label: "Prefetch", value: (c) => c.prefetch_count, num: true },
        { label: "Ack", value: (c) => (c.ack_required ? "manual" : "auto") },
      ],
      { label: "Consumers", empty: "No consumers." }
    );
    const messages = messageTable();
    const body = h("textarea", { "aria-label": "Message body", name: "body", placeholder: "body" });
    const purge = writeButton("Purge", { "data-action": "purge", class: "danger" }, (e) => {
      if (!confirm(`Purge every ready message of ${name}?`)) return;
      act(e.target, `Purged ${name}`, () => api("POST", `${path}/purge`)).then(refresh);
    });
    root.append(
      heading(`Queue ${name}`, " ", h("span.muted", {}, `vhost ${vhost}`)),
      h("div.cards", {}, Object.values(cards).map((c) => c.el)),
      h("div.charts", {}, depth.el, pubChart.el),
      h("div.row", {}, purge, h("button", { type: "button", "data-action": "get", onclick: (e) => peek(e.target) }, "Get messages")),
      h("h2", {}, "Messages (ready, not consumed by looking)"),
      messages.el,
      h("h2", {}, "Publish a test message"),
      body,
      h("div.row", {}, writeButton("Publish", { "data-action": "publish" }, (e) =>
        act(e.target, "Published", () =>
          api("POST", `/api/exchanges/${enc(vhost)}/amq.default/publish`, { routing_key: name, payload: body.value })
        ).then(refresh)
      )),
      h("h2", {}, "Consumers"),
      consumers.el,
      h("h2", {}, "Arguments"),
      args
    );
    async function peek(button) {
      const rows = await act(button, "Messages read", () => get(`${path}/messages?count=50`));
      if (rows) messages.update(rows);
    }
    async function refresh() {
      const q = await get(`${path}?${HISTORY}`);
      cards.ready.set(num(q.messages_ready));
      cards.unacked.set(num(q.messages_unacknowledged));
      cards.consumers.set(num(q.consumers));
      const p = q.message_stats && q.message_stats.publish_details;
      cards.publish.set(num(p && p.rate));
      depth.update({ ready: levels(q.messages_ready_details), unacked: levels(q.messages_unacknowledged_details) });
      pubChart.update({ publish: rates(p) });
      args.replaceChildren(json(q.arguments));
      const all = await get("/api/consumers");
      consumers.update(all.filter((c) => c.queue.name === name && c.queue.vhost === vhost));
    }
    return refresh;
  }

  function messageTable() {
    return table(
      [
        { label: "Offset", value: (m) => m.offset, num: true },
        { label: "Routing key", value: (m) => m.routing_key },
        { label: "Time", value: (m) => time(m.timestamp) },
        { label: "Body", value: payloadText },
        { label: "Headers", value: headersText },
        {
          label: "Death",
          value: (m) =>
            (m.death || []).length
              ? h("pre", {}, m.death.map((d) => `${d.reason} in ${d.queue} ×${d.count}`).join("\n"))
              : "",
        },
      ],
      { label: "Messages", empty: "Press Get messages to read them.", rowKey: (m) => String(m.offset) }
    );
  }

  // --- exchanges and the bindings graph ---------------------------------------------------

  page("exchanges", async (root) => {
    const list = table(
      [
        { label: "Vhost", value: (e) => e.vhost },
        { label: "Name", value: (e) => e.name || "(default)" },
        { label: "Type", value: (e) => e.type },
        { label: "Durable", value: (e) => (e.durable ? "yes" : "no") },
        { label: "Arguments", value: (e) => Object.keys(e.arguments || {}).join(", ") },
      ],
      { filter: true, label: "Exchanges" }
    );
    const bindings = table(
      [
        { label: "Source", value: (b) => b.source || "(default)" },
        { label: "Destination", value: (b) => `${b.destination_kind} ${b.destination}` },
        { label: "Routing key", value: (b) => b.routing_key },
      ],
      { label: "Bindings" }
    );
    const graph = h("div.graph", { "data-graph": "" });
    root.append(heading("Exchanges and bindings"), graph, h("h2", {}, "Exchanges"), list.el, h("h2", {}, "Bindings"), bindings.el);
    return async () => {
      const [exchanges, bs, topics] = await Promise.all([get("/api/exchanges"), get("/api/bindings"), get("/api/topics")]);
      list.update(exchanges);
      bindings.update(bs);
      graph.replaceChildren(bindingGraph(bs, new Set(topics.map((t) => t.name))));
    };
  });

  /** Sources on the left, destinations on the right, one edge per binding labelled by key. */
  function bindingGraph(bs, topicNames) {
    const NS = "http://www.w3.org/2000/svg";
    const s = (tag, attrs, text) => {
      const el = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
      if (text !== undefined) el.textContent = text;
      return el;
    };
    const shown = bs.filter((b) => b.source !== "");
    const sources = [...new Set(shown.map((b) => b.source))];
    const dests = [...new Set(shown.map((b) => `${b.destination_kind}:${b.destination}`))];
    const rowH = 34;
    const height = Math.max(sources.length, dests.length, 1) * rowH + 10;
    const svg = s("svg", { viewBox: `0 0 800 ${height}`, role: "img", "aria-label": "Bindings graph" });
    if (!shown.length) {
      svg.append(s("text", { x: 10, y: 22 }, "No bindings besides the default exchange's."));
      return svg;
    }
    const y = (i) => 5 + i * rowH + rowH / 2;
    for (const b of shown) {
      const y1 = y(sources.indexOf(b.source));
      const y2 = y(dests.indexOf(`${b.destination_kind}:${b.destination}`));
      svg.append(s("path", { class: "edge", d: `M 230 ${y1} C 400 ${y1}, 400 ${y2}, 570 ${y2}` }));
      svg.append(s("text", { x: 400, y: (y1 + y2) / 2 - 3, "text-anchor": "middle" }, b.routing_key || "#"));
    }
    const node = (x, i, label, kind) => {
      const g = s("g", { class: `node ${kind}` });
      g.append(s("rect", { x, y: y(i) - 12, width: 220, height: 24, rx: 5 }));
      g.append(s("text", { x: x + 8, y: y(i) + 4 }, label.length > 30 ? label.slice(0, 29) + "…" : label));
      svg.append(g);
    };
    sources.forEach((src, i) => node(5, i, `${topicNames.has(src) ? "topic" : "exchange"} ${src}`, topicNames.has(src) ? "topic" : "exchange"));
    dests.forEach((d, i) => {
      const [kind, name] = d.split(/:(.*)/s);
      const k = topicNames.has(name) ? "topic" : kind;
      node(575, i, `${k} ${name}`, k);
    });
    return svg;
  }

  // --- consumer groups --------------------------------------------------------------------

  page("groups", async (root, id) => {
    if (id) return groupPage(root, id);
    const list = table(
      [
        { label: "Group", value: (g) => link(`#/groups/${enc(g.group_id)}`, g.group_id) },
        { label: "State", value: (g) => g.state },
        { label: "Protocol", value: (g) => g.protocol_type },
      ],
      { filter: true, label: "Consumer groups", rowKey: (g) => g.group_id }
    );
    root.append(heading("Consumer groups"), list.el);
    return async () => list.update(await get("/api/groups"));
  });

  async function groupPage(root, id) {
    const path = `/api/groups/${enc(id)}`;
    const summary = h("p.muted");
    const lagChart = chart("Total lag (records)", [{ label: "lag", key: "lag" }], { id: "group-lag" });
    const consumeChart = chart("Consume rate (records/s)", [{ label: "consumed", key: "consumed" }], { id: "group-consumed" });
    const members = table(
      [
        { label: "Member", value: (m) => m.member_id },
        { label: "Client id", value: (m) => m.client_id },
        { label: "Host", value: (m) => m.client_host },
        {
          label: "Assignment",
          value: (m) => (m.assignment || []).map((a) => `${a.topic}[${a.partitions.join(",")}]`).join(" "),
        },
      ],
      { label: "Members", empty: "No members (the group is empty)." }
    );
    const offsets = table(
      [
        { label: "Topic", value: (o) => o.topic },
        { label: "Partition", value: (o) => o.partition, num: true },
        { label: "Committed", value: (o) => num(o.committed_offset, 0), num: true },
        { label: "End", value: (o) => num(o.high_watermark, 0), num: true },
        { label: "Lag", value: (o) => num(o.lag, 0), num: true },
      ],
      { label: "Offsets" }
    );
    const to = h("select", { "aria-label": "Reset to", name: "to" }, ["earliest", "latest", "offset", "timestamp"].map((v) => h("option", { value: v }, v)));
    const target = h("input", { "aria-label": "Offset or time (ms)", name: "target", placeholder: "offset or ms" });
    const preview = h("div");
    const reset = (dry) => (e) =>
      act(e.target, dry ? "Dry run done" : "Offsets reset", async () => {
        const body = { to: to.value, dry_run: dry };
        if (to.value === "offset") body.offset = Number(target.value);
        if (to.value === "timestamp") body.timestamp = Number(target.value);
        const out = await api("POST", `${path}/reset-offsets`, body);
        preview.replaceChildren(
          h("p", {}, dry ? "Would commit (nothing changed):" : "Committed:"),
          json(out.offsets)
        );
        return out;
      });
    root.append(
      heading(`Consumer group ${id}`),
      summary,
      h("div.charts", {}, lagChart.el, consumeChart.el),
      h("h2", {}, "Members"),
      members.el,
      h("h2", {}, "Partitions"),
      offsets.el,
      h("h2", {}, "Reset offsets (the group must be empty)"),
      h(
        "div.row",
        {},
        field("To", to),
        field("Value", target),
        h("button", { type: "button", "data-action": "dry-run", onclick: (e) => (Ferry.canWrite ? reset(true)(e) : null), disabled: !Ferry.canWrite }, "Dry run"),
        writeButton("Reset", { class: "danger", "data-action": "reset" }, reset(false))
      ),
      preview
    );
    return async () => {
      const g = await get(`${path}?${HISTORY}`);
      summary.textContent = `${g.state} · ${g.protocol_type || "–"} ${g.protocol || ""} · total lag ${num(g.total_lag, 0)}`;
      members.update(g.members);
      offsets.update(g.offsets);
      lagChart.update({ lag: levels(g.lag_details) });
      consumeChart.update({ consumed: rates(g.consumed_details) });
    };
  }

  // --- dead letters -----------------------------------------------------------------------

  page("dlq", async (root, vhost, name) => {
    const select = h("select", { "aria-label": "Dead-letter queue", name: "dlq" });
    const messages = messageTable();
    const report = h("div");
    const current = () => (select.value ? JSON.parse(select.value) : null);
    const qpath = () => {
      const q = current();
      return `/api/queues/${enc(q.vhost)}/${enc(q.name)}`;
    };
    const browse = async () => {
      if (current()) messages.update(await get(`${qpath()}/messages?count=100`));
    };
    root.append(
      heading("Dead letters"),
      h("p.muted", {}, "Queues other queues dead-letter into (and any queue named *dlq* or *dead*). Replay sends each message back to the queue it died in."),
      h(
        "div.row",
        {},
        field("Queue", select),
        h("button", { type: "button", "data-action": "browse", onclick: (e) => act(e.target, "Read", browse) }, "Browse"),
        writeButton("Replay all", { "data-action": "replay" }, (e) =>
          act(e.target, "Replayed", async () => {
            const out = await api("POST", `${qpath()}/replay`, {});
            report.replaceChildren(json(out));
            await browse();
          })
        ),
        writeButton("Purge", { class: "danger", "data-action": "purge" }, (e) => {
          if (!confirm("Purge every message of this dead-letter queue?")) return;
          act(e.target, "Purged", async () => {
            await api("POST", `${qpath()}/purge`);
            await browse();
          });
        })
      ),
      report,
      messages.el
    );
    const fill = async () => {
      const [queues, bindings] = await Promise.all([get("/api/queues"), get("/api/bindings")]);
      const dlxs = new Set(queues.map((q) => (q.arguments || {})["x-dead-letter-exchange"]).filter((x) => x !== undefined));
      const targets = new Set(queues.map((q) => (q.arguments || {})["x-dead-letter-routing-key"]).filter(Boolean));
      const dlqs = queues.filter(
        (q) =>
          /dlq|dead/i.test(q.name) ||
          targets.has(q.name) ||
          bindings.some((b) => dlxs.has(b.source) && b.source !== "" && b.destination_kind === "queue" && b.destination === q.name)
      );
      const before = select.value;
      select.replaceChildren(
        ...dlqs.map((q) =>
          h("option", { value: JSON.stringify({ vhost: q.vhost, name: q.name }) }, `${q.name} (${q.messages_ready} ready)`)
        )
      );
      const wanted = name !== undefined ? JSON.stringify({ vhost, name }) : before;
      if (wanted && [...select.options].some((o) => o.value === wanted)) select.value = wanted;
    };
    await fill();
    await browse();
    return fill;
  });

  // --- connections and channels -----------------------------------------------------------

  page("connections", async (root) => {
    const conns = table(
      [
        { label: "Name", value: (c) => c.name },
        { label: "Protocol", value: (c) => c.protocol },
        { label: "Client", value: (c) => c.client_id || c.client_name || "" },
        { label: "User", value: (c) => c.user },
        { label: "TLS", value: (c) => (c.ssl ? "yes" : "no") },
        { label: "Since", value: (c) => time(c.connected_at) },
        { label: "In /s", value: (c) => bytes(c.recv_oct_details && c.recv_oct_details.rate), num: true },
        { label: "Out /s", value: (c) => bytes(c.send_oct_details && c.send_oct_details.rate), num: true },
        {
          label: "",
          value: (c) =>
            writeButton("Close", { class: "danger", "data-action": "close", "data-connection": c.name }, (e) => {
              const reason = prompt(`Close ${c.name}? Reason sent to the client:`, "Closed from the Ferry console");
              if (reason === null) return;
              act(e.target, `Closed ${c.name}`, () =>
                api("DELETE", `/api/connections/${enc(c.name)}`, undefined, { "X-Reason": reason })
              ).then(refresh);
            }),
        },
      ],
      { filter: true, label: "Connections", rowKey: (c) => c.name }
    );
    const channels = table(
      [
        { label: "Channel", value: (c) => c.name },
        { label: "User", value: (c) => c.user },
        { label: "Prefetch", value: (c) => c.prefetch_count, num: true },
        { label: "Consumers", value: (c) => c.consumer_count, num: true },
      ],
      { label: "Channels", empty: "No AMQP channels." }
    );
    const clients = table(
      [
        { label: "Kafka client id", value: (c) => c.client_id || "(none)" },
        { label: "Connections", value: (c) => c.connections.length, num: true },
        { label: "Hosts", value: (c) => c.hosts.join(", ") },
        { label: "Groups", value: (c) => c.groups.join(", ") },
        { label: "In", value: (c) => bytes(c.recv_oct), num: true },
        { label: "Out", value: (c) => bytes(c.send_oct), num: true },
      ],
      { label: "Kafka clients", empty: "No Kafka clients." }
    );
    root.append(heading("Connections"), conns.el, h("h2", {}, "Channels"), channels.el, h("h2", {}, "Kafka clients by client id"), clients.el);
    async function refresh() {
      const [cs, chs, kc] = await Promise.all([get("/api/connections"), get("/api/channels"), get("/api/kafka/clients")]);
      conns.update(cs);
      channels.update(chs);
      clients.update(kc);
    }
    return refresh;
  });

  // --- bridges ----------------------------------------------------------------------------

  /** "uri queue|exchange (key)|topic" of one side of a shovel definition. */
  function endpoint(uri, def, side) {
    const what = def[`${side}-queue`]
      ? `queue ${def[`${side}-queue`]}`
      : def[`${side}-topic`]
      ? `topic ${def[`${side}-topic`]}`
      : def[`${side}-exchange`]
      ? `exchange ${def[`${side}-exchange`]}${def[`${side}-exchange-key`] ? ` (${def[`${side}-exchange-key`]})` : ""}`
      : "";
    return `${uri || ""} ${what}`.trim();
  }

  page("bridges", async (root) => {
    const bridges = table(
      [
        { label: "Name", value: (b) => b.name },
        { label: "Vhost", value: (b) => b.vhost },
        { label: "State", value: (b) => h(b.state === "running" ? "span.pill" : "span.pill.firing", {}, b.state) },
        { label: "Reason", value: (b) => b.reason || "" },
        { label: "Source", value: (b) => endpoint(b.src_uri, b.definition, "src") },
        { label: "Destination", value: (b) => endpoint(b.dest_uri, b.definition, "dest") },
        { label: "Forwarded", value: (b) => num(b.messages_forwarded, 0), num: true },
        { label: "Skipped", value: (b) => num(b.messages_skipped, 0), num: true },
        { label: "Pending", value: (b) => num(b.pending, 0), num: true },
        { label: "Reconnects", value: (b) => num(b.reconnects, 0), num: true },
        { label: "Breaker", value: (b) => b.circuit_breaker },
        { label: "Since", value: (b) => time(b.since_ms) },
      ],
      {
        filter: true,
        label: "Bridges",
        rowKey: (b) => `${b.vhost}/${b.name}`,
        empty: "No bridges (PUT /api/parameters/shovel/{vhost}/{name}, ferry bridge create, or [[bridges]] in the config file).",
      }
    );
    root.append(heading("Bridges"), bridges.el);
    return async () => {
      // The live state names only the URIs; the definition says which queue, exchange or topic.
      const [live, defs] = await Promise.all([get("/api/shovels"), get("/api/parameters/shovel")]);
      const byKey = new Map(defs.map((d) => [`${d.vhost}/${d.name}`, d.value]));
      bridges.update(live.map((b) => Object.assign({ definition: byKey.get(`${b.vhost}/${b.name}`) || {} }, b)));
    };
  });

  // --- schemas and the event catalog ------------------------------------------------------

  // Latest versions are fetched one subject at a time; past this many the page says so.
  const MAX_SUBJECTS = 200;

  page("schemas", async (root) => {
    const note = h("p.muted");
    const subjects = table(
      [
        { label: "Subject", value: (s) => s.subject },
        { label: "Latest version", value: (s) => s.version, num: true },
        { label: "Id", value: (s) => s.id, num: true },
        { label: "Type", value: (s) => s.schemaType || "AVRO" },
        { label: "Schema", value: (s) => h("details", {}, h("summary", {}, "show"), h("pre", {}, s.schema)) },
      ],
      { filter: true, label: "Schema subjects", rowKey: (s) => s.subject, empty: "No schemas registered." }
    );
    const events = table(
      [
        { label: "Event type", value: (e) => e.type },
        { label: "Schema", value: (e) => (e.schema ? `${e.schema.subject} v${e.schema.latest_version} (${e.schema.schema_type})` : "") },
        { label: "Topics", value: (e) => (e.topics || []).join(", ") },
        { label: "Exchanges", value: (e) => (e.exchanges || []).join(", ") },
        { label: "Producers", value: (e) => (e.producers || []).join(", ") },
        { label: "Messages (est.)", value: (e) => num(e.messages_estimated, 0), num: true },
        { label: "Last seen", value: (e) => time(e.last_seen_ms) },
      ],
      { label: "Event catalog", rowKey: (e) => e.type, empty: "No typed events seen yet (ce_type header or AMQP type property)." }
    );
    root.append(heading("Schemas"), note, subjects.el, h("h2", {}, "Event catalog"), events.el);
    return async () => {
      const [names, catalog] = await Promise.all([get("/subjects").catch((e) => e), get("/api/catalog")]);
      events.update(catalog.events);
      if (names instanceof Error) {
        note.textContent = `The schema registry did not answer: ${names.message}`;
        subjects.update([]);
        return;
      }
      const shown = (names || []).slice(0, MAX_SUBJECTS);
      note.textContent = shown.length < names.length ? `Showing the first ${shown.length} of ${names.length} subjects.` : "";
      // A subject deleted between the two calls is left out rather than failing the page.
      const latest = await Promise.all(shown.map((s) => get(`/subjects/${enc(s)}/versions/latest`).catch(() => null)));
      subjects.update(latest.filter(Boolean));
    };
  });

  // --- alerts -----------------------------------------------------------------------------

  page("alerts", async (root) => {
    const alarms = h("div");
    const rules = table(
      [
        { label: "Rule", value: (a) => a.rule },
        { label: "State", value: (a) => h(a.firing ? "span.pill.firing" : "span.pill", {}, a.firing ? "firing" : "ok") },
      ],
      { label: "Alert rules", empty: "No alert rules configured ([[alerts.rules]] in the config file)." }
    );
    const history = table(
      [
        { label: "When", value: (t) => time(t.at_ms) },
        { label: "Rule", value: (t) => t.rule },
        { label: "Change", value: (t) => h(t.to === "firing" ? "span.pill.firing" : "span.pill", {}, `${t.from} → ${t.to}`) },
        { label: "Value", value: (t) => num(t.value, 0), num: true },
        { label: "Message", value: (t) => t.message },
      ],
      { filter: true, label: "Firing history", empty: "No rule has fired or resolved since the broker started." }
    );
    root.append(
      heading("Alerts"),
      h("h2", {}, "Resource alarms"),
      alarms,
      h("h2", {}, "Alert rules"),
      rules.el,
      h("h2", {}, "Firing history"),
      h("p.muted", {}, "The latest 200 transitions across all rules since the broker started, newest first."),
      history.el
    );
    return async () => {
      const [o, a] = await Promise.all([get("/api/overview"), get("/api/alerts")]);
      alarms.replaceChildren(
        ...((o.alarms || []).length ? o.alarms.map((x) => h("span.pill.alarm", {}, x)) : [h("span.pill", {}, "No memory or disk alarm")])
      );
      rules.update(a);
      history.update(a.flatMap((r) => r.history || []).sort((x, y) => y.at_ms - x.at_ms));
    };
  });
})();
