"""Which source classes to pretrain on: a binary integer programme (METHOD.md section 4), PuLP + CBC.

Variables: ``y_s`` in {0, 1}, source class s is selected. With ``c_s = sum_t r_t P[t, s]``:

    maximise    sum_s c_s y_s
    subject to  sum_s y_s = k                                    (--k)
                sum_s n_s y_s <= B                               (--image-budget, optional)
                sum_{s : P[t, s] > floor} y_s >= m       for all t   (--coverage, --coverage-floor)
                sum_{s in g} y_s <= q                    for all groups g   (--diversity-max)
                y_s = 1 for s in include,  y_s = 0 for s in exclude

METHOD.md writes the programme with serve variables ``x_{s,t}`` in [0, 1], ``x_{s,t} <= y_s``, the
objective ``sum_t r_t sum_s P[t, s] x_{s,t}`` and coverage counted over x. Every P[t, s] >= 0, so
raising any x_{s,t} to y_s never lowers the objective and never breaks coverage: some optimum has
``x = y`` and both programmes have the same optimal value and the same optimal y. The y-only form
has S variables instead of S (T + 1) (19,000 instead of 1.9 million at ImageNet-21k scale with 100
targets). :func:`solve_selection` solves it, handing it to PuLP's CBC as arrays (:mod:`dataonomy.cbc`: PuLP's
per-term objects cost more than CBC at that scale); ``formulation="xy"`` solves METHOD.md's form, kept as
the reference the tests and ``benchmarks/bench_bip.py`` compare against. Without coverage,
diversity and budget the programme is a sort (the top k of ``c_s``); :func:`greedy_top_k` computes
that answer, and :func:`check_constraints` lists what it (or any selection) violates.

Infeasible requests raise :class:`~dataonomy.errors.DataonomyError` naming the constraint family
and the largest (or smallest) value that would be feasible. Cheap closed-form checks run before the
solver; the feasible value they report, and the diagnosis of a solver 'Infeasible' (which family,
added to the others in the order diversity, budget, coverage, first makes the request infeasible),
come from small auxiliary integer programmes over y alone that maximise k or the coverage, or
minimise the per-group maximum or the image budget, under the remaining constraints.

Messages name the options of ``dataonomy select`` (see :data:`OPTION_NAMES`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pulp
import scipy.sparse

from dataonomy.cbc import ArrayProgramme, solve_arrays
from dataonomy.errors import DataonomyError

OPTION_NAMES = {
    "k": "--k",
    "coverage": "--coverage",
    "coverage_floor": "--coverage-floor",
    "max_per_group": "--diversity-max",
    "image_budget": "--image-budget",
    "include": "--include",
    "exclude": "--exclude",
    "time_limit": "--time-limit",
}

DEFAULT_TIME_LIMIT = 60.0
_INT_TOL = 1e-6  # CBC's integrality tolerance is 1e-7; values within this of an integer are that integer


# ---------------------------------------------------------------------------------------------------
# the problem


@dataclass
class SelectionProblem:
    """A selection request. ``affinity`` is P (T, S), normally AHP-normalised (rows sum to 1).

    ``target_weights`` r (T,) default 1; ``coverage`` m (0 = off) counts sources with
    ``P[t, s] > coverage_floor`` (default 1/S: better than a uniform, uninformative row);
    ``groups`` maps a group id (e.g. a WordNet node) to source indices, a source may be in several,
    and ``max_per_group`` q (None = off) caps the selected classes in each; ``image_counts`` n (S,) and
    ``image_budget`` B (None = off); ``include`` / ``exclude`` source indices that must / must not be
    selected. ``target_names`` / ``source_names`` only make messages readable.
    """

    affinity: np.ndarray
    k: int
    target_weights: np.ndarray | None = None
    coverage: int = 0
    coverage_floor: float | None = None
    groups: Mapping[Hashable, Sequence[int]] = field(default_factory=dict)
    max_per_group: int | None = None
    image_counts: np.ndarray | None = None
    image_budget: float | None = None
    include: Sequence[int] = ()
    exclude: Sequence[int] = ()
    target_names: Sequence[str] | None = None
    source_names: Sequence[str] | None = None

    def __post_init__(self):
        p = np.asarray(self.affinity, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise DataonomyError(
                f"affinity must be a non-empty (targets x sources) matrix, got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise DataonomyError("affinity must hold finite, non-negative values")
        self.affinity = p
        num_targets, num_sources = p.shape
        r = (
            np.ones(num_targets)
            if self.target_weights is None
            else np.asarray(self.target_weights, np.float64)
        )
        if r.shape != (num_targets,) or not np.all(np.isfinite(r)) or np.any(r < 0):
            raise DataonomyError(f"target weights must be {num_targets} finite values >= 0, got {r.tolist()}")
        self.target_weights = r
        self.k = _as_int(self.k, OPTION_NAMES["k"])
        self.coverage = _as_int(self.coverage, OPTION_NAMES["coverage"])
        if self.coverage < 0:
            raise DataonomyError(f"{OPTION_NAMES['coverage']} must be >= 0, got {self.coverage}")
        if self.coverage_floor is None:
            self.coverage_floor = 1.0 / num_sources
        if not math.isfinite(self.coverage_floor):
            raise DataonomyError(f"{OPTION_NAMES['coverage_floor']} must be a finite number")
        if self.max_per_group is not None:
            self.max_per_group = _as_int(self.max_per_group, OPTION_NAMES["max_per_group"])
            if self.max_per_group < 0:
                raise DataonomyError(
                    f"{OPTION_NAMES['max_per_group']} must be >= 0, got {self.max_per_group}"
                )
        self.groups = {
            g: sorted({_source_index(s, num_sources, f"group {g!r}") for s in members})
            for g, members in dict(self.groups).items()
        }
        if self.image_counts is not None:
            n = np.asarray(self.image_counts, dtype=np.float64)
            if n.shape != (num_sources,) or not np.all(np.isfinite(n)) or np.any(n < 0):
                raise DataonomyError(f"image counts must be {num_sources} finite values >= 0")
            self.image_counts = n
        if self.image_budget is not None:
            if self.image_counts is None:
                raise DataonomyError(
                    f"{OPTION_NAMES['image_budget']} needs the image count of every source class"
                )
            if not math.isfinite(self.image_budget) or self.image_budget < 0:
                raise DataonomyError(f"{OPTION_NAMES['image_budget']} must be >= 0, got {self.image_budget}")
        self.include = tuple(
            sorted({_source_index(s, num_sources, OPTION_NAMES["include"]) for s in self.include})
        )
        self.exclude = tuple(
            sorted({_source_index(s, num_sources, OPTION_NAMES["exclude"]) for s in self.exclude})
        )
        both = sorted(set(self.include) & set(self.exclude))
        if both:
            raise DataonomyError(
                f"{OPTION_NAMES['include']} and {OPTION_NAMES['exclude']} both list {self.source_label(both[0])}"
            )
        for names, count, what in (
            (self.target_names, num_targets, "target"),
            (self.source_names, num_sources, "source"),
        ):
            if names is not None and len(names) != count:
                raise DataonomyError(f"{len(names)} {what} names given for {count} {what} classes")

    # -- small helpers -------------------------------------------------------------------------------

    @property
    def num_targets(self) -> int:
        return self.affinity.shape[0]

    @property
    def num_sources(self) -> int:
        return self.affinity.shape[1]

    @property
    def allowed(self) -> np.ndarray:
        """Boolean (S,): the sources not excluded."""
        mask = np.ones(self.num_sources, dtype=bool)
        mask[list(self.exclude)] = False
        return mask

    @property
    def source_value(self) -> np.ndarray:
        """``c_s = sum_t r_t P[t, s]``: what selecting s adds to the objective, (S,)."""
        return self.target_weights @ self.affinity

    @property
    def eligible(self) -> np.ndarray:
        """Boolean (T, S): s counts toward t's coverage (``P[t, s] > coverage_floor``)."""
        return self.affinity > self.coverage_floor

    @property
    def diversity_on(self) -> bool:
        return self.max_per_group is not None and bool(self.groups)

    @property
    def budget_on(self) -> bool:
        return self.image_budget is not None

    @property
    def coverage_on(self) -> bool:
        return self.coverage > 0

    def target_label(self, t: int) -> str:
        return repr(self.target_names[t]) if self.target_names is not None else f"{t}"

    def source_label(self, s: int) -> str:
        return f"{s} ({self.source_names[s]})" if self.source_names is not None else f"{s}"

    def objective(self, selection: Sequence[int]) -> float:
        """Objective of a selection with every selected class serving every target (x = y)."""
        return float(self.source_value[list(selection)].sum()) if len(selection) else 0.0


