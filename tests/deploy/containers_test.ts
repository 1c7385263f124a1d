/**
 * deploy/: what can be checked without Docker, Kubernetes or AWS. The Dockerfiles copy files that
 * exist, cover every module main.ts loads, and run a main.ts command; the Kubernetes Job and the
 * AWS Batch job definition parse, shard consistently, and call existing commands with their flags.
 * @module
 */
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "@std/assert";
import { declaredFlags } from "../../tasks/_flags.ts";
import { commands } from "../../tasks/mod.ts";
import { ROOT } from "../_cli.ts";

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

/** `text` with `${NAME}`/`$NAME` replaced by the default of the Dockerfile's `ARG NAME=...`. */
function resolveArgs(text: string, ins: { op: string; args: string }[]): string {
  const defaults = new Map(
    ins.filter((i) => i.op === "ARG").map((i) => i.args.split("=", 2) as [string, string]),
  );
  return text.replace(/\$\{?(\w+)\}?/g, (_, v: string) => defaults.get(v) ?? `<unset ${v}>`);
}

/**
 * Whether a top-level path `name` is in the build context under these .dockerignore patterns
 * (the subset the deploy files use: `*`, `name`, `name/`, `**\/name`, each optionally negated with
 * `!`; the last matching pattern wins).
 */
function inContext(patterns: string[], name: string): boolean {
  let included = true;
  for (const p of patterns) {
    const negated = p.startsWith("!");
    const pat = (negated ? p.slice(1) : p).replace(/\/$/, "");
    const matches = pat === "*" || pat === name || (pat.startsWith("**/") && pat.slice(3) === name);
    if (matches) included = negated;
  }
  return included;
}

/** Whether `flag` (`--name` or `--name=value`) is one `command`'s help declares. */
function knowsFlag(command: string, flag: string): boolean {
  const help = commands.find((c) => c.name === command)?.help ?? "";
  return Object.hasOwn(declaredFlags(help), flag.slice(2).split("=")[0]);
}

/** Checks a container's arguments: an existing command, then only flags that command knows. */
function checkArgs(where: string, args: string[]): void {
  assert(commands.some((c) => c.name === args[0]), `${where}: no command "${args[0]}" in main.ts`);
  for (const a of args.slice(1)) {
    if (a.startsWith("--")) assert(knowsFlag(args[0], a), `${where}: ${args[0]} has no flag ${a}`);
  }
}

/**
 * The modules started as workers (`new Worker(new URL("./x.ts", import.meta.url))`) in pipeline/,
 * relative to the root: `deno info main.ts` does not see them, so the images cache them by name.
 */
async function workerEntries(): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(join(ROOT, dir))) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory) await walk(path);
      else if (path.endsWith(".ts")) {
        const text = await Deno.readTextFile(join(ROOT, path));
        for (const m of text.matchAll(/new Worker\(new URL\("\.\/([a-z_]+\.ts)"/g)) {
          found.push(`${dir}/${m[1]}`);
        }
      }
    }
  };
  await walk("pipeline");
  return found.sort();
}

/** Local modules main.ts and its workers (loaded by URL) import, relative to the root. */
async function localModules(): Promise<string[]> {
  const found = new Set<string>();
  for (const entry of ["main.ts", ...await workerEntries()]) {
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
    const first = ins.find((i) => i.op !== "ARG");
    assertEquals(first?.op, "FROM", "the first instruction after ARGs is FROM");
    // What an internet machine builds on: the last FROM with the ARGs' defaults.
    const base = resolveArgs(ins.findLast((i) => i.op === "FROM")!.args, ins);
    if (name.endsWith("gpu")) {
      assertEquals(base, "nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04");
    } else assertEquals(base, "node:20-bookworm-slim");

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
    const cached: string[] = [];
    for (const { args } of ins.filter((i) => i.op === "RUN" && / deno cache /.test(` ${i.args}`))) {
      const files = args.slice(args.indexOf("deno cache") + 10).split(/\s+/).filter(Boolean);
      for (const f of files) await Deno.stat(join(ROOT, f));
      cached.push(...files);
    }
    const workers = await workerEntries();
    assertEquals(workers, [
      "pipeline/cases/sampler_worker.ts",
      "pipeline/segmentation/serve_worker.ts",
    ]);
    for (const w of ["main.ts", ...workers]) assert(cached.includes(w), `${name} caches ${w}`);
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
    for (const c of copied) assert(inContext(ignore, c), `${name}.dockerignore excludes ${c}`);
    for (const left of ["node_modules", ".git", ".device", "tests", ".tmp"]) {
      assert(!inContext(ignore, left), `${name}.dockerignore lets ${left} into the context`);
    }
  });
}

/** The Deno version a Dockerfile installs: `npm install -g deno@<v>`, with `ARG`s resolved. */
function denoVersion(name: string, text: string): string {
  const ins = instructions(text);
  const args = new Map(
    ins.filter((i) => i.op === "ARG").map((i) => i.args.split("=", 2) as [string, string]),
  );
  const install = ins.find((i) => i.op === "RUN" && /npm install -g deno@/.test(i.args));
  assert(install, `${name} installs Deno with npm`);
  const spec = /deno@(\S+)/.exec(install.args)![1]
    .replace(/\$\{?(\w+)\}?/g, (_, v: string) => args.get(v) ?? `<unset ${v}>`);
  return spec;
}

