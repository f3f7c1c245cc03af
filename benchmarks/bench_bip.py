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

    python benchmarks/bench_bip.py
    python benchmarks/bench_bip.py --k 100,250,500 --repeats 5
"""

from __future__ import annotations

import math
import sys

import numpy as np
from _common import finish, interleaved, parser, setup, stats, table

from dataonomy.bip import SelectionProblem, check_constraints, greedy_top_k, solve_selection
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
    args = p.parse_args(argv)
    device = setup(args)
    ks = [int(v) for v in args.k.split(",") if v.strip()]
    if args.quick:
        args.sources, args.targets, ks, args.diversity_max = 200, 3, [20], 15

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
    config = {k: v for k, v in vars(args).items() if k != "out"} | {"k": ks, "sources": len(wnids)}
    return finish("bip", args, device, config, results, text)


if __name__ == "__main__":
    main(sys.argv[1:])
