"""A linear or integer programme given as arrays, solved by the CBC that PuLP bundles.

PuLP builds a programme one Python object per variable and term and writes it to an MPS file term by
term: at ImageNet-21k scale (19,000 classes, 100 target rows of coverage, about a million non-zeros)
that costs 2.6 s before CBC starts, more than CBC's solve. :func:`solve_arrays` takes the programme as
a sparse matrix, writes the same MPS file PuLP would (same names, order and number format, so CBC
takes the same path; ``tests/test_bip.py`` checks the bytes) from arrays, and runs the same CBC with
the same options as :class:`pulp.COIN_CMD` (``solver`` is one, e.g. from
:func:`dataonomy.bip.cbc_solver`); its status codes are PuLP's.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import numpy as np
import pulp
import scipy.sparse


@dataclass
class ArrayProgramme:
    """``maximise (or minimise) objective @ v  s.t.  matrix @ v  (sense)  rhs,  lower <= v <= upper``.

    ``matrix`` (rows, columns), any scipy sparse format; ``sense`` one of ``"E"``, ``"L"``, ``"G"`` per
    row; ``integer`` marks integer columns; ``column_names`` are the names PuLP would give the
    variables: they decide the column order in the file, as in PuLP (rows keep their order).
    """

    objective: np.ndarray
    matrix: scipy.sparse.sparray
    sense: list[str]
    rhs: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    integer: np.ndarray
    column_names: list[str]
    maximise: bool = True
    name: str = "programme"


def _column_lines(j: int, rows: np.ndarray, values: np.ndarray, obj: float, integer: bool) -> str:
    name = f"X{j:07d}"
    lines = "".join(
        [f"    {name:<8}  C{i:07d}  {v: .12e}\n" for i, v in zip(rows.tolist(), values.tolist(), strict=True)]
    )
    if obj:
        lines += f"    {name:<8}  {'OBJ':<8}  {obj: .12e}\n"
    if integer:
        return (
            "    MARK      'MARKER'                 'INTORG'\n"
            + lines
            + "    MARK      'MARKER'                 'INTEND'\n"
        )
    return lines


def _bound_lines(name: str, low: float, up: float, integer: bool) -> str:
    if low == up:
        return f" FX BND       {name:<8}  {low: .12e}\n"
    if low == 0 and up == 1 and integer:
        return f" BV BND       {name:<8}\n"
    out = ""
    if low != 0 or (integer and not np.isfinite(up)):
        out += f" LO BND       {name:<8}  {low: .12e}\n" if np.isfinite(low) else f" MI BND       {name:<8}\n"
    if np.isfinite(up):
        out += f" UP BND       {name:<8}  {up: .12e}\n"
    return out


def write_mps(programme: ArrayProgramme, path: str, *, mip: bool = True) -> np.ndarray:
    """Write ``programme`` as PuLP's ``writeMPS(path, rename=1)`` would; return the file's column order.

    ``mip=False`` writes every column as continuous (the LP relaxation).
    """
    p = programme
    order = np.array(sorted(range(len(p.column_names)), key=p.column_names.__getitem__), dtype=np.int64)
    matrix = scipy.sparse.csc_array(p.matrix)[:, order]
    matrix.sort_indices()  # rows in insertion order within a column, as PuLP writes them
    objective = np.asarray(p.objective, dtype=float)[order]
    integer = np.asarray(p.integer, dtype=bool)[order] & mip
    lower = np.asarray(p.lower, dtype=float)[order]
    upper = np.asarray(p.upper, dtype=float)[order]
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    kinds = {"E": "E", "L": "L", "G": "G"}
    head = [
        f"*SENSE:{'Maximize' if p.maximise else 'Minimize'}\n",
        "NAME          MODEL\n",
        "ROWS\n",
        " N  OBJ\n",
        *[f" {kinds[s]}  C{i:07d}\n" for i, s in enumerate(p.sense)],
        "COLUMNS\n",
    ]
    columns = [
        _column_lines(
            j, indices[indptr[j] : indptr[j + 1]], data[indptr[j] : indptr[j + 1]], objective[j], integer[j]
        )
        for j in range(len(order))
    ]
    rhs = [
        f"    RHS       C{i:07d}  {v: .12e}\n" for i, v in enumerate(np.asarray(p.rhs, dtype=float).tolist())
    ]
    bounds = [_bound_lines(f"X{j:07d}", lower[j], upper[j], integer[j]) for j in range(len(order))]
    with open(path, "w") as f:
        f.write("".join(head))
        f.write("".join(columns))
        f.write("RHS\n")
        f.write("".join(rhs))
        f.write("BOUNDS\n")
        f.write("".join(bounds))
        f.write("ENDATA\n")
    return order


@dataclass
class ArraySolution:
    """PuLP's ``status`` and ``sol_status`` codes, and the column values (0 where CBC wrote none, as in PuLP)."""

    status: int
    sol_status: int
    values: np.ndarray


def solve_arrays(programme: ArrayProgramme, solver: pulp.COIN_CMD) -> ArraySolution:
    """Solve with the CBC binary and options of ``solver`` (path, ``mip``, time limit, threads, msg)."""
    if not solver.executable(solver.path):
        raise pulp.PulpSolverError(f"cannot execute CBC at {solver.path}")
    mps, sol = solver.create_tmp_files(programme.name, "mps", "sol")
    try:
        order = write_mps(programme, mps, mip=solver.mip)
        args = [solver.path, mps]
        if programme.maximise:
            args.append("-max")
        if solver.timeLimit is not None:
            args += ["-sec", str(solver.timeLimit)]
        for option in solver.options + solver.getOptions():
            args += ("-" + option).split()
        args += ["-solve" if solver.mip else "-initialSolve", "-printingOptions", "all", "-solution", sol]
        out = None if solver.msg else subprocess.DEVNULL
        if subprocess.call(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL) != 0 or not os.path.exists(
            sol
        ):
            raise pulp.PulpSolverError(f"CBC failed on {mps}; solve with msg=True to see its log")
        status, sol_status = solver.get_status(sol)
        values = np.zeros(len(order))
        with open(sol) as f:
            next(f)  # the status line
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    break
                if fields[0] == "**":  # CBC marks values that break a constraint
                    fields = fields[1:]
                if fields[1].startswith("X"):
                    values[order[int(fields[1][1:])]] = float(fields[2])
        return ArraySolution(status, sol_status, values)
    finally:
        solver.delete_tmp_files(mps, sol)