Deno.test("deploy/Dockerfile.*: both pin one exact Deno version", async () => {
  const versions = await Promise.all(
    DOCKERFILES.map(async (name) => denoVersion(name, await Deno.readTextFile(join(DEPLOY, name)))),
  );
  for (const [k, v] of versions.entries()) {
    assert(/^\d+\.\d+\.\d+$/.test(v), `${DOCKERFILES[k]} installs deno@${v}: pin x.y.z`);
  }
  assertEquals(versions[0], versions[1], "the GPU and CPU images run the same Deno");
  if (versions[0] !== Deno.version.deno) {
    console.warn(`deploy images pin Deno ${versions[0]}; these tests run on ${Deno.version.deno}`);
  }
});

Deno.test("deploy/Dockerfile.gpu: the NVIDIA Vulkan ICD and the libraries it links are installed", async () => {
  const ins = instructions(await Deno.readTextFile(join(DEPLOY, "Dockerfile.gpu")));
  const apt = ins.filter((i) => i.op === "RUN" && /apt-get install/.test(i.args))
    .flatMap((i) => i.args.split(/\s+/));
  // libGLX_nvidia.so.0 (mounted by the container runtime) needs these to load at all.
  for (const pkg of ["libvulkan1", "libx11-6", "libxext6", "libglvnd0", "libegl1"]) {
    assert(apt.includes(pkg), `Dockerfile.gpu does not install ${pkg}`);
  }
  const icd = ins.find((i) => i.op === "RUN" && /icd\.d\/nvidia_icd\.json/.test(i.args));
  assert(icd, "Dockerfile.gpu writes /etc/vulkan/icd.d/nvidia_icd.json");
  const json = /'(\{.*\})\\n'/.exec(icd.args);
  assert(json, icd.args);
  assertEquals(JSON.parse(json[1]).ICD.library_path, "libGLX_nvidia.so.0");
  const env = ins.filter((i) => i.op === "ENV").map((i) => i.args).join(" ");
  assert(/NVIDIA_DRIVER_CAPABILITIES=\S*graphics/.test(env), "graphics capability for Vulkan");
});

/** A python that has PyYAML: Debian's (python3-yaml), else the one on PATH. */
const YAML_PYTHON = await (async () => {
  for (const python of ["/usr/bin/python3", "python3"]) {
    const ok = await new Deno.Command(python, {
      args: ["-c", "import yaml"],
      stdout: "null",
      stderr: "null",
    }).output().then((o) => o.success, () => false);
    if (ok) return python;
  }
  return undefined;
})();

Deno.test({
  // Without PyYAML the test is reported as ignored, and its name says why.
  name: "deploy/k8s-indexed-job.yaml: an Indexed Job, shards = completions = parallelism, GPU " +
    `limits${YAML_PYTHON ? "" : " (IGNORED: no python3 with PyYAML; apt install python3-yaml)"}`,
  ignore: !YAML_PYTHON,
  async fn() {
    const out = await new Deno.Command(YAML_PYTHON!, {
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
  const tasks = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json"))).tasks;
  for (const m of readme.matchAll(/deno task (\S+)/g)) {
    assert(
      commands.some((c) => c.name === m[1]) || m[1] in tasks,
      `README.md names unknown command ${m[1]}`,
    );
  }
  for (const m of readme.matchAll(/revunet-deno:(?:gpu|cpu)\s+\\?\s*(\w+)/g)) {
    assert(commands.some((c) => c.name === m[1]), `README.md runs unknown command ${m[1]}`);
  }
});

Deno.test("deploy/container.sh: valid bash, run by `deno task container`, build-args the Dockerfiles declare", async () => {
  const script = join(DEPLOY, "container.sh");
  const syntax = await new Deno.Command("bash", { args: ["-n", script], stderr: "piped" }).output();
  assert(syntax.success, new TextDecoder().decode(syntax.stderr));
  const tasks = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json"))).tasks;
  assertEquals(tasks.container, "bash deploy/container.sh");
  const text = await Deno.readTextFile(script);
  // Every Dockerfile the script builds, and every --build-arg it passes, exists there.
  const built = [...text.matchAll(/deploy\/Dockerfile\.\$kind/g)].length;
  assert(built > 0, "container.sh builds deploy/Dockerfile.<kind>");
  const passed = new Set([...text.matchAll(/--build-arg "(\w+)=/g)].map((m) => m[1]));
  assert(passed.has("BASE") && passed.has("TFJS_NODE"), [...passed].join(", "));
  const declared = (name: string) =>
    Deno.readTextFile(join(DEPLOY, name)).then((t) =>
      new Set(instructions(t).filter((i) => i.op === "ARG").map((i) => i.args.split("=")[0]))
    );
  const cpu = await declared("Dockerfile.cpu");
  for (const a of ["BASE", "TFJS_NODE"]) assert(cpu.has(a), `Dockerfile.cpu has no ARG ${a}`);
  const gpu = await declared("Dockerfile.gpu");
  for (const a of passed) assert(gpu.has(a), `Dockerfile.gpu has no ARG ${a}`);
  // The smoke test it runs exists and type-checks with the rest (deno check covers it).
  await Deno.stat(join(DEPLOY, "container_smoke.ts"));
});
