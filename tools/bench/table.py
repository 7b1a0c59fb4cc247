"""The printed table (reports/bench.md): a headline line, then (part, measure, this project,
seed notebook, ratio) rows built from the results that bench.json holds."""

from typing import Any

Row = tuple[str, ...]


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value} {unit}".strip()


def table_rows(r: dict[str, Any]) -> list[Row]:
    """(part, measure, this project, seed notebook, ratio) for every headline figure."""
    return [*stage_rows(r.get("data_stages", {})), *input_rows(r["input_path"]),
            *augment_rows(r["augment"]), *step_rows(r["train_step"]),
            *cpu_rows(r.get("cpu_settings")),
            *eval_rows(r["evaluation"]), *prefect_rows(r.get("prefect")),
            *cache_rows(r.get("dvc_cache"))]


def stage_rows(stages: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, e in stages.items():
        if "skipped" in e:
            rows.append(("data", name, "skipped: " + e["skipped"], "", ""))
            continue
        rate = next(((k, v) for k, v in e.items() if k.endswith("_per_s")), None)
        parts = [fmt(rate[1], rate[0].replace("_per_s", "/s"))] if rate else []
        parts.append(fmt(e["seconds"], "s"))
        if "peak_rss_mib" in e:
            parts.append(f"peak RSS {fmt(e['peak_rss_mib'], 'MiB')}")
        target = f" ({e['targets']})" if "targets" in e else ""
        rows.append(("data", name + target, ", ".join(parts), "", ""))
    return rows


def entries(section: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (key, entry) of a section's measured entries (its dict values)."""
    return [(key, e) for key, e in section.items() if isinstance(e, dict)]


def input_rows(i: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, e in entries(i):
        rows += [
            ("input path", f"pairs/s, batch {i['batch']}: project {key} (setup "
             f"{fmt(e['setup_s'], 's')}), seed at {i['seed_image_size']}",
             fmt(e["pairs_per_s"]), fmt(i["seed_pairs_per_s"]), fmt(e["speedup"], "x")),
            ("input path", f"one training run's {i['run_pairs']:,} pairs {key}, setup included",
             "", "", fmt(e["speedup_one_run_with_setup"], "x")),
        ]
    return rows


def augment_rows(augment: dict[str, Any]) -> list[Row]:
    return [("augment", f"distort alone, pairs/s {key.split(' ', 1)[1]}", fmt(value), "", "")
            for key, value in augment.items() if key.startswith("pairs_per_s")]


def step_rows(steps: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [
        ("train step", f"{key}, batch {e['batch']}, {steps['threads']} threads, pairs/s "
         f"({fmt(e['gflop_per_s'], 'GFLOP/s')})", fmt(e["pairs_per_s"]),
         fmt(e["seed_pairs_per_s"]), fmt(e["speedup"], "x"))
        for key, e in entries(steps) if key != "profile"]
    pr = steps["profile"]
    rows.append(("train step", f"the profile's own step: {pr['arch']} at {pr['image_size']}, "
                 f"{pr['objective']}, {pr['images_per_step']} images/step, images/s",
                 fmt(pr["images_per_s"]), "", ""))
    return rows


def cpu_rows(c: dict[str, Any] | None) -> list[Row]:
    """The profile's step per CPU setting; the ratio column against `native, default`, the
    setting before the project chose its own."""
    if not c:
        return []
    before = c["native, default allocator"]["steps_per_s"]
    rows: list[Row] = [("cpu settings", f"train.cpu_paths {key}: steps/s (system "
             f"{e['system_share']:.0%} of CPU time, {e['step_fraction_of_peak']:.0%} of the "
             f"{e['matmul_peak_gflop_per_s']:.0f} GFLOP/s fp32 peak), weights "
             f"{e['weights_sha256'][:12]}", fmt(e["steps_per_s"]), "",
             fmt(round(e["steps_per_s"] / before, 2), "x"))
            for key, e in entries(c)]
    rows.append(("cpu settings", "avx2 over native, both with the tuned allocator", "", "",
                 fmt(c["avx2_over_native"], "x")))
    return rows


def eval_rows(ev: dict[str, Any]) -> list[Row]:
    """Two rows a trial set: trials per second, then network passes per trial."""
    pairs = [(("evaluation", f"{key} trials/s (same predictions: {e['same_predictions']})",
               fmt(e["trials_per_s"]), fmt(e["seed_trials_per_s"]), fmt(e["speedup"], "x")),
              ("evaluation", f"{key} network passes per trial", fmt(e["passes_per_trial"]),
               fmt(e["seed_passes_per_trial"]), ""))
             for key, e in entries(ev)]
    return [row for pair in pairs for row in pair]


def prefect_rows(p: dict[str, Any] | None) -> list[Row]:
    if not p:
        return []
    if "skipped" in p:
        return [("prefect", "cached flow", "skipped: " + p["skipped"], "", "")]
    both = f"{fmt(p['cached_flow_s'], 's')} vs {fmt(p['dvc_repro_noop_s'], 's')}"
    return [
        ("prefect", f"cached `siamese run` vs no-op `dvc repro` ({p['stages']} stages)", both,
         "", ""),
        ("prefect", "empty flow run (Prefect's own start)", fmt(p["prefect_empty_flow_s"], "s"),
         "", ""),
        ("prefect", "overhead per stage over Prefect's own start",
         fmt(p["overhead_per_stage_s"], "s"), "", ""),
        ("prefect", "cached `siamese run` / no-op `dvc repro`", fmt(p["flow_over_dvc_noop"], "x"),
         "", ""),
    ]


def cache_rows(c: dict[str, Any] | None) -> list[Row]:
    if c is None:
        return []
    return [("dvc", "DVC cache", f"{c['files']:,} files, {fmt(c['mib'], 'MiB')}", "", "")]


def headline(r: dict[str, Any]) -> str:
    """Where and how it was measured: a busy machine (other work on its cores) makes the
    multi-threaded paths wait for descheduled threads, so say so next to the figures."""
    m = r["machine"]
    busy = max(m["load_average_at_start"], m["load_average_at_end"]) > 0.5 * (m["cpus"] or 1)
    return (f"siamese bench: {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch "
            f"{m['torch']}; load average {m['load_average_at_start']:.1f} -> "
            f"{m['load_average_at_end']:.1f}{' (a busy machine: noisy figures)' if busy else ''}"
            f"; {r['seconds']} s. input_path_speedup {r['input_path_speedup']}, "
            f"eval_speedup {r['eval_speedup']}.\n")


def markdown(rows: list[Row]) -> str:
    header = ("part", "measure", "this project", "seed notebook", "ratio")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
