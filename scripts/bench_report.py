"""Turn `make bench` results into a Markdown report and a latency-throughput plot."""

from __future__ import annotations


def _run(report, size, handler, concurrency):
    return next(
        r for r in report["runs"] if (r["size"], r["handler"], r["concurrency"]) == (size, handler, concurrency)
    )


def _best(report, size, handler):
    return max(r["throughput"] for r in report["runs"] if (r["size"], r["handler"]) == (size, handler))


def _ran(report, handler) -> bool:
    return any(r["handler"] == handler for r in report["runs"])


def _env(env: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in env.items()) or "libgomp's defaults"


def targets(report) -> list[tuple[str, float, str, bool]]:
    """(what, measured ratio, target, met) for each speed target."""
    alone = report["model_alone_img_s"]
    conc = 8 if any(r["concurrency"] == 8 for r in report["runs"]) else max(r["concurrency"] for r in report["runs"])
    out = []
    big = _best(report, "12MP", "ours") / _best(report, "12MP", "stock")
    out.append(("12 MP JPEGs: throughput vs stock handler", big, ">= 12x", big >= 12))
    small = _best(report, "500x375", "ours") / _best(report, "500x375", "stock")
    out.append(("500x375 JPEGs: throughput vs stock handler", small, ">= 6x", small >= 6))
    served = next((v for k, v in alone.items() if k.startswith("engine as served")), None)
    best_alone = _fastest_verified_alone(report)
    if served and best_alone:
        name, img_s = best_alone
        out.append((f"engine as served vs the fastest verified runtime alone ({name})", served / img_s, ">= 0.9x",
                    served / img_s >= 0.9))  # fmt: skip
    eager = [v for k, v in alone.items() if k.startswith("eager")]
    if eager:  # the model as the stock handler runs it, at its best format and batch
        vs_eager = _best(report, "500x375", "ours") / max(eager)
        out.append(("500x375 JPEGs served vs the eager model alone (best memory format and batch)", vs_eager,
                    ">= 0.75x", vs_eager >= 0.75))  # fmt: skip
    if served:
        vs_served = _best(report, "500x375", "ours") / served
        out.append(("500x375 JPEGs served vs the engine as served, alone", vs_served, ">= 0.75x", vs_served >= 0.75))
    for size in ("500x375", "12MP"):
        p99 = _run(report, size, "ours", conc)["p99_ms"] / _run(report, size, "stock", conc)["p99_ms"]
        out.append((f"{size}: p99 latency at {conc} clients vs stock", p99, "<= 0.5x", p99 <= 0.5))
    return out


def comparison_targets(report) -> list[tuple[str, float, str, bool]]:
    rows = {r["form"]: r["throughput"] for r in report.get("comparisons", [])}
    out = []
    if "ours" in rows and "shadow10" in rows:
        ratio = rows["shadow10"] / rows["ours"]
        out.append(
            ("shadow of 10% of batches vs the primary alone (500x375, 8 clients)", ratio, ">= 0.9x", ratio >= 0.9)
        )
    cost = report.get("monitoring_cost")
    if cost:
        out.append((f"monitoring per batch of {cost['batch']} vs the engine's time for it ({cost['monitoring_ms']} ms "
                    f"against {cost['engine_ms']} ms)", cost["share_of_engine"], "<= 0.01x",
                    cost["share_of_engine"] <= 0.01))  # fmt: skip
    if "ours" in rows and "no_monitoring" in rows:
        ratio = rows["ours"] / rows["no_monitoring"]
        out.append(("with monitoring vs without (500x375, 8 clients)", ratio, ">= 0.99x", ratio >= 0.99))
    return out


def _fastest_verified_alone(report) -> tuple[str, float] | None:
    """The fastest row of a runtime called directly (or the eager model) whose backend and
    precision passed the served engine's verification."""
    verified = {
        label for label, c in report.get("engine_selection", {}).get("candidates", {}).items() if c.get("verified")
    }
    rows = {}
    for name, img_s in report["model_alone_img_s"].items():
        if name.startswith("eager"):
            label = "torch/float32"
        elif " alone " in name:
            runtime, _, precision = name.split()[:3]
            label = f"{runtime}/{ {'f32': 'float32', 'bf16': 'bfloat16'}.get(precision, precision) }"
        else:
            continue
        if label in verified or not verified:
            rows[name] = img_s
    return max(rows.items(), key=lambda item: item[1]) if rows else None


FORM_GOALS = {"oip_json": 0.8, "oip_binary": 0.9, "base64_json": 0.8}


def form_targets(report) -> list[tuple[str, float, str, bool]]:
    """Each request form's throughput against the raw body's, 12 MP photos, measured side by side."""
    forms = {r["form"]: r for r in report.get("forms", [])}
    if "raw" not in forms:
        return []
    raw = forms["raw"]["throughput"]
    return [
        (
            f"12 MP as {name} vs raw body, {r['concurrency']} clients",
            r["throughput"] / raw,
            f">= {goal}x",
            r["throughput"] / raw >= goal,
        )
        for name, goal in FORM_GOALS.items()
        if (r := forms.get(name))
    ]


