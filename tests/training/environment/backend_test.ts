/**
 * pipeline/training/environment/backend.ts: the versions `version` reports.
 * @module
 */
import { assert, assertEquals } from "@std/assert";
import config from "../../../deno.json" with { type: "json" };
import { VERSION, versionInfo } from "../../../pipeline/training/mod.ts";

Deno.test("versionInfo() reports deno.json's version, Deno's and the auto backend's choice", async () => {
  assertEquals(VERSION, config.version);
  const v = await versionInfo();
  assertEquals([v.revunet, v.deno, v.v8], [config.version, Deno.version.deno, Deno.version.v8]);
  assert(v.backend.name.length > 0 && v.backend.reason.length > 0, JSON.stringify(v.backend));
});
