// dist/cjs is CommonJS inside a "type": "module" package: say so to Node with a nested
// package.json, the usual dual-package layout.
import { writeFileSync } from "node:fs";
writeFileSync("dist/cjs/package.json", JSON.stringify({ type: "commonjs" }) + "\n");
