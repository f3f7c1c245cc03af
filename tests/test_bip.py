"""The selection programme (dataonomy.bip): brute-force optima, greedy comparison, clear infeasibility errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from dataonomy import bip
from dataonomy.errors import DataonomyError


def _select(affinity, k, **constraints):
    return bip.solve_selection(bip.SelectionProblem(affinity, k, **constraints))


def _brute_force(
    p, k, *, r=None, m=0, floor=None, groups=None, q=None, n=None, budget=None, include=(), exclude=()
):
    """Best objective over all k-subsets meeting every constraint (independent of bip's own checks)."""
    num_targets, num_sources = p.shape
    r = np.ones(num_targets) if r is None else r
    floor = 1.0 / num_sources if floor is None else floor
    best = None
    for subset in itertools.combinations(range(num_sources), k):
        chosen = set(subset)
        if not set(include) <= chosen or chosen & set(exclude):
            continue
        if budget is not None and sum(n[s] for s in subset) > budget:
            continue
        if m and any(sum(1 for s in subset if p[t, s] > floor) < m for t in range(num_targets)):
            continue
        if q is not None and any(len(chosen & set(g)) > q for g in (groups or {}).values()):
            continue
        value = sum(r[t] * p[t, s] for t in range(num_targets) for s in subset)
        best = value if best is None else max(best, value)
    return best


def _random_instance(rng):
    num_targets, num_sources, k = 3, 8, 3
    p = rng.dirichlet(np.ones(num_sources) * 0.7, size=num_targets)
    groups = {
        f"g{i}": sorted(rng.choice(num_sources, size=rng.integers(2, 5), replace=False).tolist())
        for i in range(3)
    }
    n = rng.integers(10, 100, size=num_sources)
    kwargs = dict(
        r=rng.uniform(0.2, 2.0, size=num_targets),
        m=int(rng.integers(0, 3)),
        floor=float(rng.choice([0.05, 0.1, 0.2])),
        groups=groups,
        q=[None, 1, 2][int(rng.integers(0, 3))],
        n=n,
        budget=float(rng.integers(120, 260)) if rng.random() < 0.6 else None,
        include=tuple(rng.choice(num_sources, size=int(rng.integers(0, 2)), replace=False).tolist()),
        exclude=(),
    )
    rest = [s for s in range(num_sources) if s not in kwargs["include"]]
    kwargs["exclude"] = tuple(rng.choice(rest, size=int(rng.integers(0, 3)), replace=False).tolist())
    return p, k, kwargs


def _problem(
    p, k, *, r=None, m=0, floor=None, groups=None, q=None, n=None, budget=None, include=(), exclude=()
):
    return bip.SelectionProblem(
        p,
        k,
        target_weights=r,
        coverage=m,
        coverage_floor=floor,
        groups=groups or {},
        max_per_group=q,
        image_counts=n,
        image_budget=budget,
        include=include,
        exclude=exclude,
    )


@pytest.mark.parametrize("formulation", bip.FORMULATIONS)
def test_solver_matches_brute_force_on_small_random_instances(formulation):
    rng = np.random.default_rng(0)
    feasible = infeasible = 0
    for _ in range(30):
        p, k, kw = _random_instance(rng)
        best = _brute_force(p, k, **kw)
        problem = _problem(p, k, **kw)
        if best is None:
            with pytest.raises(DataonomyError, match="cannot|larger than|lists"):
                bip.solve_selection(problem)
            infeasible += 1
            continue
        result = bip.solve_selection(problem, formulation=formulation)
        feasible += 1
        assert result.status == "optimal" and result.gap == 0.0
        assert result.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert len(result.selected) == k
        assert bip.check_constraints(result.selected, problem) == []
        assert problem.objective(result.selected) == pytest.approx(result.objective, rel=1e-9)
        # Every selected class serves every target; no unselected class serves any.
        assert np.all(result.assignment[result.selected] == 1.0)
        assert np.all(np.delete(result.assignment, result.selected, axis=0) == 0.0)
    assert feasible >= 10 and infeasible >= 3  # both branches were exercised


def test_y_only_programme_has_the_optimum_of_the_serve_variable_reference():
    # METHOD.md's form (x[s][t] <= y[s]) and the y-only form on random instances too big for brute force:
    # the same optimal value, and each one's selection is optimal and feasible for the other.
    rng = np.random.default_rng(11)
    compared = 0
    for trial in range(12):
        num_targets, num_sources, k = (
            int(rng.integers(2, 6)),
            int(rng.integers(30, 80)),
            int(rng.integers(5, 20)),
        )
        p = rng.dirichlet(np.full(num_sources, float(rng.choice([0.3, 1.0, 3.0]))), size=num_targets)
        groups = {
            f"g{i}": sorted(rng.choice(num_sources, size=int(rng.integers(5, 20)), replace=False).tolist())
            for i in range(int(rng.integers(0, 6)))
        }
        n = rng.integers(100, 1300, size=num_sources)
        problem = bip.SelectionProblem(
            p,
            k,
            target_weights=rng.uniform(0.5, 2.0, size=num_targets),
            coverage=int(rng.integers(0, 4)),
            groups=groups,
            max_per_group=int(rng.integers(2, 6)) if groups else None,
            image_counts=n,
            image_budget=float(np.sort(n)[:k].sum() * rng.uniform(1.2, 2.5)) if trial % 2 else None,
        )
        try:
            new = bip.solve_selection(problem, formulation="y")
        except DataonomyError:
            with pytest.raises(DataonomyError):
                bip.solve_selection(problem, formulation="xy")
            continue
        ref = bip.solve_selection(problem, formulation="xy")
        assert new.status == ref.status == "optimal"
        assert new.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
        for result in (new, ref):
            assert bip.check_constraints(result.selected, problem) == []
            assert problem.objective(result.selected) == pytest.approx(ref.objective, rel=1e-9)
        compared += 1
    assert compared >= 8


@pytest.mark.parametrize("relax", [False, True])
def test_array_programme_writes_the_file_pulp_writes(tmp_path, relax):
    # solve_selection hands CBC the y programme from arrays (dataonomy.cbc); PuLP's model of it is the
    # reference: the same MPS bytes mean CBC solves the same programme and takes the same path.
    from dataonomy import cbc

    rng = np.random.default_rng(3)
    problems = [_problem(p, k, **kw) for p, k, kw in (_random_instance(rng) for _ in range(29))]
    # 25 sources: PuLP orders columns by name (y_10 before y_2), and so must the arrays writer.
    n = rng.integers(10, 100, size=25)
    problems.append(
        _problem(rng.dirichlet(np.ones(25), size=4), 6, m=2, groups={"a": [3, 12, 20, 21], "b": list(range(9, 19))},
                 q=2, n=n, budget=float(n.sum()), include=(14,), exclude=(2, 22))
    )  # fmt: skip
    checked = 0
    for problem in problems:
        prob, _, _ = bip._main_model(problem, relax=relax)
        prob.writeMPS(str(tmp_path / "pulp.mps"), rename=1)
        cbc.write_mps(bip._y_programme(problem), str(tmp_path / "arrays.mps"), mip=not relax)
        pulp_text = (
            (tmp_path / "pulp.mps")
            .read_text()
            .replace("NAME          dataonomy_selection", "NAME          MODEL")
        )
        assert (tmp_path / "arrays.mps").read_text() == pulp_text
        checked += 1
    assert checked == 30


def test_unknown_formulation_is_refused():
    with pytest.raises(ValueError, match="formulation"):
        bip.solve_selection(bip.SelectionProblem(np.ones((1, 3)) / 3, 1), formulation="z")


def test_without_side_constraints_the_programme_is_a_sort():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(40), size=4)
    result = _select(p, 7)
    assert result.selected == bip.greedy_top_k(bip.SelectionProblem(p, 7))
    assert result.selected == sorted(np.argsort(-p.sum(0))[:7].tolist())
    assert result.greedy.violations == [] and result.greedy.objective == pytest.approx(result.objective)


