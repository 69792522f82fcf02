"""``sparsemm fuzz``: differential testing of the model against the running kernel.

``generate`` draws random op scripts from a seeded ``random.Random`` (no hypothesis at
run time), ``difference`` classifies how two record lists differ, ``shrink`` reduces a
script to a minimal one that keeps the same kind of difference, ``engine`` runs the loop
and writes findings, ``cli`` is the subcommand. Nothing here changes model semantics.
"""
