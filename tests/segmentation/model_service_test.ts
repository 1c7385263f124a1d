/**
 * pipeline/segmentation/model_service.ts: `serve`'s start: the model location resolved once
 * (a run folder to its best/ weights, logged with a note), the runners loaded, the service started
 * on them; a location holding no model, or a port in use, is an error and no service.
 * @module
 */
import * as tf from "../../model/tf.ts";
import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { startModelService } from "../../pipeline/segmentation/mod.ts";
import { runLayout } from "./_segment_fixtures.ts";

await tf.setBackend("cpu");

const BASE = {
  hostname: "127.0.0.1",
  port: 0,
  concurrency: 1,
  queue: 4,
  token: undefined,
  backend: "cpu" as const,
  inProcess: true,
};

Deno.test("startModelService: a run folder is resolved to its best/ weights, logged, and served", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-modelsvc-" });
  try {
    await runLayout(dir);
    const log: Record<string, unknown>[] = [];
    const service = await startModelService({
      ...BASE,
      out: `${dir}/seg`,
      model: `${dir}/run`,
      log: (e) => log.push(e),
    });
    try {
      assertEquals(log[0], {
        event: "loading",
        model: `${dir}/run/best/model.safetensors`,
        note: `${dir}/run is a training run: using its best/ weights ` +
          `(${dir}/run/best/model.safetensors)`,
        backend: "cpu",
        workers: 0,
      });
      const health = await (await fetch(`${service.url}/healthz`)).json();
      assertEquals(health.status, "ok");
      assertEquals(health.backend, "cpu");
    } finally {
      await service.drain();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("startModelService: no model at the location, or a port in use, is an error and no service", async () => {
  const dir = await Deno.makeTempDir({ prefix: "revunet-modelsvc-" });
  try {
    const log: Record<string, unknown>[] = [];
    const e = await assertRejects(() =>
      startModelService({
        ...BASE,
        out: `${dir}/seg`,
        model: `${dir}/none`,
        log: (e) => log.push(e),
      })
    );
    assertStringIncludes((e as Error).message, `No model at "${dir}/none"`);
    assertEquals(log, [], "nothing was loaded");

    await runLayout(dir);
    using busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    await assertRejects(() =>
      startModelService({
        ...BASE,
        port: busy.addr.port,
        out: `${dir}/seg`,
        model: `${dir}/weights/final.safetensors`,
        log: (e) => log.push(e),
      }), Deno.errors.AddrInUse);
    assertEquals(log.map((e) => [e.event, e.model]), [
      ["loading", `${dir}/weights/final.safetensors`],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
