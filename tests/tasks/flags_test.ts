/**
 * tasks/_flags.ts: flags declared by each command's help. The parser's rules, and, for every
 * command, that each flag its source reads is one its help declares with that type (the check
 * `Flags` makes at run time, made here for every name, run or not).
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { SETTING_FLAGS } from "../../pipeline/training/mod.ts";
import { INFERENCE_HELP } from "../../tasks/_cli.ts";
import { declaredFlags, parseFlags, UsageError } from "../../tasks/_flags.ts";
import { commands } from "../../tasks/mod.ts";

const HELP = `Usage: x [options]

Prose that mentions  --not-a-flag <x>  in passing.

Options:
  --out <uri>         where (required)
  --mode a|b          a mode
  --seed <n>          a seed
  --json              JSON
  --quiet             no output
                      --continued lines are not flags

Examples:
  --example <x>       after the block: not a flag`;

Deno.test("declaredFlags: the Options block's lines, a token after one space takes a value", () => {
  const options = declaredFlags(HELP);
  assertEquals(
    Object.fromEntries(Object.entries(options).map(([k, v]) => [k, v.type])),
    {
      out: "string",
      mode: "string",
      seed: "string",
      json: "boolean",
      quiet: "boolean",
      help: "boolean",
    },
  );
  assertEquals(options.help.short, "h");
  assertEquals(Object.keys(declaredFlags("Usage: x\n\nno options here")), ["help"]);
});

Deno.test("parseFlags: values by type, the order given, negative numbers, -- and positionals", () => {
  const flags = parseFlags("x", ["--seed", "-3", "--json", "--out", "o", "--mode=b"], HELP);
  assertEquals(flags.int("seed", 0), -3);
  assertEquals([flags.str("out"), flags.str("mode"), flags.bool("json")], ["o", "b", true]);
  assertEquals(flags.bool("quiet"), false);
  assertEquals(flags.given(), ["seed", "json", "out", "mode"]);
  assertEquals(flags.num("seed", 1, -5), -3);
  assertEquals(parseFlags("x", [], HELP).int("seed", 7), 7);
  // After "--", a negative number is a positional, not a value.
  const rest = parseFlags("x", ["--", "-1"], HELP, true);
  assertEquals([rest.positionals, rest.given()], [["-1"], []]);
});

Deno.test("parseFlags: an unknown flag, a missing value or a positional is a usage error naming it", () => {
  for (
    const [args, says] of [
      [["--nope"], "--nope"],
      [["--not-a-flag", "v"], "--not-a-flag"],
      [["--example", "v"], "--example"],
      [["--out"], "--out"],
      [["--json=1"], "--json"],
      [["stray"], "stray"],
    ]
  ) {
    const e = assertThrows(() => parseFlags("x", args as string[], HELP), UsageError);
    assert(e.message.startsWith("x: ") && e.message.includes(says as string), e.message);
  }
});

Deno.test("Flags: ranges and require are usage errors; a name the help lacks is a bug", () => {
  const flags = parseFlags("x", ["--seed", "3.5", "--out", ""], HELP);
  const bad = assertThrows(() => flags.int("seed", 0), UsageError);
  assertEquals(bad.message, `--seed must be an integer, got "3.5"`);
  assertThrows(() => flags.require("out"), UsageError, "--out is required");
  assertThrows(() => flags.require("mode"), UsageError, "--mode is required");
  for (const read of [() => flags.str("json"), () => flags.bool("out"), () => flags.str("nope")]) {
    const e = assertThrows(read);
    assert(!(e instanceof UsageError), "an undeclared name is a programming error, not usage");
    assert(e.message.startsWith("x: its help declares no"), e.message);
  }
});

/** The flag names and types a source reads: `flags.str("x")`, `.bool`, `.int`, ..., `require`. */
function flagsRead(source: string): [string, "string" | "boolean"][] {
  const read: [string, "string" | "boolean"][] = [];
  for (const m of source.matchAll(/\.(str|bool|int|num|gib)\(\s*"([^"]+)"/g)) {
    read.push([m[2], m[1] === "bool" ? "boolean" : "string"]);
  }
  for (const m of source.matchAll(/\.require\(([^)]*)\)/g)) {
    for (const name of m[1].matchAll(/"([^"]+)"/g)) read.push([name[1], "string"]);
  }
  // The shared parsers of _cli.ts read these.
  const helpers: Record<string, string> = {
    "backendFlag(": "backend",
    "shardFlag(": "shard",
    "sizeFlag(": "size",
  };
  for (const [call, name] of Object.entries(helpers)) {
    if (source.includes(call)) read.push([name, "string"]);
  }
  if (source.includes("inferenceOptions(")) {
    for (const [name, { type }] of Object.entries(declaredFlags(`Options:\n${INFERENCE_HELP}`))) {
      if (name !== "help") read.push([name, type]);
    }
  }
  return read;
}

Deno.test("every flag a command reads is declared by its help, with the type it reads", async () => {
  let checked = 0;
  for (const command of commands) {
    const path = new URL(`../../tasks/${command.name}.ts`, import.meta.url);
    const source = await Deno.readTextFile(path);
    assert(source.includes(`name: "${command.name}"`), `${path} defines ${command.name}`);
    const declared = declaredFlags(command.help);
    for (const [name, type] of flagsRead(source)) {
      assertEquals(declared[name]?.type, type, `${command.name} reads --${name} as a ${type}`);
      checked++;
    }
  }
  // train reads its settings' flags by the table of pipeline/training: all of them are declared.
  const train = declaredFlags(commands.find((c) => c.name === "train")!.help);
  for (const flag of Object.values(SETTING_FLAGS).filter((f) => f.startsWith("--"))) {
    assert(train[flag.slice(2)], `train's help declares ${flag}`);
    checked++;
  }
  assert(checked > 100, `only ${checked} flag reads found: the patterns no longer match`);
});