def markdown(report) -> str:
    h, s = report["host"], report["settings"]
    lines = [
        "# Benchmark results",
        "",
        f"Host: {h['cpu']}, {h['cores']} cores, torch {h['torch']} ({h['torch_threads']} threads). "
        f"OpenMP: the model alone with {_env(h.get('omp_env', {}))}, TorchServe's workers with "
        f"{_env(s.get('server_env', {}))}. "
        f"One TorchServe, both archives with the same weights, batchSize {s['batchSize']}, "
        f"maxBatchDelay {s['maxBatchDelay']} ms, {s['workers']} worker each; wrk, {s['duration_s']} s per run. "
        + (
            f"ours_scaled: this handler again, {s['scaled_workers']} workers x {s['scaled_threads']} torch threads "
            f"(`make serve CPU_WORKERS={s['scaled_workers']} CPU_THREADS={s['scaled_threads']}`), "
            "compared only with the model alone. "
            if _ran(report, "ours_scaled")
            else ""
        )
        + "".join(f"{name}: this handler again with {', '.join(o)}. " for name, o in s.get("variants", {}).items())
        + f"Every figure is the median over {s.get('rounds', 1)} rounds; each round times the model alone, then "
        f"every load run, so a slow spell on a shared host touches all of them.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    try:
        for what, ratio, goal, met in targets(report):
            lines.append(f"| {what} | {ratio:.3f}x | {goal} | {'yes' if met else 'NO'} |")
        restart = report.get("worker_restart")
        if restart:  # a worker killed: seconds to a new one READY, best of the kills
            ready = restart["kill_to_ready_s"]
            lines.append(
                f"| worker restart: kill to READY, default model (best of {len(restart['kills'])}) | "
                f"{ready:.1f} s | <= 8 s | {'yes' if ready <= 8 else 'NO'} |"
            )
    except (StopIteration, ValueError):  # a partial run (--sizes/--handlers): no ratios
        lines.append("| (partial run: targets need both handlers and both sizes) | | | |")
    for what, ratio, goal, met in form_targets(report) + comparison_targets(report):
        lines.append(f"| {what} | {ratio:.3f}x | {goal} | {'yes' if met else 'NO'} |")
    lines += [
        "",
        "## Load runs",
        "",
        "| images | handler | clients | req/s | p50 ms | p90 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['size']} | {r['handler']} | {r['concurrency']} | {r['throughput']:.1f} | "
            f"{r['p50_ms']:.0f} | {r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |"
        )
    if report.get("forms"):
        lines += [
            "",
            "## Request forms (12 MP photos, this handler)",
            "",
            "| form | clients | req/s | vs raw | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        raw = next((r["throughput"] for r in report["forms"] if r["form"] == "raw"), None)
        for r in report["forms"]:
            ratio = f"{r['throughput'] / raw:.2f}x" if raw else ""
            lines.append(
                f"| {r['form']} | {r['concurrency']} | {r['throughput']:.1f} | {ratio} | {r['p50_ms']:.0f} | "
                f"{r['p99_ms']:.0f} | {r['errors']} |"
            )
    if report.get("comparisons"):
        lines += ["", "## Monitoring and experiments (500x375 photos, 8 clients, side by side)", "",
                  "| this handler as | req/s | vs as served | p50 ms | p99 ms | errors | worker RSS after |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        base = next((r["throughput"] for r in report["comparisons"] if r["form"] == "ours"), None)
        rss = report.get("worker_rss_mib", {})
        for r in report["comparisons"]:
            ratio = f"{r['throughput'] / base:.3f}x" if base else ""
            memory = f"{rss[r['form']]:,} MiB" if r["form"] in rss else ""
            lines.append(f"| {r['form']} | {r['throughput']:.1f} | {ratio} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                         f"{r['errors']} | {memory} |")  # fmt: skip
    lines += [
        "",
        "## Model alone (no decoding, no server)",
        "",
        "| runs the network (batch) | img/s |",
        "| --- | --- |",
    ]
    for k, v in report["model_alone_img_s"].items():
        lines.append(f"| {k} | {v:.1f} |")
    rows = report["agreement"]
    same = sum(r["same_top1"] for r in rows)
    shift = max(abs(r["prob_shift"]) for r in rows)
    lines += [
        "",
        "## Top-1 agreement with the float32 reference pipeline (full decode)",
        "",
        f"{same}/{len(rows)} images have the same top-1 as served (the default pixel path, the engine as "
        f"served: {report.get('engine_selection', {}).get('chosen', '?')}); the largest "
        f"change of the top-1 probability is {shift:.3f}.",
        "",
        "| images | photo | reference top-1 | served top-1 | probability shift |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['photo']} | {r['reference']} | {r['served']} | {r['prob_shift']:+.3f} |")
    if report.get("precision"):
        from bench_precision import markdown as precision_markdown
        from bench_precision import pixel_markdown

        lines += ["", "## Precision: speed alone and agreement with the float32 answers", ""]
        lines.append(precision_markdown(report["precision"], "256 crops of the bench's photos"))
        lines += ["## Pixel paths: decode, resize and crop, one thread", "", pixel_markdown(report["pixel_paths"])]
    return "\n".join(lines) + "\n"


def plot(report, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, size in zip(axes, ("500x375", "12MP")):
        for handler, style in (("ours", "o-"), ("stock", "s--"), ("ours_scaled", "^:")):
            runs = sorted(
                (r for r in report["runs"] if (r["size"], r["handler"]) == (size, handler)),
                key=lambda r: r["concurrency"],
            )
            if not runs:
                continue
            ax.plot([r["throughput"] for r in runs], [r["p99_ms"] for r in runs], style, label=f"{handler} p99")
            ax.plot(
                [r["throughput"] for r in runs], [r["p50_ms"] for r in runs], style, alpha=0.4, label=f"{handler} p50"
            )
            for r in runs:
                ax.annotate(f"c={r['concurrency']}", (r["throughput"], r["p99_ms"]), fontsize=7)
        ax.set_title(f"{size} JPEGs")
        ax.set_xlabel("throughput (req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
