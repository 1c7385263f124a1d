"""Builds deploy/device/run.sh's summary.json from what the run recorded so far.

    python3 deploy/device/summary.py WORK_DIR > "$OUT/summary.json"

WORK_DIR holds facts.tsv (key<TAB>value lines: what the machine has) and steps.tsv (one line per
step: name, status, exit code, seconds, path of its JSON or "-", note). Each step's JSON (one
object, or one object a line for .jsonl) is read back and embedded whole, and "highlights" pulls
out the figures worth reading first. Only the standard library is used; run.sh calls this after
every step, so a run cut short still leaves a summary of what finished.
"""

import json
import os
import sys


def read_tsv(path, fields):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < fields:
                parts += [""] * (fields - len(parts))
            rows.append(parts[:fields - 1] + ["\t".join(parts[fields - 1:])])
    return rows


def read_json(path):
    if not path or path == "-" or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        out = []
        for line in text.splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"unparsed": line[:500]})
        return out
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsed": text[:500]}


def bench_highlight(name, r):
    if not isinstance(r, dict) or "train_step_ms" not in r:
        return None
    peer = r.get("peer") or {}
    case = r.get("case") or {}
    return {
        "step": name,
        "backend": r.get("backend"),
        "device": r.get("device"),
        "crop": r.get("crop"),
        "train_step_ms": r.get("train_step_ms"),
        "infer_ms": r.get("infer_ms"),
        "case_seconds": r.get("case_seconds"),
        "case_measured": case.get("measured"),
        "case_windows": case.get("windows"),
        "sizes": [[s.get("dims"), s.get("seconds")] for s in case.get("sizes", [])],
        "peer_device": peer.get("device"),
        "peer_train_step_ms": peer.get("train_step_ms"),
        "peer_infer_ms": peer.get("infer_ms"),
        "peer_reason": r.get("peer_reason"),
        "ratio_ours_over_peer": r.get("ratio"),
    }


def peer_highlights(name, rows):
    out = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict):
            continue
        if "grad_rel_err" in r:
            out.append({"step": name, "check": True, "device": r.get("device"),
                        "torch": r.get("torch"), "param_count": r.get("param_count"),
                        "grad_rel_err": r.get("grad_rel_err")})
        elif "train_step_ms" in r:
            out.append({"step": name, "device": r.get("device"), "torch": r.get("torch"),
                        "crop": r.get("crop"), "train_step_ms": r.get("train_step_ms"),
                        "infer_ms": r.get("infer_ms")})
        else:
            out.append({"step": name, **r})
    return out


def main():
    work = sys.argv[1]
    facts = {k: v for k, v in read_tsv(os.path.join(work, "facts.tsv"), 2)}
    steps = []
    highlights = []
    for name, status, rc, seconds, path, note in read_tsv(os.path.join(work, "steps.tsv"), 6):
        result = read_json(path)
        try:
            secs = float(seconds)
        except ValueError:
            secs = None
        steps.append({
            "name": name,
            "status": status,
            "exit_code": int(rc) if rc.lstrip("-").isdigit() else None,
            "seconds": secs,
            "note": note or None,
            "result": result,
        })
        h = bench_highlight(name, result)
        if h:
            highlights.append(h)
        elif isinstance(result, dict) and isinstance(result.get("kernels"), list):
            highlights.append({
                "step": name,
                "device": result.get("device"),
                "crop": result.get("crop"),
                "kernels_ms": [[k.get("kernel"), k.get("shape"), k.get("ms"), k.get("ms_baseline")]
                               for k in result["kernels"] if isinstance(k, dict)],
            })
        elif isinstance(result, list):
            highlights.extend(peer_highlights(name, result))
        elif isinstance(result, dict) and name == "probe":
            a = result.get("adapter") or {}
            p = result.get("project") or {}
            highlights.append({
                "step": name,
                "adapter": {k: a.get(k) for k in ("ok", "why", "description", "vendor",
                                                  "architecture", "fallback") if k in a},
                "max_storage_binding": (a.get("limits") or {}).get("maxStorageBufferBindingSize"),
                "project": {k: p.get(k) for k in ("ok", "why", "device") if k in p},
                "op_check": (p.get("check") or {}).get("ok"),
            })
    json.dump({"facts": facts, "highlights": highlights, "steps": steps}, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