def test_target_weights_change_the_answer():
    p = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.3, 0.5]])
    assert _select(p, 2, target_weights=[1.0, 0.0]).selected == [0, 1]
    assert _select(p, 2, target_weights=[0.0, 1.0]).selected == [2, 3]


def test_bip_meets_coverage_that_greedy_violates():
    # Sources 0-5 are strong for target 0 only; target 1 has its mass on 6-9, each weaker than 0-5.
    p = np.full((2, 10), 0.001)
    p[0, :6] = [0.3, 0.25, 0.2, 0.1, 0.08, 0.06]
    p[1, :6] = 0.05
    p[1, 6:] = [0.12, 0.11, 0.1, 0.09]
    names = ["Class1", "Class2"]
    problem = bip.SelectionProblem(p, 5, coverage=2, coverage_floor=0.06, target_names=names)
    result = bip.solve_selection(problem)
    assert [v.family for v in result.greedy.violations] == ["coverage"]
    assert "target 'Class2' is served by 0" in result.greedy.violations[0].message
    assert bip.check_constraints(result.selected, problem) == []
    assert sum(1 for s in result.selected if p[1, s] > 0.06) >= 2
    assert result.objective < result.greedy.objective  # coverage costs objective; greedy is an upper bound


def test_bip_meets_diversity_that_greedy_violates():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.0, 0.01, size=(3, 20))
    p[:, :6] += 0.1  # the six best sources all sit under one WordNet node
    # A DAG, not a tree: sources 5-9 are under two nodes.
    groups = {
        "n02084071": list(range(0, 10)),
        "n01503061": list(range(10, 16)),
        "n00015388": list(range(5, 20)),
    }
    problem = bip.SelectionProblem(p, 6, groups=groups, max_per_group=3)
    result = bip.solve_selection(problem)
    assert [v.family for v in result.greedy.violations] == ["diversity"]
    assert "group 'n02084071' has 6 selected classes" in str(result.greedy.violations[0])
    assert bip.check_constraints(result.selected, problem) == []
    assert len(set(result.selected) & set(groups["n02084071"])) == 3
    assert result.objective == pytest.approx(_brute_force(p, 6, groups=groups, q=3), rel=1e-9)