def _as_int(value, option: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise DataonomyError(f"{option} must be a whole number, got {value!r}")
    return int(value)


def _source_index(s, num_sources: int, where: str) -> int:
    if isinstance(s, bool) or not float(s).is_integer() or not 0 <= int(s) < num_sources:
        raise DataonomyError(f"{where} lists source index {s!r}, outside 0..{num_sources - 1}")
    return int(s)


# ---------------------------------------------------------------------------------------------------
# greedy and checks


@dataclass(frozen=True)
class Violation:
    """One unmet constraint: ``family`` (k, include, exclude, budget, coverage, diversity) and a line."""

    family: str
    message: str

    def __str__(self) -> str:
        return f"{self.family}: {self.message}"


def greedy_top_k(problem: SelectionProblem) -> list[int]:
    """The k classes with the largest ``c_s = sum_t r_t P[t, s]``, honouring include / exclude only.

    This is the programme's answer without coverage, diversity and budget. Ties go to the lower index.
    Returns sorted indices (fewer than k if the pool is smaller).
    """
    chosen = list(problem.include)
    if len(chosen) >= problem.k:
        return sorted(chosen)
    forced = set(chosen)
    order = np.argsort(-problem.source_value, kind="stable")
    pool = [int(s) for s in order if problem.allowed[s] and int(s) not in forced]
    return sorted(chosen + pool[: problem.k - len(chosen)])


def check_constraints(selection: Sequence[int], problem: SelectionProblem) -> list[Violation]:
    """Every constraint of ``problem`` that ``selection`` (source indices) violates; empty if none."""
    chosen = sorted({int(s) for s in selection})
    out: list[Violation] = []
    if len(chosen) != problem.k:
        out.append(Violation("k", f"{len(chosen)} classes selected, {OPTION_NAMES['k']} is {problem.k}"))
    missing = sorted(set(problem.include) - set(chosen))
    if missing:
        out.append(Violation("include", f"{len(missing)} required classes not selected: {missing[:10]}"))
    banned = sorted(set(problem.exclude) & set(chosen))
    if banned:
        out.append(Violation("exclude", f"{len(banned)} excluded classes selected: {banned[:10]}"))
    if problem.budget_on:
        used = float(problem.image_counts[chosen].sum()) if chosen else 0.0
        if used > problem.image_budget + 1e-9:
            out.append(
                Violation(
                    "budget",
                    f"{_num(used)} images > {OPTION_NAMES['image_budget']} {_num(problem.image_budget)}",
                )
            )
    if problem.coverage_on:
        served = problem.eligible[:, chosen].sum(1) if chosen else np.zeros(problem.num_targets, int)
        for t in np.flatnonzero(served < problem.coverage):
            out.append(
                Violation(
                    "coverage",
                    f"target {problem.target_label(t)} is served by {int(served[t])} selected sources above the"
                    f" floor {problem.coverage_floor:g}, {OPTION_NAMES['coverage']} is {problem.coverage}",
                )
            )
    if problem.diversity_on:
        chosen_set = set(chosen)
        for g, members in problem.groups.items():
            count = sum(1 for s in members if s in chosen_set)
            if count > problem.max_per_group:
                out.append(
                    Violation(
                        "diversity",
                        f"group {g!r} has {count} selected classes, {OPTION_NAMES['max_per_group']} is"
                        f" {problem.max_per_group}",
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------------
# models


def cbc_solver(
    *, time_limit: float | None = DEFAULT_TIME_LIMIT, threads: int | None = None, msg: bool = False, mip=True
):
    """CBC through PuLP: a CBC on the PATH if there is one, else the binary bundled with PuLP."""
    kwargs = dict(mip=mip, msg=msg, timeLimit=time_limit, threads=threads)
    solver = pulp.COIN_CMD(**kwargs)
    if solver.available():
        return solver
    # PULP_CBC_CMD itself is deprecated for PuLP 4; the same bundled binary through COIN_CMD is not.
    return pulp.COIN_CMD(path=pulp.PULP_CBC_CMD.pulp_cbc_path, **kwargs)


def _variable(prob: pulp.LpProblem, name: str, low=None, up=None, cat=pulp.LpContinuous) -> pulp.LpVariable:
    # PuLP >= 3.3 owns variables through the problem (and deprecates bare LpVariable); older PuLP does not.
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, low, up, cat=cat)
    return pulp.LpVariable(name, low, up, cat=cat)


def _selection_variables(prob: pulp.LpProblem, problem: SelectionProblem, relax: bool = False) -> list:
    """y_s with include / exclude as bounds (an integer in [1, 1] or [0, 0]); in [0, 1] otherwise.

    Integer rather than LpBinary: PuLP resets a binary's bounds to [0, 1], which would drop the lists.
    """
    cat = pulp.LpContinuous if relax else pulp.LpInteger
    inc = set(problem.include)
    allowed = problem.allowed
    return [
        _variable(prob, f"y_{s}", 1 if s in inc else 0, 1 if allowed[s] else 0, cat)
        for s in range(problem.num_sources)
    ]


def _count(y: list[pulp.LpVariable], members) -> pulp.LpAffineExpression:
    """``sum_{s in members} y_s``, built in one step: lpSum's term-by-term addition is 5x slower at 10^5 terms."""
    if isinstance(members, np.ndarray):
        members = members.tolist()  # Python ints: indexing with numpy scalars costs 4x
    return pulp.LpAffineExpression([(y[s], 1.0) for s in members])


def _add_side_constraints(
    prob: pulp.LpProblem,
    problem: SelectionProblem,
    y: list[pulp.LpVariable],
    families: set[str],
    coverage_expr=None,
    max_per_group=None,
) -> None:
    """Diversity, budget and coverage (the families named) on y; coverage on y unless an expression is given."""
    if "diversity" in families and problem.diversity_on:
        cap = problem.max_per_group if max_per_group is None else max_per_group
        for i, members in enumerate(problem.groups.values()):
            live = [s for s in members if problem.allowed[s]]
            if isinstance(cap, int) and len(live) <= cap:
                continue  # cannot bind
            prob += _count(y, live) <= cap, f"diversity_{i}"
    if "budget" in families and problem.budget_on:
        prob += (
            pulp.LpAffineExpression(
                [(y[s], float(problem.image_counts[s])) for s in range(problem.num_sources)]
            )
            <= problem.image_budget,
            "budget",
        )
    if "coverage" in families and problem.coverage_on:
        need = problem.coverage if coverage_expr is None else coverage_expr
        elig = problem.eligible
        for t in range(problem.num_targets):
            prob += _count(y, np.flatnonzero(elig[t])) >= need, f"coverage_{t}"


def _solve(prob: pulp.LpProblem, solver) -> tuple[int, int]:
    prob.solve(solver)
    return prob.status, prob.sol_status


def _aux_optimum(
    problem: SelectionProblem,
    families: set[str],
    goal: str,
    *,
    time_limit: float | None,
    threads: int | None,
) -> float | None:
    """Optimum of an auxiliary programme over y; None if infeasible or unsolved in time.

    goal: ``feasible`` (0 if feasible), ``max_k`` (largest number of selected classes, no ``= k``),
    ``min_q`` (smallest per-group maximum), ``min_budget`` (fewest images), ``max_coverage``.
    """
    sense = pulp.LpMaximize if goal in ("max_k", "max_coverage", "feasible") else pulp.LpMinimize
    prob = pulp.LpProblem(f"aux_{goal}", sense)
    y = _selection_variables(prob, problem)
    coverage_expr = max_per_group = None
    if goal == "max_k":
        prob += pulp.lpSum(y)
    else:
        prob += pulp.lpSum(y) == problem.k, "k"
    if goal == "min_q":
        max_per_group = _variable(prob, "q", 0, None, pulp.LpInteger)
        prob += max_per_group
        families = families | {"diversity"}
    elif goal == "min_budget":
        prob += pulp.LpAffineExpression(
            [(y[s], float(problem.image_counts[s])) for s in range(problem.num_sources)]
        )
        families = families - {"budget"}
    elif goal == "max_coverage":
        coverage_expr = _variable(prob, "m", 0, problem.k, pulp.LpInteger)
        prob += coverage_expr
        families = families | {"coverage"}
        if not problem.coverage_on:
            raise ValueError("max_coverage needs a coverage request")
    elif goal == "feasible":
        prob += pulp.LpAffineExpression([])  # any feasible point
    _add_side_constraints(
        prob, problem, y, families, coverage_expr=coverage_expr, max_per_group=max_per_group
    )
    status, sol_status = _solve(prob, cbc_solver(time_limit=time_limit, threads=threads))
    if status != pulp.LpStatusOptimal:
        return None
    if goal == "feasible":
        return 0.0 if sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible) else None
    if sol_status != pulp.LpSolutionOptimal:
        return None  # stopped by the time limit: a feasible value, but not provably the best one
    value = pulp.value(prob.objective)
    return float(round(value)) if abs(value - round(value)) < _INT_TOL else float(value)


# ---------------------------------------------------------------------------------------------------
# infeasibility


def _num(v: float) -> str:
    """A count or budget for a message: whole numbers in full (1281167, not 1.28117e+06)."""
    return str(int(round(v))) if abs(v - round(v)) < _INT_TOL else f"{v:.6g}"


def _fmt(v: float | None) -> str:
    return "unknown (the search for it did not finish)" if v is None else _num(v)


def precheck_selection(
    problem: SelectionProblem, *, time_limit: float | None = DEFAULT_TIME_LIMIT, threads: int | None = None
) -> None:
    """The closed-form infeasibility checks of :func:`solve_selection`, without solving.

    ``dataonomy select`` runs them on the pool's class list before extracting features (with
    coverage off: it needs the affinities), so that a k larger than the pool, an include list over a
    diversity cap or an unreachable image budget fails in seconds, not after the extraction.
    """

    def aux(families, goal):
        return _aux_optimum(problem, families, goal, time_limit=time_limit, threads=threads)

    _precheck(problem, aux)


def _precheck(problem: SelectionProblem, aux) -> None:
    """Closed-form infeasibility checks; raise the family's error (with the best feasible value)."""
    k, num_sources = problem.k, problem.num_sources
    pool = int(problem.allowed.sum())
    if k < 1:
        raise DataonomyError(f"{OPTION_NAMES['k']} must be at least 1, got {k}")
    if k > pool:
        where = (
            f"the source pool ({num_sources} classes)"
            if pool == num_sources
            else f"the source pool left after {OPTION_NAMES['exclude']} ({pool} of {num_sources} classes)"
        )
        raise DataonomyError(f"{OPTION_NAMES['k']} {k} is larger than {where}; largest feasible k is {pool}")
    if len(problem.include) > k:
        raise DataonomyError(
            f"{OPTION_NAMES['include']} lists {len(problem.include)} classes but {OPTION_NAMES['k']} is {k};"
            f" smallest feasible k is {len(problem.include)}"
        )
    if problem.diversity_on:
        q = problem.max_per_group
        inc = set(problem.include)
        for g, members in problem.groups.items():
            forced = sum(1 for s in members if s in inc)
            if forced > q:
                raise DataonomyError(
                    f"{OPTION_NAMES['include']} puts {forced} classes in group {g!r} but"
                    f" {OPTION_NAMES['max_per_group']} is {q} (diversity); smallest feasible"
                    f" {OPTION_NAMES['max_per_group']} is at least {forced}"
                )
        # Every grouped selected class uses up a slot of at least one group: an upper bound on k.
        allowed = problem.allowed
        grouped = set().union(*problem.groups.values()) if problem.groups else set()
        bound = sum(min(q, sum(1 for s in m if allowed[s])) for m in problem.groups.values())
        bound += sum(1 for s in range(num_sources) if allowed[s] and s not in grouped)
        if k > bound:
            raise _diversity_error(problem, aux, set())
    if problem.budget_on:
        counts = problem.image_counts
        forced = float(counts[list(problem.include)].sum()) if problem.include else 0.0
        free = np.sort(counts[problem.allowed & ~np.isin(np.arange(num_sources), problem.include)])
        cheapest = forced + float(free[: k - len(problem.include)].sum())
        if cheapest > problem.image_budget + 1e-9:
            raise _budget_error(problem, aux, set(), cheapest=cheapest)
    if problem.coverage_on:
        m = problem.coverage
        counts = (problem.eligible & problem.allowed).sum(1)
        worst = int(np.argmin(counts))
        reason = None
        if m > k:
            reason = f"each target can be served by at most {OPTION_NAMES['k']} {k} sources"
        elif counts[worst] < m:
            reason = (
                f"target {problem.target_label(worst)} has only {int(counts[worst])} sources above the floor"
                f" {problem.coverage_floor:g}"
            )
        if reason is not None:
            others = {f for f in ("diversity", "budget") if _family_on(problem, f)}
            if others and aux(others, "feasible") is None:
                raise _diagnose_infeasible(problem, aux)  # the other families already conflict
            raise _coverage_error(problem, aux, others, reason=reason)


def _diversity_error(problem: SelectionProblem, aux, others: set[str]) -> DataonomyError:
    best_k = aux(others | {"diversity"}, "max_k")
    best_q = aux(others, "min_q")
    q = problem.max_per_group
    return DataonomyError(
        f"{OPTION_NAMES['k']} {problem.k} cannot be reached with {OPTION_NAMES['max_per_group']} {q} (diversity)"
        + (f" together with {', '.join(sorted(others))}" if others else "")
        + f"; largest feasible k is {_fmt(best_k)}, or smallest feasible {OPTION_NAMES['max_per_group']} is"
        f" {_fmt(best_q)}"
    )


def _budget_error(
    problem: SelectionProblem, aux, others: set[str], cheapest: float | None = None
) -> DataonomyError:
    smallest = aux(others, "min_budget")
    best_k = aux(others | {"budget"}, "max_k")
    what = (
        f"the cheapest {problem.k} classes allowed need {_num(cheapest)} images"
        if cheapest is not None
        else ""
    )
    return DataonomyError(
        f"{OPTION_NAMES['image_budget']} {_num(problem.image_budget)} cannot be met (budget)"
        + (f" together with {', '.join(sorted(others))}" if others else "")
        + (f": {what}" if what else "")
        + f"; smallest feasible budget is {_fmt(smallest)} images, or largest feasible k is {_fmt(best_k)}"
    )


def _coverage_error(
    problem: SelectionProblem, aux, others: set[str], reason: str | None = None
) -> DataonomyError:
    best = aux(others, "max_coverage")
    return DataonomyError(
        f"{OPTION_NAMES['coverage']} {problem.coverage} cannot be met"
        + (
            f" together with {', '.join(sorted(f for f in others if _family_on(problem, f)))}"
            if reason is None
            else ""
        )
        + (f": {reason}" if reason else "")
        + f"; largest feasible coverage is {_fmt(best)}"
    )


def _family_on(problem: SelectionProblem, family: str) -> bool:
    return {"diversity": problem.diversity_on, "budget": problem.budget_on, "coverage": problem.coverage_on}[
        family
    ]


def _diagnose_infeasible(problem: SelectionProblem, aux) -> DataonomyError:
    """Which family first makes the request infeasible when added in the order diversity, budget, coverage."""
    active: set[str] = set()
    for family in ("diversity", "budget", "coverage"):
        if not _family_on(problem, family):
            continue
        if aux(active | {family}, "feasible") is None:
            others = {f for f in active if _family_on(problem, f)}
            if family == "diversity":
                return _diversity_error(problem, aux, others)
            if family == "budget":
                return _budget_error(problem, aux, others)
            return _coverage_error(problem, aux, others)
        active.add(family)
    return DataonomyError(
        "the solver reported the selection infeasible although the constraint families are feasible together;"
        f" relax {OPTION_NAMES['coverage']}, {OPTION_NAMES['max_per_group']} or {OPTION_NAMES['image_budget']}"
    )


# ---------------------------------------------------------------------------------------------------
# solve


@dataclass(frozen=True)
class GreedyComparison:
    """The greedy top-k answer: its classes, objective, and the constraints it violates."""

    selected: list[int]
    objective: float
    violations: list[Violation]


@dataclass(frozen=True)
class SelectionResult:
    """The programme's answer.

    ``selected``: sorted source indices; ``assignment`` (S, T): 1 where s serves t (x_{s,t});
    ``status``: ``optimal`` or ``feasible (time limit)``; ``objective``; ``bound``: an upper bound on
    the optimum (the objective itself when optimal, else the LP relaxation's value); ``gap``:
    ``(bound - objective) / max(|objective|, 1e-12)``; ``solve_time`` seconds (building and solving);
    ``greedy``: the greedy top-k comparison.
    """

    selected: list[int]
    assignment: np.ndarray
    status: str
    objective: float
    bound: float
    gap: float
    solve_time: float
    greedy: GreedyComparison

    def to_dict(self) -> dict:
        """JSON-ready summary (for the manifest's solver report)."""
        return {
            "status": self.status,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "solve_time_s": self.solve_time,
            "selected": list(self.selected),
            "greedy": {
                "selected": list(self.greedy.selected),
                "objective": self.greedy.objective,
                "objective_ratio": (self.greedy.objective / self.objective) if self.objective else None,
                "violations": [{"family": v.family, "message": v.message} for v in self.greedy.violations],
            },
        }


FORMULATIONS = ("y", "xy")


def _main_model(problem: SelectionProblem, relax: bool = False, formulation: str = "y"):
    """The programme as a PuLP problem: (problem, y, x); x is None for the y-only formulation."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    prob = pulp.LpProblem("dataonomy_selection", pulp.LpMaximize)
    y = _selection_variables(prob, problem, relax=relax)
    if formulation == "y":
        value = problem.source_value
        prob += pulp.LpAffineExpression(
            [(y[s], float(value[s])) for s in range(problem.num_sources) if value[s]]
        )
        prob += _count(y, range(problem.num_sources)) == problem.k, "k"
        _add_side_constraints(prob, problem, y, {"diversity", "budget", "coverage"})
        return prob, y, None
    # METHOD.md's form with serve variables x[s][t] (the reference).
    num_targets, num_sources = problem.affinity.shape
    x = [[_variable(prob, f"x_{s}_{t}", 0, 1) for t in range(num_targets)] for s in range(num_sources)]
    weights = problem.target_weights[:, None] * problem.affinity
    prob += pulp.LpAffineExpression(
        [
            (x[s][t], float(weights[t, s]))
            for s in range(num_sources)
            for t in range(num_targets)
            if weights[t, s]
        ]
    )
    for s in range(num_sources):
        for t in range(num_targets):
            prob += x[s][t] - y[s] <= 0, f"serve_{s}_{t}"
    prob += pulp.lpSum(y) == problem.k, "k"
    _add_side_constraints(prob, problem, y, {"diversity", "budget"})
    if problem.coverage_on:
        elig = problem.eligible
        for t in range(num_targets):
            prob += pulp.lpSum(x[s][t] for s in np.flatnonzero(elig[t])) >= problem.coverage, f"coverage_{t}"
    return prob, y, x


def _y_programme(problem: SelectionProblem) -> ArrayProgramme:
    """The y-only programme as arrays: the rows, order and coefficients ``_main_model`` gives PuLP."""
    num_sources = problem.num_sources
    rows: list[np.ndarray] = []  # column indices of each row
    coefs: list[np.ndarray] = []
    sense: list[str] = []
    rhs: list[float] = []

    def add(members, values, kind: str, bound: float) -> None:
        rows.append(np.asarray(members, dtype=np.int64))
        coefs.append(np.broadcast_to(np.asarray(values, dtype=float), (len(rows[-1]),)))
        sense.append(kind)
        rhs.append(float(bound))

    everyone = np.arange(num_sources)
    add(everyone, 1.0, "E", problem.k)
    if problem.diversity_on:
        allowed = problem.allowed
        for members in problem.groups.values():
            live = [s for s in members if allowed[s]]
            if len(live) > problem.max_per_group:  # else it cannot bind
                add(live, 1.0, "L", problem.max_per_group)
    if problem.budget_on:
        add(everyone, problem.image_counts, "L", problem.image_budget)
    if problem.coverage_on:
        for members in problem.eligible:
            add(np.flatnonzero(members), 1.0, "G", problem.coverage)
    matrix = scipy.sparse.csr_array(
        (np.concatenate(coefs), np.concatenate(rows), np.cumsum([0] + [len(r) for r in rows])),
        shape=(len(rows), num_sources),
    )
    upper = problem.allowed.astype(float)
    lower = np.zeros(num_sources)
    lower[list(problem.include)] = 1.0
    return ArrayProgramme(
        objective=problem.source_value,
        matrix=matrix,
        sense=sense,
        rhs=np.array(rhs),
        lower=lower,
        upper=upper,
        integer=np.ones(num_sources, dtype=bool),
        column_names=[f"y_{s}" for s in range(num_sources)],
        name="dataonomy_selection",
    )


def solve_selection(
    problem: SelectionProblem,
    *,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    threads: int | None = None,
    msg: bool = False,
    formulation: str = "y",
) -> SelectionResult:
    """Solve the programme with CBC; infeasible requests raise :class:`DataonomyError` (see module doc).

    ``time_limit`` seconds per CBC call (the best selection found so far is returned, with its gap, if
    the limit stops the search); ``threads`` for CBC (None: CBC's default, one, which keeps results
    reproducible); ``msg`` shows CBC's log. ``formulation``: ``y`` (the default) or ``xy``, METHOD.md's
    form with serve variables, the same optimum with S x T more variables (kept as the reference).
    """

    def aux(families, goal):
        return _aux_optimum(problem, families, goal, time_limit=time_limit, threads=threads)

    _precheck(problem, aux)
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    start = time.perf_counter()
    solver = cbc_solver(time_limit=time_limit, threads=threads, msg=msg)
    if formulation == "y":  # straight from arrays: PuLP's objects cost more than CBC at 10^4 classes
        solution = solve_arrays(_y_programme(problem), solver)
        status, sol_status, x = solution.status, solution.sol_status, None
        y_values = solution.values
    else:
        prob, y, x = _main_model(problem, formulation=formulation)
        status, sol_status = _solve(prob, solver)
        y_values = np.array([v.value() or 0.0 for v in y])
    elapsed = time.perf_counter() - start
    if status in (pulp.LpStatusInfeasible, pulp.LpStatusUndefined) or sol_status == pulp.LpSolutionInfeasible:
        raise _diagnose_infeasible(problem, aux)
    if sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise DataonomyError(
            f"the solver found no selection within {OPTION_NAMES['time_limit']} {time_limit} s"
            f" (status {pulp.LpStatus[status]}); raise {OPTION_NAMES['time_limit']}"
        )
    selected = np.flatnonzero(y_values > 0.5).tolist()
    if x is None:  # every selected class serves every target (x = y)
        assignment = np.zeros((problem.num_sources, problem.num_targets))
        assignment[selected] = 1.0
    else:
        assignment = np.array(
            [
                [float(np.clip(round(x[s][t].value() or 0.0, 9), 0, 1)) for t in range(problem.num_targets)]
                for s in range(problem.num_sources)
            ]
        )
    objective = float(np.sum(problem.target_weights[None, :] * problem.affinity.T * assignment))
    if sol_status == pulp.LpSolutionOptimal:
        status_text, bound = "optimal", objective
    else:
        status_text = "feasible (time limit)"
        relaxed_solver = cbc_solver(time_limit=time_limit, threads=threads, mip=False)
        if formulation == "y":
            bound = float(problem.source_value @ solve_arrays(_y_programme(problem), relaxed_solver).values)
        else:
            relaxed, _, _ = _main_model(problem, relax=True, formulation=formulation)
            relaxed.solve(relaxed_solver)
            bound = float(pulp.value(relaxed.objective))
    gap = max(0.0, (bound - objective) / max(abs(objective), 1e-12))
    greedy_sel = greedy_top_k(problem)
    greedy = GreedyComparison(
        selected=greedy_sel,
        objective=problem.objective(greedy_sel),
        violations=check_constraints(greedy_sel, problem),
    )
    return SelectionResult(
        selected=selected,
        assignment=assignment,
        status=status_text,
        objective=objective,
        bound=bound,
        gap=gap,
        solve_time=elapsed,
        greedy=greedy,
    )
