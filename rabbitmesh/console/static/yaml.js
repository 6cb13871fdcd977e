// YAML for the console: JSON objects shown as YAML (a dumper for the JSON data model only,
// which is all the admin API returns), and where a field path such as `spec.subscriber.uri`
// or `spec.filters[1].cesql` sits in a YAML text the user typed. Parsing stays on the server
// (the admin API takes application/yaml): no YAML parser ships with the page.
"use strict";

const RMYaml = (() => {
  const PLAIN = /^[A-Za-z0-9_./][A-Za-z0-9_./ -]*$/;
  const SPECIAL = /^(true|false|yes|no|on|off|null|~|y|n|-?\d[\d_.eE+-]*|0x[0-9a-fA-F]+|\.inf|\.nan)$/i;

  function scalar(v) {
    if (v === null || v === undefined) return "null";
    if (typeof v === "boolean" || typeof v === "number") return String(v);
    const s = String(v);
    if (s === "" || !PLAIN.test(s) || SPECIAL.test(s) || s.endsWith(" ") || s.includes(": ") || s.includes(" #")) {
      return JSON.stringify(s); // a JSON string is a valid YAML double-quoted scalar
    }
    return s;
  }

  function isEmpty(v) {
    return (Array.isArray(v) && v.length === 0) || (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0);
  }

  function dump(value, indent = 0) {
    const pad = " ".repeat(indent);
    if (Array.isArray(value)) {
      if (value.length === 0) return "[]";
      return value.map((item) => {
        if (item && typeof item === "object" && !isEmpty(item)) {
          const inner = dump(item, indent + 2);
          return pad + "- " + inner.slice(indent + 2);
        }
        return pad + "- " + (isEmpty(item) ? (Array.isArray(item) ? "[]" : "{}") : scalar(item));
      }).join("\n");
    }
    if (value && typeof value === "object") {
      const keys = Object.keys(value);
      if (keys.length === 0) return "{}";
      return keys.map((k) => {
        const v = value[k];
        const key = pad + scalar(k) + ":";
        if (v && typeof v === "object" && !isEmpty(v)) {
          if (Array.isArray(v)) return key + "\n" + dump(v, indent);
          return key + "\n" + dump(v, indent + 2);
        }
        if (isEmpty(v)) return key + " " + (Array.isArray(v) ? "[]" : "{}");
        if (typeof v === "string" && v.includes("\n")) {
          return key + " |-\n" + v.split("\n").map((l) => pad + "  " + l).join("\n");
        }
        return key + " " + scalar(v);
      }).join("\n");
    }
    return pad + scalar(value);
  }

  // "spec.filters[1].cesql" -> ["spec", "filters", 1, "cesql"]
  function parsePath(path) {
    const out = [];
    for (const part of String(path).split(".")) {
      const m = part.match(/^([^[\]]*)((\[\d+\])*)$/);
      if (!m) { out.push(part); continue; }
      if (m[1]) out.push(m[1]);
      for (const idx of (m[2] || "").matchAll(/\[(\d+)\]/g)) out.push(Number(idx[1]));
    }
    return out;
  }

  // 0-based line of the deepest part of `path` found in `text` (block-style YAML, the
  // shape the console writes), or -1 when not even the first key is there.
  function lineOf(text, path) {
    const lines = text.split("\n");
    const parts = parsePath(path);
    let from = 0, minIndent = -1, found = -1;
    for (const part of parts) {
      let hit = -1;
      let count = -1;
      for (let i = from; i < lines.length; i++) {
        const line = lines[i];
        if (!line.trim() || line.trim().startsWith("#")) continue;
        const indent = line.length - line.trimStart().length;
        if (i > from && indent <= minIndent) break; // left the enclosing block
        if (typeof part === "number") {
          if (line.trimStart().startsWith("- ") || line.trim() === "-") {
            if (indent > minIndent || minIndent < 0 || indent === minIndent) count++;
            if (count === part) { hit = i; break; }
          }
        } else {
          const body = line.trimStart().replace(/^- /, "");
          const key = body.split(":")[0].trim().replace(/^["']|["']$/g, "");
          if (key === part && body.includes(":")) { hit = i; break; }
        }
      }
      if (hit < 0) break;
      found = hit;
      from = hit + (typeof part === "number" ? 0 : 1);
      minIndent = lines[hit].length - lines[hit].trimStart().length;
      if (typeof part === "number") minIndent -= 1;
    }
    return found;
  }

  return { dump, lineOf, parsePath };
})();
