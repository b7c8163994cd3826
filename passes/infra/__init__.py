"""How passes run, and what they run with.

The pass contract and its registry (`base`, `registry`), pipeline text (`pipeline`), the
pass manager and the instruments it calls (`manager`, `instruments`), the facts checked
over a whole pipeline (`contracts`), the declared `meta` keys (`meta`), the pass context
with the compile's configuration it carries (`context`, `target`, `overrides`, and
`executor`, where split work runs), user passes (`plugins`) and progress bars (`progress`).
"""
