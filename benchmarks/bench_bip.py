"""Source-class selection (dataonomy.bip): solve time for k = 100, 250, 500 of 1000, coverage and diversity on.

Inputs: the 1000 ImageNet-1k classes (``dataonomy.wordnet.imagenet_classes()``); diversity groups are the real
WordNet nodes at ``--diversity-depth`` (``dataonomy.selection.diversity_groups``) with at most
``--diversity-max`` selected classes per node (default ``ceil(--diversity-fraction * k)``); coverage asks every
target class to be served by ``--coverage`` selected sources above the default floor (1/S). The affinity is
AHP-like: each target's row is a seeded Dirichlet(``--alpha``) draw over the S sources (non-negative, summing to
1, like AHP priorities).

Timed per k: ``solve_selection(problem)`` as ``dataonomy select`` calls it (feasibility pre-checks, building
the PuLP model, CBC, reading the answer, greedy comparison), with the solver's own ``solve_time`` (build and
solve) reported beside it; and the greedy top-k answer with its constraint check. Also reported: status, gap,
objectives (greedy / BIP) and which constraint families greedy violates.

ImageNet-21k scale (``--scale-*``, off with ``--scale-targets ''``): ``--scale-sources`` synthetic source
classes (19,000), ``--scale-targets`` targets (10 and 100), k = ``--scale-k`` (5000), coverage ``--coverage``
above 1/S, ``--scale-groups`` random groups (a partition, 200) capped at ``--scale-cap`` (33). Both
formulations side by side in each round: ``y`` (``solve_selection``'s default, S variables) and ``xy``
(METHOD.md's serve variables, S (T + 1) variables); ``xy`` is skipped where it would have more than
``--xy-max-variables`` variables (the table says so), since PuLP holds each variable as a Python object. Each
scale solve runs in a child process killed after ``--deadline`` seconds (reported as such): CBC checks
``--time-limit`` only between phases and can overrun it inside the root LP of a large model.

    python benchmarks/bench_bip.py
    python benchmarks/bench_bip.py --k 100,250,500 --repeats 5
    python benchmarks/bench_bip.py --k '' --scale-targets 10,100 --repeats 1
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import sys
import time

import numpy as np
from _common import finish, interleaved, median_ratio, parser, setup, stats, table

from dataonomy.bip import FORMULATIONS, SelectionProblem, check_constraints, greedy_top_k, solve_selection
from dataonomy.selection import diversity_groups
from dataonomy.wordnet import imagenet_classes


def dirichlet_affinity(num_targets: int, num_sources: int, alpha: float, seed: int) -> np.ndarray:
    """(T, S) rows drawn from Dirichlet(alpha, ..., alpha): AHP-like priorities, each row summing to 1."""
    return np.random.default_rng(seed).dirichlet(np.full(num_sources, alpha), size=num_targets)


def main(argv: list[str] | None = None) -> dict:
    p = parser("bip", __doc__.split("\n\n")[0])
    p.add_argument("--k", default="100,250,500", help="selection sizes to time (comma-separated)")
    p.add_argument("--sources", type=int, default=1000, help="source classes (the first S ImageNet classes)")
    p.add_argument("--targets", type=int, default=10, help="target classes (rows of the affinity)")
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration of the affinity rows")
    p.add_argument(
        "--coverage", type=int, default=5, help="sources above the floor that must serve each target"
    )
    p.add_argument("--diversity-depth", type=int, default=7, help="WordNet depth of the diversity groups")
    p.add_argument("--diversity-fraction", type=float, default=0.1, help="per-group cap as a share of k")
    p.add_argument(
        "--diversity-max", type=int, default=None, help="fixed per-group cap (overrides the share)"
    )
    p.add_argument("--time-limit", type=float, default=600.0, help="CBC time limit per solve, seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the affinity rows")
    p.add_argument("--scale-sources", type=int, default=19000, help="ImageNet-21k-scale rows: source classes")
    p.add_argument(
        "--scale-targets", default="10,100", help="ImageNet-21k-scale rows: target counts ('' = off)"
    )
    p.add_argument("--scale-k", type=int, default=5000, help="ImageNet-21k-scale rows: k")
    p.add_argument("--scale-groups", type=int, default=200, help="ImageNet-21k-scale rows: diversity groups")
    p.add_argument("--scale-cap", type=int, default=33, help="ImageNet-21k-scale rows: cap per group")
    p.add_argument(
        "--xy-max-variables",
        type=int,
        default=2_000_000,
        help="skip the xy formulation above this many variables (PuLP memory)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=1200.0,
        help="ImageNet-21k-scale rows: kill a solve still running after this many seconds (CBC may overrun"
        " --time-limit inside its root LP)",
    )
    args = p.parse_args(argv)
    device = setup(args)
    ks = [int(v) for v in args.k.split(",") if v.strip()]
    scale_targets = [int(v) for v in args.scale_targets.split(",") if v.strip()]
    if args.quick:
        args.sources, args.targets, ks, args.diversity_max = 200, 3, [20], 15
        args.scale_sources, scale_targets, args.scale_k, args.scale_groups, args.scale_cap = (
            600,
            [2],
            150,
            10,
            20,
        )

    wnids = [wnid for wnid, _ in imagenet_classes()][: args.sources]
    groups = diversity_groups(wnids, args.diversity_depth)
    affinity = dirichlet_affinity(args.targets, len(wnids), args.alpha, args.seed)

    problems = {}
    for k in ks:
        cap = args.diversity_max if args.diversity_max is not None else math.ceil(args.diversity_fraction * k)
        problems[k] = SelectionProblem(
            affinity, k, coverage=args.coverage, groups=groups, max_per_group=cap, source_names=wnids
        )
    answers = {}

    def solver(k: int):
        def solve():
            answers[k] = solve_selection(problems[k], time_limit=args.time_limit)

        return solve

    solves = {str(k): solver(k) for k in problems}
    greedy = {str(k): (lambda pr=pr: check_constraints(greedy_top_k(pr), pr)) for k, pr in problems.items()}
    # The solves take seconds each: no untimed warm-up round (CBC is a fresh process every time anyway).
    solve_times = interleaved(solves, args.repeats, device, warmup=False)
    greedy_times = interleaved(greedy, args.repeats, device)

    results, rows = {}, []
    for k, problem in problems.items():
        answer = answers[k]  # from the last timed round
        violations = answer.greedy.violations
        families = sorted({v.family for v in violations})
        record = {
            "k": k,
            "max_per_group": problem.max_per_group,
            "groups": len(groups),
            "solve_selection": stats(solve_times[str(k)]),
            "solver_solve_time_s": answer.solve_time,
            "status": answer.status,
            "gap": answer.gap,
            "objective": answer.objective,
            "greedy": {
                **stats(greedy_times[str(k)]),
                "objective": answer.greedy.objective,
                "objective_ratio": answer.greedy.objective / answer.objective,
                "violated_families": families,
                "violations": len(violations),
            },
            "bip_selection_violations": len(check_constraints(answer.selected, problem)),
        }
        results[str(k)] = record
        rows.append(
            [
                k,
                problem.max_per_group,
                record["solve_selection"]["median_s"],
                answer.solve_time,
                answer.status,
                answer.gap,
                record["greedy"]["median_s"],
                record["greedy"]["objective_ratio"],
                ", ".join(f"{f}" for f in families) + f" ({len(violations)})" if violations else "none",
            ]
        )
    text = (
        ""
        if not ks
        else (
            f"BIP selection, {args.targets} targets x {len(wnids)} sources, coverage {args.coverage}, diversity depth"
            f" {args.diversity_depth} ({len(groups)} WordNet groups); median of {args.repeats}\n"
            + table(
                [
                    "k",
                    "cap/group",
                    "solve_selection s",
                    "build+CBC s",
                    "status",
                    "gap",
                    "greedy s",
                    "greedy obj / BIP obj",
                    "greedy violates",
                ],
                rows,
            )
        )
    )
    if scale_targets:
        scale, scale_text = scale_rows(args, scale_targets, device)
        results["imagenet21k_scale"] = scale
        text = (text + "\n\n" if text else "") + scale_text
    config = {k: v for k, v in vars(args).items() if k != "out"} | {"k": ks, "sources": len(wnids)}
    return finish("bip", args, device, config, results, text)


def scale_problem(num_sources: int, num_targets: int, args) -> SelectionProblem:
    """The ImageNet-21k-scale request: Dirichlet rows, a seeded random partition into groups."""
    affinity = dirichlet_affinity(num_targets, num_sources, args.alpha, args.seed)
    owner = np.random.default_rng(args.seed + 1).integers(0, args.scale_groups, size=num_sources)
    groups = {f"g{g}": np.flatnonzero(owner == g).tolist() for g in range(args.scale_groups)}
    return SelectionProblem(
        affinity, args.scale_k, coverage=args.coverage, groups=groups, max_per_group=args.scale_cap
    )


def model_variables(problem: SelectionProblem, formulation: str) -> int:
    """Variables of the programme: y, plus x[s][t] in the serve-variable form."""
    return problem.num_sources * (1 + (problem.num_targets if formulation == "xy" else 0))


def solve_with_deadline(problem: SelectionProblem, formulation: str, time_limit: float, deadline: float):
    """``(result, seconds)`` of ``solve_selection`` in a child process; ``(None, deadline)`` if killed at the deadline.

    CBC checks its own time limit only between phases: on a model of millions of variables it can spend far
    longer in the root LP. The child runs in its own session, so killing the session kills CBC with it.
    """
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def work():
        os.setsid()
        send.send(solve_selection(problem, time_limit=time_limit, formulation=formulation))

    start = time.perf_counter()
    child = ctx.Process(target=work)
    child.start()
    if receive.poll(deadline):
        result = receive.recv()
        seconds = time.perf_counter() - start
        child.join()
        return result, seconds
    os.killpg(child.pid, signal.SIGKILL)
    child.join()
    return None, deadline


def scale_rows(args, targets: list[int], device) -> tuple[dict, str]:
    """Both formulations on each ImageNet-21k-scale problem, one after the other in every round."""
    problems = {t: scale_problem(args.scale_sources, t, args) for t in targets}
    answers, times, skipped, killed = {}, {}, {}, set()
    for _ in range(args.repeats):
        for t, problem in problems.items():
            for formulation in FORMULATIONS:
                name = f"{t}/{formulation}"
                variables = model_variables(problem, formulation)
                if variables > args.xy_max_variables:
                    skipped[name] = variables
                    continue
                if name in killed:
                    continue  # past the deadline once: not run again
                result, seconds = solve_with_deadline(problem, formulation, args.time_limit, args.deadline)
                times.setdefault(name, []).append(seconds)
                if result is None:
                    killed.add(name)
                else:
                    answers[name] = result
    results, rows = {}, []
    for t, problem in problems.items():
        for formulation in FORMULATIONS:
            name = f"{t}/{formulation}"
            variables = model_variables(problem, formulation)
            if name in skipped:
                results[name] = {
                    "skipped": f"{variables} variables > --xy-max-variables {args.xy_max_variables}"
                }
                rows.append([t, formulation, variables, "skipped", "", "", "", ""])
                continue
            answer = answers.get(name)
            ratio = None
            if formulation == "xy" and f"{t}/y" in times:
                if name in killed:  # a lower bound: the deadline over y's median
                    ratio = args.deadline / stats(times[f"{t}/y"])["median_s"]
                else:
                    ratio = median_ratio(times[name], times[f"{t}/y"])
            results[name] = {
                "targets": t,
                "formulation": formulation,
                "variables": variables,
                "solve_selection": stats(times[name]),
                "killed_at_deadline_s": args.deadline if name in killed else None,
                "solver_solve_time_s": None if answer is None else answer.solve_time,
                "status": "killed at the deadline" if answer is None else answer.status,
                "gap": None if answer is None else answer.gap,
                "objective": None if answer is None else answer.objective,
                "xy_over_y": ratio,
            }
            median = results[name]["solve_selection"]["median_s"]
            rows.append(
                [
                    t,
                    formulation,
                    variables,
                    f"> {median:.0f} (killed)" if answer is None else median,
                    "" if answer is None else answer.solve_time,
                    results[name]["status"],
                    "" if answer is None else answer.objective,
                    "" if ratio is None else f"{'> ' if answer is None else ''}{ratio:.3g}x",
                ]
            )
    for t in targets:  # the two optima, as CBC reports them (its tolerances: about 1e-6 relative)
        y, xy = answers.get(f"{t}/y"), answers.get(f"{t}/xy")
        if y is not None and xy is not None:
            diff = abs(y.objective - xy.objective) / max(abs(y.objective), 1e-12)
            results[f"{t}/xy"]["objective_rel_diff_to_y"] = diff
            results[f"{t}/xy"]["same_selection_as_y"] = sorted(y.selected) == sorted(xy.selected)
    text = (
        f"ImageNet-21k scale: {args.scale_sources} sources, k {args.scale_k}, coverage {args.coverage} above"
        f" 1/S, {args.scale_groups} groups capped at {args.scale_cap}; median of {args.repeats}\n"
        + table(
            [
                "targets",
                "formulation",
                "variables",
                "solve_selection s",
                "build+CBC s",
                "status",
                "objective",
                "xy / y",
            ],
            rows,
        )  # fmt: skip
    )
    return results, text


if __name__ == "__main__":
    main(sys.argv[1:])