def test_include_and_exclude_are_honoured():
    p = np.array([[0.4, 0.3, 0.2, 0.1]])
    result = _select(p, 2, include=[3], exclude=[0])
    assert result.selected == [1, 3]
    assert result.greedy.selected == [1, 3]  # greedy honours the user's lists too


def test_image_budget_is_respected():
    p = np.array([[0.4, 0.3, 0.2, 0.1]])
    result = _select(p, 2, image_counts=[1000, 900, 100, 100], image_budget=1100)
    assert result.selected == [0, 2]
    assert [v.family for v in result.greedy.violations] == ["budget"]


def test_large_instance_solves_to_optimality_with_coverage_and_diversity():
    # S = 1000 source classes, T = 10 targets, k = 500, AHP-like rows, overlapping WordNet-like groups.
    rng = np.random.default_rng(3)
    p = np.exp(rng.normal(size=(10, 1000)) * 0.5)
    p /= p.sum(1, keepdims=True)
    groups: dict[str, list[int]] = {}
    for s in range(1000):
        for g in rng.choice(60, size=rng.integers(1, 4), replace=False):
            groups.setdefault(f"n{g:08d}", []).append(s)
    problem = bip.SelectionProblem(p, 500, coverage=250, groups=groups, max_per_group=30)
    result = bip.solve_selection(problem, time_limit=120)
    assert result.status == "optimal"
    assert len(result.selected) == 500
    assert bip.check_constraints(result.selected, problem) == []
    assert result.greedy.violations  # the side constraints bind: the answer is not the plain sort
    assert result.objective <= result.greedy.objective
    json.dumps(result.to_dict())


# ------------------------------------------------------------------------------------ infeasibility


def test_k_larger_than_pool_names_the_pool():
    p = np.full((2, 20), 0.05)
    with pytest.raises(
        DataonomyError,
        match=r"^--k 30 is larger than the source pool \(20 classes\); largest feasible k is 20$",
    ):
        _select(p, 30)
    with pytest.raises(
        DataonomyError, match=r"left after --exclude \(17 of 20 classes\); largest feasible k is 17"
    ):
        _select(p, 18, exclude=[0, 1, 2])


