"""`siamese`: one sub-command per pipeline stage (what dvc.yaml calls), plus the tools around it.

Each sub-command imports its module only when it runs, so `siamese --help` stays fast and the
training and evaluation code runs where prefect and dvc are not installed. The commands that
compute weights or scores first set this process's CPU code paths (params.yaml's
train.cpu_paths) and allocator, before torch loads (siamese/cpu.py); the commands that only
start others (run, serve, sweep) leave the environment as they found it.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

from flows.guard import WAIT_S
from siamese import paths
from siamese.errors import PipelineError

STAGES = {
    "params": "check every section of params.yaml (the first stage: a typo stops dvc repro "
              "before any output is removed)",
    "fetch": "download or copy the Omniglot zips, verify their checksums, unpack them",
    "index": "index the images into Parquet manifests and pack their pixels",
    "split": "assign each image a role: train, valid, holdout or test",
    "audit": "find duplicate images across roles (leaks); reports/audit.md",
    "pairs": "sample same/different pairs for training and verification",
    "trials": "sample n-way one-shot trials, and map Lake's 20 runs",
    "train": "train the twin network",
    "evaluate": "n-way one-shot accuracy, verification accuracy, report and pictures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siamese", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in STAGES.items():
        stage = commands.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("--params", type=Path, default=paths.PARAMS, help="parameter file")
        if name == "train":
            stage.add_argument("--device", help="override train.device (cpu, cuda, cuda:1, ...)")

    classify = commands.add_parser("classify", help="classify your own character images")
    classify.add_argument("--model", type=Path, default=paths.MODEL,
                          help="trained checkpoint, or its ONNX export (.onnx)")
    classify.add_argument(
        "--support", type=Path, nargs="+", required=True, help="one image per class"
    )
    classify.add_argument("--query", type=Path, nargs="+", required=True, help="images to classify")
    classify.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")

    glyphs = commands.add_parser("glyphs", help="render a data set of your own kind from the "
                                 "system's fonts: GROUP/CLASS/IMAGE, scripts, characters, fonts")
    glyphs.add_argument("out", type=Path, help="the folder to write (dataset.source)")
    glyphs.add_argument("--fonts", type=int, default=8, help="fonts (images) per character")
    glyphs.add_argument("--classes", type=int, default=10, help="characters per script")

    export = commands.add_parser("export", help="the trained network as ONNX, to score "
                                 "without PyTorch (the onnx extra)")
    export.add_argument("--model", type=Path, default=paths.MODEL, help="trained checkpoint")
    export.add_argument("--out", type=Path, default=Path("models/model.onnx"),
                        help="where the ONNX model goes")

    lineage = commands.add_parser("lineage", help="audit where a metric, model or image came "
                                  "from, what changed between revisions, the flow runs")
    lineage.add_argument("target", nargs="?",
                         help="reports/metrics.json, a model path, or an image (id or path)")
    lineage.add_argument("--reverse", action="store_true",
                         help="for an image: the artifacts and stages that depend on it")
    lineage.add_argument("--diff", nargs=2, metavar=("A", "B"),
                         help="what changed from A to B (git revisions or DVC experiments)")
    lineage.add_argument("--runs", action="store_true", help="the flow runs of the Prefect server")
    lineage.add_argument("--since", help="with --runs: only runs started since this date/time")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")

    run = commands.add_parser("run", help="run the pipeline as a Prefect flow (one task per stage)")
    run.add_argument("--force", action="store_true", help="rerun every stage even if unchanged")
    run.add_argument("--stage-timeout", type=float, default=0, metavar="SECONDS",
                     help="kill a stage that runs longer, and fail the run saying so (0: none)")
    run.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                     help="the whole run's limit: the stage running when it is up is killed, "
                     "and the run fails saying so (0: none)")
    run.add_argument("--push", action="store_true",
                     help="at the end, push the outputs and run cache to the default DVC remote")
    run.add_argument("--wait", type=float, default=WAIT_S, metavar="SECONDS",
                     help="while another run holds this checkout, wait at most this long "
                     f"(default {WAIT_S:.0f})")
    commands.add_parser("pull", help="restore the outputs of dvc.lock from the default DVC remote")
    verify = commands.add_parser("verify", help="re-hash every output of dvc.lock in the "
                                 "workspace and DVC's cache; repair each corrupt copy")
    verify.add_argument("--remote", action="store_true",
                        help="the default DVC remote's copies too")
    commands.add_parser("push", help="push the outputs and run cache to the default DVC remote")

    serve = commands.add_parser("serve", help="serve the pipeline flow on a Prefect schedule")
    when = serve.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *"')
    when.add_argument("--interval", type=float, help="seconds between runs")
    serve.add_argument("--name", default="omniglot-scheduled", help="deployment name")

    sweep = commands.add_parser(
        "sweep", help="run a grid of parameter overrides as DVC experiments, here or on the "
        "workers of a Prefect work pool"
    )
    sweep.add_argument(
        "--set",
        dest="grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a parameter and its values, e.g. train.lr=0.001,0.002 (repeatable; DVC expands "
        "the grid and refuses a key params.yaml lacks)",
    )
    sweep.add_argument("--jobs", type=int, default=1, help="experiments run at once")
    sweep.add_argument("--show-test", action="store_true",
                       help="also show the test trial sets' columns (evaluation, lake); the "
                       "table is ranked by holdout accuracy either way")
    sweep.add_argument("--pool", help="send each point as a flow run to this Prefect work pool "
                       "(its workers run and push them) instead of running them here")
    sweep.add_argument("--name", default="", help="with --pool: the sweep's name "
                       "(default sweep-DATE-TIME)")
    sweep.add_argument("--collect", metavar="NAME", help="pull the experiments of the sweep "
                       "over workers NAME and rank them")
    sweep.add_argument("--git-remote", default="origin",
                       help="with --pool or --collect: the git remote experiments travel through")

    commands.add_parser("readme", help="rewrite the README's generated blocks (results, "
                        "frontier, seeds, long) from reports/, dvc.lock and docs/")
    frontier = commands.add_parser(
        "frontier", help="holdout accuracy against CPU-minutes of this repository's DVC "
        "experiments: docs/frontier/ (points.csv, holdout.png, table.md)")
    frontier.add_argument("--times", type=Path, required=True,
                          help="TSV of experiment name and CPU seconds, one run a line")
    frontier.add_argument("--repo", type=Path, default=Path("."), help="the DVC repository")
    frontier.add_argument("--out", type=Path, default=Path("docs/frontier"),
                          help="where points.csv, holdout.png and table.md go")

    bench = commands.add_parser(
        "bench", help="measure the speed of every stage; writes reports/bench.json"
    )
    bench.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    bench.add_argument("--determinism", action="store_true",
                       help="only the determinism probe: train a few steps of params.yaml's "
                       "profile, print the weights' and scores' sha256 with the CPU and settings")
    bench.add_argument("--steps", type=int, help="with --determinism: steps (default 10)")
    bench.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                       help="with --determinism: override a train parameter (repeatable; "
                            "with --emulate, of the small profile)")
    bench.add_argument("--emulate", action="store_true",
                       help="with --determinism: a small profile's first steps on this CPU, "
                            "on it capped at AVX2, and under qemu-user as an AMD and an Intel "
                            "CPU, compared row by row")
    bench.add_argument("--json", action="store_true", help="with --determinism: as JSON")
    return parser


def prepare_process(params_file: Path) -> str:
    """The CPU code paths of params_file's train.cpu_paths (the default where the file or the
    key is missing: the stages report a bad value themselves) and the tuned allocator; returns
    that choice. Called in-process (a test, a notebook) after torch has loaded, it pins
    nothing."""
    from siamese import cpu

    choice = cpu.DEFAULT
    if params_file.is_file():
        from siamese.config import load_params

        train = load_params(params_file).get("train")
        if isinstance(train, dict) and train.get("cpu_paths") in cpu.PATHS:
            choice = train["cpu_paths"]
    cpu.tune_allocator()
    if not {"torch", "numpy"} & set(sys.modules):  # else the libraries have read their
        cpu.pin_paths(choice)  # settings: pinning now would act only in child processes
    return choice


def dispatch(args: argparse.Namespace) -> None:
    if args.command == "bench" and not args.determinism and (
            args.emulate or args.json or args.train or args.steps):
        raise PipelineError("bench: --emulate, --json, --train and --steps go with "
                            "--determinism")
    cpu_paths = None
    if args.command in (*STAGES, "classify", "bench"):
        cpu_paths = prepare_process(getattr(args, "params", paths.PARAMS))
    if args.command in STAGES:
        from siamese.config import load_params

        params = load_params(args.params)
        module = importlib.import_module(f"tasks.{args.command}")
        if args.command == "train":
            module.run(params, device=args.device)
        else:
            module.run(params)
    elif args.command == "classify":
        from tools.classify import run as classify_images

        classify_images(args.model, args.support, args.query, device=args.device, out=sys.stdout)
    elif args.command == "glyphs":
        from tools.glyphs import render

        count = render(args.out, args.fonts, args.classes)
        print(f"glyphs: {count} images in {args.out}")
    elif args.command == "export":
        from tools.export import run as export_onnx

        export_onnx(args.model, args.out)
    elif args.command == "lineage":
        lineage(args)
    elif args.command == "verify":
        from flows.verify import run as verify_outputs

        verify_outputs(with_remote=args.remote)
    elif args.command == "run":
        from flows.pipeline import run_pipeline

        run_pipeline(force=args.force, push=args.push, stage_timeout_s=args.stage_timeout,
                     timeout_s=args.timeout, wait_s=args.wait)
    elif args.command in ("pull", "push"):
        from flows import remote

        getattr(remote, args.command)()
    elif args.command == "serve":
        from flows.pipeline import serve_pipeline

        serve_pipeline(cron=args.cron, interval=args.interval, name=args.name)
    elif args.command == "sweep":
        sweep(args)
    elif args.command == "readme":
        from tools.readme import run as write_readme

        write_readme()
    elif args.command == "frontier":
        from tools.frontier import run as write_frontier

        print(write_frontier(args.times, args.repo, args.out), end="")
    elif args.command == "bench" and args.determinism and args.emulate:
        from siamese.cpu import DEFAULT
        from tools.bench.probe import EMULATION_STEPS, emulated_probes, format_emulated

        rows = emulated_probes(cpu_paths or DEFAULT, args.steps or EMULATION_STEPS,
                              overrides(args.train))
        print(json.dumps(rows) if args.json else format_emulated(rows))
    elif args.command == "bench" and args.determinism:
        from tools.bench.probe import PROBE_STEPS, format_probe, run_probe

        result = run_probe(args.steps or PROBE_STEPS, train=overrides(args.train))
        print(json.dumps(result) if args.json else format_probe(result))
    elif args.command == "bench":
        from tools.bench.suite import run as run_bench

        run_bench(quick=args.quick)


def overrides(pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs, each value read as YAML (2 is a number, koch a string)."""
    import yaml

    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PipelineError(f"--train {pair!r}: expected KEY=VALUE, e.g. rotations=1")
        found[key] = yaml.safe_load(value)
    return found


