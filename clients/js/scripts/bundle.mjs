// The browser bundle: the whole client as one ES module with no imports
// (dist/browser/gamecluster-client.js), for a <script type="module"> without a bundler.
// The relay's demo page serves a copy of it (`make js-vendor`).
import { build } from "esbuild";

await build({
  entryPoints: ["src/index.ts"],
  outfile: "dist/browser/gamecluster-client.js",
  bundle: true,
  format: "esm",
  target: "es2022",
  platform: "browser",
  legalComments: "none",
  banner: { js: "// @gamecluster/client: browser bundle (built from clients/js by `make js-vendor`; do not edit)" },
});
