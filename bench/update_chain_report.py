"""Tables, claim checks and the bytes-vs-WER plot from `bench/results/update_chain.json`.

    python bench/update_chain_report.py [NAME [OTHER ...]]   # prints markdown, writes NAME.png (default update_chain)

OTHER results (chains run with `--config`, in their own cache, on the same base model and setup) join
the tables with their learned chains labelled by that config, e.g. `hybrid+max_frames=2400`. NAME's
own learned chains are labelled by its `--config` too, so chains run with their own full fine-tune
(another synthesis of the update sets) are compared with that one: NAME is then their results file.

Every number comes from the chain's JSON; nothing here trains or decodes.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS  # noqa: E402

METHOD_ORDER = ["full", "sparse", "hybrid", "hashed", "channel", "auto", "topk", "lora"]


def kind(method: str) -> str:
    """The registered method a chain's label names: `hybrid+teacher+max_frames=2400` -> `hybrid`."""
    return method.partition("+")[0]


def method_rank(method: str) -> tuple[int, str]:
    """Table order: by METHOD_ORDER, a `+channels` variant after its method."""
    name, _, suffix = method.partition("+")
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), suffix)


def budget_label(method: str, budget: float) -> str:
    """'all' for the full fine-tune, 'auto' for the automatic budget (budget 0.0), else the share."""
    return {"full": "all", "auto": "auto"}.get(kind(method)) or pct(budget)


def config_label(results: dict) -> str:
    """'+distill=1.0' for chains run with --config '{"distill": 1.0}', '' without --config."""
    config = results.get("config") or {}
    return "+" + ",".join(f"{k}={v}" for k, v in sorted(config.items())) if config else ""