def sweep(args: argparse.Namespace) -> None:
    """`siamese sweep`: --set ... here, --pool POOL --set ... on workers, or --collect NAME."""
    if args.collect and (args.grid or args.pool or args.name):
        raise PipelineError("sweep: --collect NAME goes alone (with --show-test, --git-remote)")
    if args.name and not args.pool:
        raise PipelineError("sweep: --name goes with --pool")
    if args.collect:
        from flows.poolsweep import collect_sweep

        collect_sweep(args.collect, git_remote=args.git_remote, show_test=args.show_test)
    elif args.pool:
        from flows.poolsweep import dispatch_sweep

        dispatch_sweep(args.grid, args.pool, name=args.name, git_remote=args.git_remote)
    else:
        from flows.sweep import run_sweep

        run_sweep(args.grid, jobs=args.jobs, show_test=args.show_test)


def lineage(args: argparse.Namespace) -> None:
    """`siamese lineage`: one of TARGET, TARGET --reverse, --diff A B, --runs."""
    modes = [args.target is not None, args.diff is not None, args.runs]
    if sum(modes) != 1:
        raise PipelineError("lineage: give one of TARGET, --diff A B or --runs")
    if args.reverse and args.target is None or args.since and not args.runs:
        raise PipelineError("lineage: --reverse goes with an image, --since with --runs")
    if args.diff:
        from tools.revisions import run as lineage_diff
        a, b = args.diff
        lineage_diff(a, b, as_json=args.json, out=sys.stdout)
    elif args.runs:
        from tools.runs import run as lineage_runs
        lineage_runs(since=args.since, as_json=args.json, out=sys.stdout)
    elif args.reverse:
        from tools.reverse import run as lineage_reverse
        lineage_reverse(args.target, as_json=args.json, out=sys.stdout)
    else:
        from tools.lineage import run as lineage_of
        lineage_of(args.target, as_json=args.json, out=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command in STAGES:  # a stage's own process, not a caller's
        from siamese.processes import die_with_dvc

        die_with_dvc()  # first thing: kill -9 of `dvc repro` leaves no stage running
    try:
        dispatch(args)
    except PipelineError as e:
        print(f"siamese {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"siamese {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
