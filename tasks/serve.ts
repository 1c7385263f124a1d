/**
 * `serve`: the flags of pipeline/segmentation's event service, its log lines printed, and
 * SIGTERM/SIGINT turned into a drain, then an abort.
 * @module
 */
import {
  DEFAULT_MAX_BODY,
  type EventService,
  MAX_EVENT_RECORDS,
  startModelService,
} from "../pipeline/segmentation/mod.ts";
import {
  backendFlag,
  defineCommand,
  INFERENCE_HELP,
  inferenceOptions,
  printJson,
  UsageError,
  withSignals,
} from "./_cli.ts";

/** The environment variable holding the bearer token unless `--token-env` names another. */
export const DEFAULT_TOKEN_ENV = "REVUNET_TOKEN";

// ---------------------------------------------------------------------------------------------
// The command

export const serveCommand = defineCommand({
  name: "serve",
  summary: "Segment cases as S3 event notifications announce their inputs (an HTTP service)",
  help: `Usage: deno task serve --model <uri> --out <uri> [options]

An HTTP service for S3 event notifications (Amazon S3 via SNS, a MinIO webhook, EventBridge or
plain {"Records": [...]}) POSTed to / or /events. Once a case's inputs are all there (BraTS's four
modalities, or the channels the model's dataset names), it is segmented as \`segment\` does, on
worker threads with the model loaded once, into <out>/<case>.nii.gz, and scored into
<out>/<case>.metrics.json when its folder holds its reference. Answers 202 {"status":"queued",
"id":"<job>"} or {"status":"waiting"}, 200 (ignored or duplicate), 400 (malformed), 401 (no token),
413 (over --max-body or ${MAX_EVENT_RECORDS} records), 503 (queue full or stopping); a failed case
is recorded in <out>/<case>.error.json. SIGTERM or SIGINT lets the queued and running cases finish,
a second signal abandons them (outputs whole or none); both exit 0. README: "Running in the cloud".

Endpoints:
  POST /  or /events      an S3 event notification (JSON)
  GET  /healthz           {"status":"ok",...} (503 while shutting down; no token needed)
  GET  /jobs/<id>         status queued|running|done|failed|skipped, case, outputs (segmentation,
                          probabilities, metrics), error
  GET  /jobs              recent jobs, newest first

Options:
  --model <uri>             trained model: run folder, best/, checkpoint folder or file (required)
  --out <uri>               output folder or s3:// prefix (required)
  --input <uri>             accept only objects under this s3:// prefix (default: any)
  --port <n>                port to listen on (default 8080; 0 picks a free one)
  --host <host>             address to listen on (default 0.0.0.0)
  --concurrency <n>         cases segmented at once, one worker (and model copy) each (default 1)
  --queue <n>               jobs waiting beyond the running ones before events get 503
                            (default 64)
  --token-env <name>        variable holding the bearer token (default ${DEFAULT_TOKEN_ENV}), sent as
                            "Authorization: Bearer <token>" or as basic auth's password (SNS)
  --no-auth                 accept requests without a token (required when the variable is unset)
  --max-body <bytes>        largest request body (default ${DEFAULT_MAX_BODY})
${INFERENCE_HELP}
  --backend <backend>       auto|tensorflow|webgpu|wasm|cpu (default cpu)
  --in-process              segment on the service's thread instead of a worker (for a backend
                            that cannot load in a worker; the service stops answering while it
                            segments)
  --quiet                   no log lines (JSON, one per line, on stdout otherwise)

Examples:
  REVUNET_TOKEN=$(openssl rand -hex 32) deno task serve --model s3://models/run1/best \\
    --out s3://brats/segmentations/ --input s3://brats/incoming/ --backend tensorflow
  curl -H "Authorization: Bearer $REVUNET_TOKEN" -d @event.json http://127.0.0.1:8080/
See deploy/README.md for wiring S3 (SNS) or MinIO (mc event add) to the service.`,
  async run(flags) {
    flags.require("model", "out");
    const [input, tokenEnv, noAuth] = [
      flags.str("input"),
      flags.str("token-env"),
      flags.bool("no-auth"),
    ];
    if (noAuth && tokenEnv !== undefined) {
      throw new UsageError("--no-auth and --token-env contradict each other: give one");
    }
    if (input !== undefined && !input.toLowerCase().startsWith("s3://")) {
      throw new UsageError(`--input must be an s3:// prefix, got "${input}"`);
    }
    const token = noAuth ? undefined : bearerToken(tokenEnv);
    const concurrency = flags.int("concurrency", 1, 1, 64);
    const settings = {
      out: flags.str("out")!,
      ...(input !== undefined ? { input } : {}),
      model: flags.str("model")!,
      hostname: flags.str("host") ?? "0.0.0.0",
      port: flags.int("port", 8080, 0, 65535),
      concurrency,
      queue: flags.int("queue", 64, 0, 100_000),
      token,
      maxBodyBytes: flags.int("max-body", DEFAULT_MAX_BODY, 1024, 1 << 30),
      caseOptions: inferenceOptions(flags),
    };
    const backend = backendFlag(flags);
    const inProcess = flags.bool("in-process");
    if (inProcess && concurrency > 1) {
      throw new UsageError("--in-process segments one case at a time: drop --concurrency");
    }
    const log = flags.bool("quiet")
      ? () => {}
      : (entry: Record<string, unknown>) => printJson({ time: new Date().toISOString(), ...entry });
    const service = await startModelService({ ...settings, backend, inProcess, log });
    await untilClosed(service, log);
  },
});

/**
 * The bearer token from the variable `--token-env` names (default {@linkcode DEFAULT_TOKEN_ENV}).
 * @throws {UsageError} for a name that is no variable name, or a variable unset or empty
 */
function bearerToken(name: string | undefined): string {
  const tokenEnv = name ?? DEFAULT_TOKEN_ENV;
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(tokenEnv)) {
    throw new UsageError(`--token-env must be an environment variable name, got "${tokenEnv}"`);
  }
  const token = Deno.env.get(tokenEnv);
  if (token === undefined || token === "") {
    throw new UsageError(
      `the bearer token variable ${tokenEnv} is not set: set it (e.g. to \`openssl rand -hex ` +
        `32\`), name another with --token-env, or pass --no-auth to accept anyone`,
    );
  }
  return token;
}

/** Waits for the service to close: the first SIGTERM or SIGINT drains it, a second aborts it. */
async function untilClosed(
  service: EventService,
  log: (entry: Record<string, unknown>) => void,
): Promise<void> {
  let signals = 0;
  const onSignal = (name: string) => {
    signals++;
    log({ event: "signal", signal: name });
    if (signals === 1) service.drain();
    else service.abort();
  };
  await withSignals(onSignal, () => service.closed);
}
