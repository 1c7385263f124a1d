/**
 * What a training run tells its caller as it goes: the lines of its log and its progress, as
 * events. The run prints nothing itself; {@linkcode trainEventPrinter} turns the events into the
 * command line's `train: ...` lines and progress bar on a sink the caller owns.
 * @module
 */

/**
 * What {@linkcode TrainRuntime.onProgress} is told. `step` counts the steps of the whole run,
 * `epoch` the epoch the step or the validation belongs to (from 1).
 */
export type TrainEvent =
  | { kind: "log"; message: string }
  | { kind: "case-loaded"; id: string; done: number; total: number }
  | {
    kind: "step";
    epoch: number;
    step: number;
    loss: number;
    /** The run's epochs. */
    epochs: number;
    /** Steps done in this epoch, this one included, of `stepsPerEpoch`. */
    stepInEpoch: number;
    stepsPerEpoch: number;
    /** The learning rate of this step. */
    lr: number;
    /** Seconds per step so far in this session (since the start or the resume). */
    secondsPerStep: number;
    /** Seconds left at that pace. */
    secondsLeft: number;
  }
  | { kind: "validated-case"; epoch: number; id: string; done: number; total: number };

/** Where {@linkcode trainEventPrinter} draws: a line of its own, or the progress line. */
export interface ProgressSink {
  log(message: string): void;
  update(label: string, done: number, total: number, text: string, eta: number): void;
}

/**
 * An `onProgress` that writes the run's log lines as `<name>: <message>` and its steps as a
 * progress line (`epoch 2/10 [####....] step 5/25 loss 0.8123 lr 2.9e-3 0.41 s/step ETA 1m02s`).
 * @example
 * ```ts
 * import { assertEquals } from "@std/assert";
 * import { trainEventPrinter } from "./events.ts";
 * const lines: string[] = [];
 * const print = trainEventPrinter({ log: (m) => lines.push(m), update: () => {} });
 * print({ kind: "log", message: "epoch 1: loss 0.9123" });
 * assertEquals(lines, ["train: epoch 1: loss 0.9123"]);
 * ```
 */
export function trainEventPrinter(sink: ProgressSink, name = "train"): (event: TrainEvent) => void {
  return (e) => {
    if (e.kind === "log") sink.log(`${name}: ${e.message}`);
    else if (e.kind === "step") {
      sink.update(
        `epoch ${e.epoch}/${e.epochs}`,
        e.stepInEpoch,
        e.stepsPerEpoch,
        `step ${e.stepInEpoch}/${e.stepsPerEpoch} loss ${e.loss.toFixed(4)} lr ${
          e.lr.toExponential(1)
        } ${e.secondsPerStep.toFixed(2)} s/step`,
        e.secondsLeft,
      );
    }
  };
}
