"""mirl: lottery tickets in all-in-one image restoration (PromptIR, MIR-L).

The packages are the pipeline's stages, each on a floor (``docs/architecture.md``): ``core``,
``files``, ``net`` and ``data``, ``pruning``, ``training`` and ``evaluation``, ``study``,
``report``, ``viewer``, ``runner``, ``cli``. A module imports only from its own package and from
packages on lower floors (``tests/test_architecture.py`` checks it). Importing ``mirl_lib`` loads
nothing else.
"""
