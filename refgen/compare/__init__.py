"""Numeric comparison: of two references (auditors: ``refgen diff``, ``refgen verify``), and of a
port's own tensors with a reference (porters: ``refgen compare``).

Two honest rebuilds on different CPUs can differ in the last bit of a float; "different" is not
enough. The auditor's comparison says *how much* and *where*: bit for bit, within a tolerance far
tighter than the consumer's 1e-3 (with the largest absolute and relative difference per field and
per test case), or not reproduced (every difference by path, e.g.
``test_cases[1].top_10[3].index``, with swapped top-k entries named). When both references have
probe files beside them (``X.safetensors``, see :mod:`refgen.probes`), those are compared tensor by
tensor too, and the report names, per prompt, the first tensor that is not bit-identical.

Exit codes of ``diff`` and ``verify``:

====  ======================================================================
 0    REPRODUCED BIT FOR BIT: same SHA-256 (and no NaN: NaN never counts as reproduced)
 10   REPRODUCED WITHIN TOLERANCE: same structure and indices, floats within tolerance
 11   NOT REPRODUCED: a structural, exact-value, index or out-of-tolerance difference
 2    could not compare (unreadable file, not JSON): a usage error
====  ======================================================================

One module per idea:

* :mod:`~refgen.compare.verdict`: the verdicts and tolerances;
* :mod:`~refgen.compare.documents`: walking two reference JSONs;
* :mod:`~refgen.compare.probefiles`: walking the probe files beside them;
* :mod:`~refgen.compare.collect`: what a walk accumulates;
* :mod:`~refgen.compare.results`, :mod:`~refgen.compare.report`: the result and its text/JSON;
* :mod:`~refgen.compare.port`: a port's own dump against a reference (``refgen compare``), with
  :mod:`~refgen.compare.namemap` (the port's names), :mod:`~refgen.compare.metrics` (NMSE,
  cosine, top-k, per position) and :mod:`~refgen.compare.html` (the page).

``refgen compare`` exits 0 when every tensor of the port is within tolerance, 13 when one is not
(or the port ran other input ids), 2 on bad input.
"""

from refgen.compare.documents import (
    INFO_KEYS,
    MAX_REPORTED_DIFFERENCES,
    REQUIRED_KEYS,
    compare_documents,
    compare_files,
    load_reference,
)
from refgen.compare.results import (
    CaseStats,
    CompareError,
    Comparison,
    Difference,
    FieldStats,
    FirstDifference,
    ProbeComparison,
)
from refgen.compare.verdict import DEFAULT_TOLERANCE, Tolerance, Verdict, tolerance_from_spec
from refgen.errors import ExitCode
from refgen.text import SHOWN_TEXT, shorten

EXIT_ERROR = int(ExitCode.USAGE)

__all__ = [
    "DEFAULT_TOLERANCE",
    "EXIT_ERROR",
    "INFO_KEYS",
    "MAX_REPORTED_DIFFERENCES",
    "REQUIRED_KEYS",
    "SHOWN_TEXT",
    "CaseStats",
    "CompareError",
    "Comparison",
    "Difference",
    "FieldStats",
    "FirstDifference",
    "ProbeComparison",
    "Tolerance",
    "Verdict",
    "compare_documents",
    "compare_files",
    "load_reference",
    "shorten",
    "tolerance_from_spec",
]