def test_coverage_that_a_target_cannot_reach_names_the_target_and_largest_coverage():
    p = np.full((4, 20), 0.01)
    p[:, :10] = 0.09
    p[2, :10] = 0.0
    p[2, :2] = 0.45  # 'Class3' has only 2 sources above the floor 1/20
    names = ["Class1", "Class2", "Class3", "Class4"]
    with pytest.raises(
        DataonomyError,
        match=r"^--coverage 5 cannot be met: target 'Class3' has only 2 sources above the floor 0\.05;"
        r" largest feasible coverage is 2$",
    ):
        _select(p, 8, coverage=5, target_names=names)


def test_coverage_larger_than_k():
    p = np.full((2, 20), 0.05)
    with pytest.raises(
        DataonomyError, match=r"^--coverage 4 cannot be met: .*--k 3.*largest feasible coverage is 3$"
    ):
        _select(p, 3, coverage=4, coverage_floor=0.0)


def test_diversity_that_makes_k_impossible_gives_largest_k_and_smallest_q():
    p = np.random.default_rng(4).dirichlet(np.ones(20), size=2)
    groups = {f"g{i}": list(range(5 * i, 5 * i + 5)) for i in range(4)}  # 4 disjoint groups of 5
    with pytest.raises(
        DataonomyError,
        match=r"^--k 10 cannot be reached with --diversity-max 2 \(diversity\); largest feasible k is 8,"
        r" or smallest feasible --diversity-max is 3$",
    ):
        _select(p, 10, groups=groups, max_per_group=2)
    with pytest.raises(DataonomyError, match=r"--include puts 3 classes in group 'g1'"):
        _select(p, 6, groups=groups, max_per_group=2, include=[5, 6, 7])


def test_combination_found_infeasible_by_the_solver_names_the_family():
    # Each family alone is feasible; together they are not (target 0's sources all sit in one group).
    p = np.full((2, 12), 0.01)
    p[0, :5] = 0.18
    p[1, 5:] = 0.13
    groups = {"g0": list(range(0, 6)), "g1": list(range(6, 12))}
    with pytest.raises(
        DataonomyError,
        match=r"^--coverage 3 cannot be met together with diversity; largest feasible coverage is 2$",
    ):
        _select(p, 4, coverage=3, coverage_floor=0.1, groups=groups, max_per_group=2)


def test_budget_that_cannot_be_met():
    p = np.full((1, 5), 0.2)
    with pytest.raises(
        DataonomyError,
        match=r"^--image-budget 250 cannot be met \(budget\): the cheapest 3 classes allowed need 300 images;"
        r" smallest feasible budget is 300 images, or largest feasible k is 2$",
    ):
        _select(p, 3, image_counts=[100, 100, 100, 200, 300], image_budget=250)


def test_user_list_conflicts():
    p = np.full((1, 5), 0.2)
    with pytest.raises(
        DataonomyError, match="--include lists 3 classes but --k is 2; smallest feasible k is 3"
    ):
        _select(p, 2, include=[0, 1, 2])
    with pytest.raises(DataonomyError, match="--include and --exclude both list 1"):
        _select(p, 2, include=[1], exclude=[1])
    with pytest.raises(DataonomyError, match="--exclude lists source index 7, outside 0..4"):
        _select(p, 2, exclude=[7])


def test_check_constraints_reports_each_family():
    p = np.array([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    problem = bip.SelectionProblem(
        p,
        2,
        coverage=1,
        coverage_floor=0.4,
        groups={"a": [0, 1]},
        max_per_group=1,
        image_counts=[10, 10, 10, 10],
        image_budget=15,
        include=[2],
        exclude=[1],
    )
    families = [v.family for v in bip.check_constraints([0, 1, 3], problem)]
    assert families == ["k", "include", "exclude", "budget", "diversity"]
    assert [v.family for v in bip.check_constraints([0, 2], problem)] == ["budget", "coverage"]
