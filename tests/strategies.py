"""Hypothesis strategies for random op scripts, shared by the differential tests.

The scripts come from the fuzzer's generator (``sparsemm.fuzz.generate``, one table of
op generators with a weight per profile); hypothesis only draws the seed, so a failing
example is reproduced by its seed and shrunk by the fuzzer's shrinker, not by
hypothesis. ``op_script()`` is the "mixed" profile (every op kind on a 16- or 48-page
arena, forks with up to six child ops); ``guards=True`` the "guards" profile;
``edges=True`` puts a byte-form edge op (the generator's ``edge`` entry: unaligned,
zero, negative and huge lengths, raw advice) before one op in eight.
"""

from __future__ import annotations

from hypothesis import strategies as st

from sparsemm.fuzz.generate import OP_GENERATORS, PROFILES, ScriptGen, generate_script, script_rng

seeds = st.integers(min_value=0, max_value=(1 << 64) - 1)


def profile_script(profile: str, min_ops: int | None = None, max_ops: int | None = None):
    """Scripts of ``profile`` as ``(seed, doc)`` pairs."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    return seeds.map(lambda seed: (seed, generate_script(profile, script_rng(seed),
                                                         min_ops=min_ops, max_ops=max_ops)))


def op_script(min_ops: int = 1, max_ops: int = 24, guards: bool = False, edges: bool = False):
    """Whole script documents: ``min_ops`` to ``max_ops`` top-level ops (a fork counts
    as one), then a snapshot; ``edges``: an edge op before one op in eight."""
    profile = "guards" if guards else "mixed"
    scripts = profile_script(profile, min_ops, max_ops)
    if not edges:
        return scripts.map(lambda p: p[1])
    return scripts.map(lambda p: _with_edges(p[0], PROFILES[profile], p[1]))


def _with_edges(seed: int, profile, doc: dict) -> dict:
    rng = script_rng(seed, 1)  # script 1 of the seed: independent of the script's own draws
    files = {name: f["pages"] for name, f in doc.get("files", {}).items()}
    g = ScriptGen(rng, profile, doc["arena_pages"], files)
    ops = []
    for op in doc["ops"][:-1]:  # the final snapshot stays last
        if rng.random() < 1 / 8:
            ops.append(OP_GENERATORS["edge"].draw(g))
        ops.append(op)
    return {**doc, "ops": ops + doc["ops"][-1:]}