def load(path: Path = RESULTS / "update_chain.json", *others: Path) -> tuple[dict, list[dict]]:
    """The first results file's chains with its baselines (full fine-tune, top-k), and the learned chains of
    the others; every learned chain run with --config is labelled with it."""
    data = json.loads(path.read_text())
    label = config_label(data)
    records = [r if r["method"] in BASELINES else {**r, "method": r["method"] + label} for r in data["records"]]
    for other in others:
        extra = json.loads(other.read_text())
        same = ("model_hash", "epochs", "eval_limit", "replay")
        if [extra.get(k) for k in same] != [data.get(k) for k in same]:
            raise SystemExit(f"{other}: another base model or setup than {path} ({', '.join(same)})")
        their_label = config_label(extra)
        if their_label == label:
            raise SystemExit(f"{other}: its --config does not tell its chains apart from {path}'s")
        records += [{**r, "method": r["method"] + their_label} for r in extra["records"]
                    if r["method"] not in BASELINES]
    return data, sorted(records, key=lambda r: (r["index"], method_rank(r["method"]), r["budget"]))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(data: dict, records: list[dict]) -> str:
    lines = ["| update | method | budget | bytes | of full model | WER update | WER original | WER earlier (mean) | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = data["base_wer"]
    for name in dict.fromkeys(r["update"] for r in records):
        lines.append(f"| {name} | base model | | | | {pct(base[name])} | {pct(base['original'])} | | |")
        for r in (r for r in records if r["update"] == name):
            earlier = list(r["wer_earlier"].values())
            budget = budget_label(r["method"], r["budget"])
            extra = ""
            if r["method"] == "full":
                extra = f" (zstd patch-from {r['zstd_patch_from_bytes']:,} B, bsdiff {r['bsdiff_bytes']:,} B)"
            lines.append(f"| {name} | {r['method']} | {budget} | {r['bytes']:,}{extra} | {pct(r['bytes_vs_full_model'])} | "
                         f"{pct(r['wer_update'])} | {pct(r['wer_original'])} | "
                         f"{pct(sum(earlier) / len(earlier)) if earlier else ''} | {r['train_seconds']} |")
    return "\n".join(lines)


def index(records: list[dict]) -> tuple[dict[tuple[str, float, str], dict], list[str]]:
    """Records by (method, budget, update), and the update names in chain order."""
    return ({(r["method"], r["budget"], r["update"]): r for r in records},
            list(dict.fromkeys(r["update"] for r in records)))


def gaps_to_full(by: dict, method: str, budget: float, updates: list[str]) -> list[float]:
    """Update WER minus the full fine-tune's, for each update both chains reached."""
    return [by[(method, budget, u)]["wer_update"] - by[("full", 1.0, u)]["wer_update"]
            for u in updates if (method, budget, u) in by and ("full", 1.0, u) in by]


def earlier_drift(by: dict, method: str, budget: float, updates: list[str]) -> list[float]:
    """Earlier updates' WER after the chain's last update minus right after they were learned."""
    last = by.get((method, budget, updates[-1]))
    return [last["wer_earlier"][u] - by[(method, budget, u)]["wer_update"]
            for u in (last or {}).get("wer_earlier", {}) if (method, budget, u) in by]


def summary(data: dict, records: list[dict]) -> str:
    """One row per (method, budget) chain: the gap to the full fine-tune on each update, the original
    set after the last update, and how much earlier updates' WER drifted by then."""
    by, updates = index(records)
    lines = [f"| method | budget | bytes (mean) | update WER minus full fine-tune, per update (points) | mean | "
             f"original WER after {len(updates)} updates (base {pct(data['base_wer']['original'])}) | "
             "earlier updates' drift (mean) |", "|---|---|---|---|---|---|---|"]
    chains = sorted({(r["method"], r["budget"]) for r in records}, key=lambda mb: (mb[1], method_rank(mb[0])))
    for method, b in chains:
        rows = [by[(method, b, u)] for u in updates if (method, b, u) in by]
        gaps, drift = gaps_to_full(by, method, b, updates), earlier_drift(by, method, b, updates)
        last = by.get((method, b, updates[-1]))
        lines.append(f"| {method} | {budget_label(method, b)} | "
                     f"{round(sum(r['bytes'] for r in rows) / len(rows)):,} | "
                     f"{', '.join(f'{100 * g:+.1f}' for g in gaps)} | "
                     f"{100 * sum(gaps) / len(gaps):+.1f} | "
                     f"{pct(last['wer_original']) if last else f'({len(rows)} of {len(updates)} updates)'} | "
                     f"{f'{100 * sum(drift) / len(drift):+.1f}' if drift else ''} |")
    return "\n".join(lines)


def claims(records: list[dict]) -> list[str]:
    """Learned diffs against the baselines (top-k, LoRA, generic binary deltas), wall time, forgetting."""
    by, updates = index(records)
    learned = sorted({r["method"] for r in records if kind(r["method"]) not in (*BASELINES, "auto")}, key=method_rank)
    out = []
    for method in learned:
        for other in ("topk", "lora"):
            pairs = [(by[(method, b, u)], by[(other, b, u)]) for (m, b, u) in by if m == method and (other, b, u) in by]
            if pairs:
                wins = sum(mine["wer_update"] < theirs["wer_update"] for mine, theirs in pairs)
                out.append(f"{method} beats {other} at the same budget on update WER in {wins}/{len(pairs)} "
                           "(budget, update) pairs")
    for method in learned:
        ratios = []
        for u in updates:
            full = by.get(("full", 1.0, u))
            if not full:
                continue
            matching = [by[(method, b, u)] for b in sorted({r["budget"] for r in records})
                        if (method, b, u) in by and by[(method, b, u)]["wer_update"] <= full["wer_update"] + 0.01]
            if matching:
                smallest = min(matching, key=lambda r: r["bytes"])
                ratios.append(f"{u} {min(full['zstd_patch_from_bytes'], full['bsdiff_bytes']) / smallest['bytes']:.1f}x "
                              f"(at {pct(smallest['budget'])})")
        if ratios:
            out.append(f"at equal WER (within 1 point of full fine-tune), generic delta (smaller of zstd patch-from "
                       f"and bsdiff) / {method} diff bytes: " + ", ".join(ratios))
        elif any(r["method"] == method for r in records):
            out.append(f"no {method} budget reached full fine-tune WER (+1 point) on any update, so the equal-WER "
                       "size comparison with zstd patch-from / bsdiff has no pair to compare")
    for method in learned:
        times = [by[(method, b, u)]["train_seconds"] / by[("full", 1.0, u)]["train_seconds"]
                 for b in sorted({r["budget"] for r in records}) for u in updates
                 if (method, b, u) in by and ("full", 1.0, u) in by]
        if times:
            out.append(f"{method} diff training wall time / full fine-tune in the chain (processes sharing cores, "
                       f"so noisy): mean {sum(times) / len(times):.2f}x, max {max(times):.2f}x")
    walltime = RESULTS / "diff_walltime.json"
    if walltime.exists():  # the clean, back-to-back measurement
        w = json.loads(walltime.read_text())
        out.append(f"back to back, one thread, {w['epochs']} epochs, model {w['model_hash'][:8]} "
                   f"({w['command']}): "
                   + ", ".join(f"{k} {v}x" for k, v in w["ratio_vs_full"].items())
                   + f" the full fine-tune's {w['seconds']['full']} s (<= 1.5x: "
                   + f"{'met' if max(w['ratio_vs_full'].values()) <= 1.5 else 'NOT met'})")
    # forgetting of earlier updates: their WER after the last update minus right after they were learned
    chains = sorted({(r["method"], r["budget"]) for r in records},
                    key=lambda mb: (method_rank(mb[0]), mb[1]))
    for method, b in chains:
        if drift := earlier_drift(by, method, b, updates):
            name = method if kind(method) in ("full", "auto") else f"{method} {pct(b)}"
            out.append(f"{name} after {len(updates)} updates, earlier updates' WER minus right after learning them: "
                       f"{', '.join(f'{100 * d:+.1f}' for d in drift)} points "
                       f"(mean {100 * sum(drift) / len(drift):+.1f})")
    for b in sorted({r["budget"] for r in records if r["method"] == "hashed"}):
        if drift := gaps_to_full(by, "hashed", b, updates):
            out.append(f"hashed {pct(b)}: update WER minus full fine-tune along the chain "
                       f"{', '.join(f'{100 * d:+.1f}' for d in drift)} points")
    return out


BASELINES = ("full", "topk", "lora")


def budget_claims(records: list[dict]) -> list[str]:
    """Smaller diffs for the same accuracy: per budget, the best learned diff's gaps to the full fine-tune
    against the targets (<= 3%: mean <= +1.0, none over +3.0, original set no worse than the full
    fine-tune's after the chain; <= 1%: mean <= +5.0; real speakers at <= 5% within 3.0), and what
    the automatic budget shipped."""
    by, updates = index(records)
    full_last = by.get(("full", 1.0, updates[-1]))
    out = []
    chains = {(r["method"], r["budget"]) for r in records if kind(r["method"]) not in (*BASELINES, "auto")}
    for limit, mean_target in ((0.01, 0.05), (0.03, 0.01)):
        scored = []
        for method, b in chains:
            gaps = gaps_to_full(by, method, b, updates)
            if b <= limit + 1e-9 and len(gaps) == len(updates):
                scored.append((sum(gaps) / len(gaps), method, b, gaps))
        if not scored:
            continue
        mean, method, b, gaps = min(scored)
        last = by[(method, b, updates[-1])]
        met = mean <= mean_target + 1e-9
        line = (f"best learned diff at <= {pct(limit)} of the bytes: {method} {pct(b)}, mean gap {100 * mean:+.1f} "
                f"(target <= {100 * mean_target:+.1f}: {'met' if met else 'NOT met'})")
        if limit == 0.03:
            worst_ok = max(gaps) <= 0.03 + 1e-9
            orig_ok = full_last is not None and last["wer_original"] <= full_last["wer_original"]
            line += (f", worst {100 * max(gaps):+.1f} (<= +3.0: {'met' if worst_ok else 'NOT met'}), original set "
                     f"{pct(last['wer_original'])} vs full {pct(full_last['wer_original']) if full_last else '?'} "
                     f"({'met' if orig_ok else 'NOT met'})")
        out.append(line)
    real = [(gaps_to_full(by, m, b, ["fsdd_speakers"])[0], m, b) for m, b in chains
            if b <= 0.05 + 1e-9 and gaps_to_full(by, m, b, ["fsdd_speakers"])]
    if real:
        gap, m, b = min(real)
        out.append(f"real speakers at <= 5% of the bytes: best {m} {pct(b)}, {100 * gap:+.1f} points from the full "
                   f"fine-tune (<= +3.0: {'met' if gap <= 0.03 + 1e-9 else 'NOT met'})")
    autos = sorted({r["method"] for r in records if kind(r["method"]) == "auto"})
    for method, u in ((m, u) for m in autos for u in updates):
        r = by.get((method, 0.0, u))
        if r and "ladder" in r:
            rungs = ", ".join(f"{pct(x['budget'])} {x['bytes']:,} B {pct(x['dev_wer'])}" for x in r["ladder"])
            best = min(x["dev_wer"] for x in r["ladder"])
            smallest = next(x for x in r["ladder"] if 100 * (x["dev_wer"] - best) <= r["max_gap"] + 1e-9)
            out.append(f"{method} on {u}: shipped {pct(r['chosen_budget'])} (smallest within the gap: "
                       f"{pct(smallest['budget'])}) from the ladder {rungs}")
    return out


def plot(data: dict, records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    updates = list(dict.fromkeys(r["update"] for r in records))
    fig, axes = plt.subplots(1, len(updates), figsize=(4 * len(updates), 3.6), sharey=False, squeeze=False)
    for ax, u in zip(axes[0], updates):
        curves = defaultdict(list)
        for r in records:
            if r["update"] == u:
                curves[r["method"]].append((r["bytes"], r["wer_update"]))
        for method, points in curves.items():
            points.sort()
            marker = "*" if method == "full" else "o"
            ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker=marker, label=method)
        full = next((r for r in records if r["update"] == u and r["method"] == "full"), None)
        if full:
            for key, marker in (("zstd_patch_from_bytes", "s"), ("bsdiff_bytes", "^")):
                ax.plot([full[key]], [100 * full["wer_update"]], marker=marker, linestyle="", label=key.split("_bytes")[0])
        ax.axhline(100 * data["base_wer"][u], color="grey", linestyle=":", label="no update")
        ax.set_xscale("log")
        ax.set_title(u)
        ax.set_xlabel("bytes shipped")
        ax.set_ylabel("WER on the update's test set (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    name, *others = sys.argv[1:] or ["update_chain"]  # e.g. archive/update_chain_stage4 for an earlier chain
    data, records = load(RESULTS / f"{name}.json", *(RESULTS / f"{o}.json" for o in others))
    print(summary(data, records))
    print()
    print(table(data, records))
    print()
    for line in claims(records) + budget_claims(records):
        print("-", line)
    plot(data, records, RESULTS / f"{name}.png")
    print(f"\nplot: {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
