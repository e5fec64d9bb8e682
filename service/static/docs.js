// The API docs page (docs.html): a file of its own, as the CSP allows no inline script.
"use strict";
const REF = "#/components/schemas/";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function schemaLink(schema) {
  // A schema shown as a link to its component when it is a $ref, else as JSON.
  if (schema && typeof schema.$ref === "string" && schema.$ref.startsWith(REF)) {
    const name = schema.$ref.slice(REF.length);
    return el("a", { href: "#schema-" + name, textContent: name });
  }
  return el("pre", { textContent: JSON.stringify(schema, null, 2) });
}

function parametersTable(parameters) {
  const rows = parameters.map((p) => el("tr", {},
    el("td", {}, el("code", { textContent: p.name })),
    el("td", { textContent: p.in + (p.required ? ", required" : "") }),
    el("td", {}, el("code", { textContent: describeType(p.schema || {}) })),
    el("td", { textContent: p.description || "" })));
  return el("table", {},
    el("thead", {}, el("tr", {}, ...["name", "in", "type", "meaning"].map(
      (h) => el("th", { scope: "col", textContent: h })))),
    el("tbody", {}, ...rows));
}

function describeType(schema) {
  if (schema.$ref) return schema.$ref.slice(REF.length);
  if (schema.type === "array") return describeType(schema.items || {}) + "[]";
  if (schema.enum) return schema.enum.join(" | ");
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push("≥ " + schema.minimum);
  if (schema.maximum !== undefined) bounds.push("≤ " + schema.maximum);
  if (schema.pattern) bounds.push("/" + schema.pattern + "/");
  return (schema.type || "any") + (bounds.length ? " (" + bounds.join(", ") + ")" : "");
}

function contentList(content) {
  const list = el("ul");
  for (const [mediaType, media] of Object.entries(content || {})) {
    list.append(el("li", {}, el("code", { textContent: mediaType }), " ",
      media.schema ? schemaLink(media.schema) : ""));
  }
  return list;
}

function operation(path, method, op) {
  const body = el("div");
  if (op.description) body.append(el("p", { textContent: op.description }));
  if (op.parameters && op.parameters.length) {
    body.append(el("h3", { textContent: "Parameters" }), parametersTable(op.parameters));
  }
  if (op.requestBody) {
    body.append(el("h3", { textContent: "Request body" }), contentList(op.requestBody.content));
  }
  const rows = Object.entries(op.responses || {}).map(([status, answer]) => {
    const headers = Object.keys(answer.headers || {});
    return el("tr", {},
      el("td", {}, el("strong", { textContent: status })),
      el("td", {}, answer.description || "",
        headers.length ? el("div", {}, "Headers: ", el("code", { textContent: headers.join(", ") })) : null),
      el("td", {}, contentList(answer.content)));
  });
  body.append(el("h3", { textContent: "Responses" }), el("table", {},
    el("thead", {}, el("tr", {}, ...["status", "meaning", "body"].map(
      (h) => el("th", { scope: "col", textContent: h })))),
    el("tbody", {}, ...rows)));
  return el("details", { className: "op", id: op.operationId || "" },
    el("summary", {},
      el("span", { className: "method " + method, textContent: method }),
      el("span", { className: "path", textContent: path }),
      el("span", { className: "summary", textContent: op.summary || "" })),
    body);
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("description").textContent = doc.info.description || "";
  const main = document.getElementById("main");
  main.replaceChildren();
  const byTag = new Map((doc.tags || []).map((tag) => [tag.name, []]));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op));
    }
  }
  const tagText = new Map((doc.tags || []).map((tag) => [tag.name, tag.description]));
  for (const [tag, ops] of byTag) {
    if (!ops.length) continue;
    main.append(el("section", {}, el("h2", { textContent: tag }),
      tagText.get(tag) ? el("p", { textContent: tagText.get(tag) }) : null, ...ops));
  }
  const schemas = (doc.components && doc.components.schemas) || {};
  const section = el("section", {}, el("h2", { textContent: "Schemas" }));
  for (const [name, schema] of Object.entries(schemas)) {
    section.append(el("details", { className: "op", id: "schema-" + name },
      el("summary", {}, el("span", { className: "path", textContent: name }),
        el("span", { className: "summary", textContent: schema.description || "" })),
      el("div", {}, el("pre", { textContent: JSON.stringify(schema, null, 2) }))));
  }
  main.append(section);
  // A link to a schema opens it.
  main.addEventListener("click", (event) => {
    const link = event.target.closest("a[href^='#schema-']");
    if (link) {
      const target = document.getElementById(link.getAttribute("href").slice(1));
      if (target) target.open = true;
    }
  });
}

// Relative: the page and the document sit side by side wherever the API is mounted.
fetch("openapi.json")
  .then((response) => {
    if (response.status === 401) return null;
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  })
  .then((doc) => {
    if (doc) {
      render(doc);
      return;
    }
    // With authentication on, the description is for callers: the dashboard signs in (its
    // session cookie then comes with this page's request).
    const message = document.getElementById("description");
    const link = document.createElement("a");
    link.href = "./";
    link.textContent = "Sign in on the dashboard";
    message.replaceChildren(link, " to read the API's description, then come back.");
  })
  .catch((error) => {
    const message = document.getElementById("description");
    message.className = "error";
    message.textContent = "Could not load openapi.json: " + error.message;
  });
