/**
 * deploy/: what can be checked without Docker, Kubernetes or AWS. The Dockerfiles copy files that
 * exist, cover every module main.ts loads, and run a main.ts command; the Kubernetes Job and the
 * AWS Batch job definition parse, shard consistently, and call existing commands with their flags.
 * @module
 */
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "@std/assert";
import { commands } from "../tasks/mod.ts";
import { ROOT } from "./_cli.ts";

const DEPLOY = join(ROOT, "deploy");
const DOCKERFILES = ["Dockerfile.gpu", "Dockerfile.cpu"];

/** A Dockerfile's instructions: line continuations joined, comments dropped. */
function instructions(text: string): { op: string; args: string }[] {
  const joined = text.split("\n").filter((l) => !/^\s*#/.test(l)).join("\n")
    .replace(/\\\n/g, " ");
  return joined.split("\n").map((l) => l.trim()).filter((l) => l !== "").map((l) => {
    const m = /^(\S+)\s+(.*)$/.exec(l)!;
    return { op: m[1].toUpperCase(), args: m[2] };
  });
}

/** Whether `flag` is documented in `command`'s help. */
function knowsFlag(command: string, flag: string): boolean {
  const help = commands.find((c) => c.name === command)?.help ?? "";
  return new RegExp(`(^|\\s)${flag.replace(/[-]/g, "\\-")}(\\s|$|,|=)`, "m").test(help);
}

/** Checks a container's arguments: an existing command, then only flags that command knows. */
function checkArgs(where: string, args: string[]): void {
  assert(commands.some((c) => c.name === args[0]), `${where}: no command "${args[0]}" in main.ts`);
  for (const a of args.slice(1)) {
    if (a.startsWith("--")) assert(knowsFlag(args[0], a), `${where}: ${args[0]} has no flag ${a}`);
  }
}

/** Local modules main.ts (and the serve worker, loaded by URL) import, relative to the root. */
async function localModules(): Promise<string[]> {
  const found = new Set<string>();
  for (const entry of ["main.ts", "tasks/_serve_worker.ts"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as {
      modules: { specifier: string }[];
    };
    for (const { specifier } of info.modules) {
      if (specifier.startsWith("file:")) found.add(relative(ROOT, fileURLToPath(specifier)));
    }
  }
  return [...found].sort();
}

for (const name of DOCKERFILES) {
  Deno.test(`deploy/${name}: copies files that exist, covers main.ts's modules, runs main.ts`, async () => {
    const ins = instructions(await Deno.readTextFile(join(DEPLOY, name)));
    assertEquals(ins[0].op, "FROM", "the first instruction is FROM");
    if (name.endsWith("gpu")) {
      assertEquals(ins[0].args, "nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04");
    } else assert(ins[0].args.includes("bookworm"), ins[0].args);

    const copied: string[] = [];
    for (const { args } of ins.filter((i) => i.op === "COPY")) {
      const words = args.split(/\s+/).filter((w) => !w.startsWith("--"));
      if (/--from=/.test(args)) continue; // from another image
      for (const src of words.slice(0, -1)) {
        const path = join(ROOT, src);
        await Deno.stat(path).catch(() => {
          throw new Error(`${name}: COPY source "${src}" does not exist`);
        });
        copied.push(src.replace(/\/$/, ""));
      }
    }
    const modules = await localModules();
    assert(modules.length > 20, modules.join(", "));
    const missing = modules.filter((m) => !copied.some((c) => m === c || m.startsWith(c + "/")));
    assertEquals(missing, [], `${name} does not copy modules main.ts loads`);

    // What the build caches exists; the entrypoint runs main.ts; the default argument is valid.
    for (const { args } of ins.filter((i) => i.op === "RUN" && / deno cache /.test(` ${i.args}`))) {
      const files = args.slice(args.indexOf("deno cache") + 10).split(/\s+/).filter(Boolean);
      for (const f of files) await Deno.stat(join(ROOT, f));
    }
    const entry = ins.findLast((i) => i.op === "ENTRYPOINT");
    assert(entry, `${name} has an ENTRYPOINT`);
    const argv = JSON.parse(entry.args) as string[];
    assertEquals(argv.slice(0, 2), ["deno", "run"]);
    assertEquals(argv.at(-1), "main.ts");
    const cmd = JSON.parse(ins.findLast((i) => i.op === "CMD")!.args) as string[];
    assert(cmd[0] === "--help" || commands.some((c) => c.name === cmd[0]), cmd.join(" "));

    // The build context leaves out nothing the image copies.
    const ignore = (await Deno.readTextFile(join(DEPLOY, `${name}.dockerignore`))).split("\n")
      .map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
    for (const c of copied) assert(!ignore.includes(c), `${name}.dockerignore excludes ${c}`);
  });
}

const HAS_PYYAML = await new Deno.Command("python3", {
  args: ["-c", "import yaml"],
  stdout: "null",
  stderr: "null",
}).output().then((o) => o.success, () => false);

Deno.test({
  name:
    "deploy/k8s-indexed-job.yaml: an Indexed Job, shards = completions = parallelism, GPU limits",
  ignore: !HAS_PYYAML,
  async fn() {
    const out = await new Deno.Command("python3", {
      args: [
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        join(DEPLOY, "k8s-indexed-job.yaml"),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const [job] = JSON.parse(new TextDecoder().decode(out.stdout));
    assertEquals([job.apiVersion, job.kind], ["batch/v1", "Job"]);
    assertEquals(job.spec.completionMode, "Indexed");
    assertEquals(job.spec.completions, job.spec.parallelism);
    assertEquals(job.spec.template.spec.restartPolicy, "Never");
    const [container] = job.spec.template.spec.containers;
    const env = Object.fromEntries(
      (container.env as { name: string; value: string }[]).map((e) => [e.name, e.value]),
    );
    assertEquals(Number(env.REVUNET_SHARD_COUNT), job.spec.completions);
    assertEquals(container.resources.limits["nvidia.com/gpu"], 1);
    checkArgs("k8s-indexed-job.yaml", container.args);
  },
});

Deno.test("deploy/aws-batch-job.json: an array-ready job definition calling segment", async () => {
  const def = JSON.parse(await Deno.readTextFile(join(DEPLOY, "aws-batch-job.json")));
  assertEquals(def.type, "container");
  const cmd = def.containerProperties.command as string[];
  checkArgs("aws-batch-job.json", cmd);
  for (const ref of cmd.filter((a) => a.startsWith("Ref::"))) {
    assert(ref.slice(5) in def.parameters, `aws-batch-job.json: no default for ${ref}`);
  }
  const gpu = (def.containerProperties.resourceRequirements as { type: string; value: string }[])
    .find((r) => r.type === "GPU");
  assertEquals(gpu?.value, "1");
  // AWS Batch sets the array index and size itself; a fixed count here would contradict them.
  const names = (def.containerProperties.environment as { name: string }[]).map((e) => e.name);
  assert(!names.some((n) => n.startsWith("AWS_BATCH_")), names.join(", "));
});

Deno.test("deploy/README.md names every deployment file and only existing commands", async () => {
  const readme = await Deno.readTextFile(join(DEPLOY, "README.md"));
  for await (const e of Deno.readDir(DEPLOY)) {
    if (e.name !== "README.md" && !e.name.endsWith(".dockerignore")) {
      assert(readme.includes(e.name), `README.md does not mention ${e.name}`);
    }
  }
  for (const m of readme.matchAll(/deno task (\S+)/g)) {
    assert(commands.some((c) => c.name === m[1]), `README.md names unknown command ${m[1]}`);
  }
  for (const m of readme.matchAll(/revunet-deno:(?:gpu|cpu)\s+\\?\s*(\w+)/g)) {
    assert(commands.some((c) => c.name === m[1]), `README.md runs unknown command ${m[1]}`);
  }
});
