// Validates the HTTPRoutes the chart renders (a JSON array written by check_chart.py)
// against the Gateway API's v1 schema, as compiled from its CRDs by
// @kubernetes-models/gateway-api. A route broken on purpose must fail first, so a validator
// that accepts anything cannot pass the check.
//
// Usage: node scripts/check_httproute.mjs NODE_MODULES ROUTES.json
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [modules, file] = process.argv.slice(2);
const pkg = join(modules, "@kubernetes-models/gateway-api");
const { HTTPRoute } = await import(join(pkg, "gateway.networking.k8s.io/v1/HTTPRoute.js"));
const version = JSON.parse(readFileSync(join(pkg, "package.json"))).version;

function problems(route) {
  try {
    new HTTPRoute(route).validate();
    return null;
  } catch (e) {
    return e.message;
  }
}

const routes = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
if (routes.length === 0) {
  console.log("FAIL no HTTPRoute to check");
  failed++;
}
for (const route of routes) {
  const what = `HTTPRoute ${route.metadata.name}`;
  const broken = structuredClone(route);
  broken.spec.rules[0].timeouts = { request: "1 hour" };
  broken.spec.rules[0].backendRefs[0].port = "http";
  if (!problems(broken)) {
    console.log(`FAIL ${what}: the validator accepted a broken copy (timeout "1 hour", port "http")`);
    failed++;
  }
  const found = problems(route);
  if (found) {
    console.log(`FAIL ${what}: ${found}`);
    failed++;
  } else {
    console.log(`ok   ${what} is valid against the Gateway API v1 schema (@kubernetes-models/gateway-api ${version})`);
  }
}
process.exit(failed ? 1 : 0);
